"""config.toml: good values apply; each bad one is named in one warning and falls back to its default."""

from __future__ import annotations

import pytest

from chatapp.chat.settings import SamplingSettings
from chatapp.cli.config import Config, config_path, load_config


def write(tmp_path, text: str):
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_missing_file_means_defaults_without_warnings(tmp_path):
    assert load_config(tmp_path / "config.toml") == (Config(), [])


def test_good_values_apply(tmp_path):
    path = write(tmp_path, '''
model = "HuggingFaceTB/SmolLM2-360M-Instruct"
device = "cuda:1"
dtype = "bfloat16"
temperature = 0
top_k = 0
top_p = 0.9
min_p = "off"
repetition_penalty = 1.1
seed = 42
max_new_tokens = 64
theme = "nord"
top = 20
''')
    config, warnings = load_config(path)
    assert warnings == []
    assert config == Config(
        model="HuggingFaceTB/SmolLM2-360M-Instruct", device="cuda:1", dtype="bfloat16",
        sampling=SamplingSettings(temperature=0, top_k=0, top_p=0.9, min_p=None, repetition_penalty=1.1,
                                  seed=42, max_new_tokens=64),
        theme="nord", top=20,
    )


BAD_VALUES = {
    "temperature = 500": "temperature must be between 0 and 100",
    "temperature = \"hot\"": "temperature must be a number",
    "top_k = 2.5": "top_k must be a whole number",
    "top_p = 0": "top_p must be in (0, 1]",
    "min_p = 1.5": "min_p must be in [0, 1]",
    "repetition_penalty = -1": "repetition_penalty must be greater than 0",
    "seed = -3": "seed must be a whole number",
    "max_new_tokens = 0": "max_new_tokens must be a whole number from 1",
    "device = \"gpu\"": "device must be auto, cpu, cuda, cuda:N or mps",
    "dtype = \"int4\"": "dtype must be one of auto, float32, bfloat16, float16",
    "top = 0": "top must be a whole number from 1 to 1000",
    "top = true": "top must be a whole number",
    "theme = \"\"": "theme must be a non-empty string",
    "model = 3": "model must be a non-empty string",
    "temprature = 1": "unknown key 'temprature' ignored; did you mean 'temperature'?",
    "[sampling]\ntemperature = 1": "unknown key 'sampling' ignored; known keys: model,",
}
"""A bad line and what its warning must say."""


@pytest.mark.parametrize("line", sorted(BAD_VALUES))
def test_bad_value_warns_once_and_keeps_the_default(tmp_path, line):
    path = write(tmp_path, f'top = 15\n{line}\n' if not line.startswith("top ") else f"{line}\n")
    before = path.read_bytes()
    config, warnings = load_config(path)
    assert len(warnings) == 1
    warning = warnings[0]
    assert "\n" not in warning and warning.startswith(f"{path}: ")
    assert BAD_VALUES[line] in warning
    key = line.split()[0].strip("[]")
    if key in ("temperature", "top_k", "top_p", "min_p", "repetition_penalty", "seed", "max_new_tokens"):
        assert config.sampling == SamplingSettings()
        assert warning.endswith("using the default")
    elif key in ("device", "dtype", "theme", "model"):
        assert getattr(config, key) == getattr(Config(), key)
    if not line.startswith("top "):
        assert config.top == 15  # good keys beside a bad one still apply
    assert path.read_bytes() == before


def test_several_bad_keys_each_warn_and_good_ones_apply(tmp_path):
    config, warnings = load_config(write(tmp_path, 'temperature = 9000\ntop_k = -1\nseed = 7\n'))
    assert [w.split(": ", 1)[1].split()[0] for w in warnings] == ["temperature", "top_k"]
    assert config.sampling == SamplingSettings(seed=7)


@pytest.mark.parametrize("text", ["temperature = \n", "top = [1,", "\xff\xfe", "= 3"])
def test_malformed_toml_gives_one_warning_and_all_defaults(tmp_path, text):
    path = tmp_path / "config.toml"
    path.write_bytes(text.encode("latin-1"))
    config, warnings = load_config(path)
    assert config == Config()
    assert len(warnings) == 1 and "not valid TOML" in warnings[0] and "\n" not in warnings[0]
    assert warnings[0].endswith("using defaults")


def test_unreadable_config_is_a_warning(tmp_path):
    config, warnings = load_config(tmp_path)  # a folder, not a file
    assert config == Config() and len(warnings) == 1 and "cannot read" in warnings[0]


def test_config_path_is_in_the_user_config_dir():
    path = config_path()
    assert path.name == "config.toml" and "chatapp" in str(path.parent)


def test_auto_device_means_accelerates_choice(tmp_path):
    config, warnings = load_config(write(tmp_path, 'device = "AUTO"\n'))
    assert (config.device, warnings) == (None, [])

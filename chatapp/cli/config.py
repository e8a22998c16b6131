"""Defaults from `config.toml` in the user config folder; command-line flags override them.

A bad file never stops the app: each bad value or unknown key gives one warning naming the key
and the problem, and that key keeps its default; a file that is not valid TOML gives one warning
and all defaults. Example::

    model = "default"
    temperature = 0.8
    top_p = 0.95          # "off" switches an optional setting off
    theme = "nord"
    top = 15              # candidates shown per step
    model_folders = ["~/models", "/data/gguf"]   # where /model looks for models

Pure Python: no torch, no Textual.
"""

from __future__ import annotations

import difflib
import re
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

from platformdirs import user_config_dir

from chatapp.chat.settings import DEFAULT_TOP_N, SETTING_NAMES, SamplingSettings, SettingError
from chatapp.loading.models import DEFAULT_MODEL, DTYPES

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

APP_NAME = "chatapp"
"""Folder name under the platform's user config directory."""
CONFIG_FILE_NAME = "config.toml"
"""The config file's name."""
DEFAULT_THEME = "textual-dark"
"""Textual's default theme; the app checks the name against the themes it has."""
MAX_TOP_N = 1000
"""Most candidates that can be shown per step."""
DEVICE_PATTERN = re.compile(r"(auto|cpu|mps|cuda(:\d+)?)")
"""Accepted `device` values; "auto" leaves the choice to Accelerate."""
OFF_WORDS = ("off", "none")
"""TOML has no null: these strings switch an optional sampling setting off."""


def config_path() -> Path:
    """Where the config file lives (it need not exist)."""
    return Path(user_config_dir(APP_NAME, appauthor=False)) / CONFIG_FILE_NAME


@dataclass(frozen=True)
class Config:
    """Defaults for the app, before command-line flags."""

    model: str = DEFAULT_MODEL
    """'default', a model folder, a .gguf file or ORG/NAME from the Hugging Face cache."""
    device: str | None = None
    """cpu, cuda, cuda:N or mps; None lets Accelerate choose."""
    dtype: str = "auto"
    """Weight dtype, one of `chatapp.loading.models.DTYPES`."""
    sampling: SamplingSettings = SamplingSettings()
    """Temperature, top-k, top-p, min-p, repetition penalty, seed and reply length."""
    theme: str = DEFAULT_THEME
    """Textual theme name."""
    top: int = DEFAULT_TOP_N
    """Candidates shown per step."""
    model_folders: tuple[str, ...] = ("~/models",)
    """Where the model picker (`/model`) looks for `.gguf` files and model folders."""


def _text(key: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise SettingError(f"{key} must be a non-empty string, got {value!r}")
    return value.strip()


def _device(key: str, value: Any) -> str | None:
    device = _text(key, value).lower()
    if not DEVICE_PATTERN.fullmatch(device):
        raise SettingError(f"{key} must be auto, cpu, cuda, cuda:N or mps, got {value!r}")
    return None if device == "auto" else device


def _dtype(key: str, value: Any) -> str:
    if value not in DTYPES:
        raise SettingError(f"{key} must be one of {', '.join(DTYPES)}, got {value!r}")
    return value


def _top(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_TOP_N:
        raise SettingError(f"{key} must be a whole number from 1 to {MAX_TOP_N}, got {value!r}")
    return value


def _folders(key: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise SettingError(f"{key} must be a list of folder names, e.g. [\"~/models\"], got {value!r}")
    return tuple(v.strip() for v in value)


APP_KEYS: dict[str, Callable[[str, Any], Any]] = {
    "model": _text, "device": _device, "dtype": _dtype, "theme": _text, "top": _top, "model_folders": _folders,
}
"""Non-sampling keys and their checks (each returns the value to use or raises SettingError)."""
KNOWN_KEYS = (*APP_KEYS, *SETTING_NAMES)
"""Every key the config file may set."""


def _sampling_value(sampling: SamplingSettings, key: str, value: Any) -> SamplingSettings:
    """`sampling` with `key` set from a TOML value, validated."""
    if isinstance(value, str):
        if value.strip().lower() in OFF_WORDS and getattr(SamplingSettings(), key) is None:
            value = None
        else:
            raise SettingError(f"{key} must be a number, got {value!r}")
    return replace(sampling, **{key: value}).validated()


def _unknown_key_warning(key: str) -> str:
    close = difflib.get_close_matches(key, KNOWN_KEYS, n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"known keys: {', '.join(KNOWN_KEYS)}"
    return f"unknown key {key!r} ignored; {hint}"


def config_from_dict(data: dict[str, Any]) -> tuple[Config, list[str]]:
    """Defaults overridden by the good values of `data`, and one warning per bad key."""
    values: dict[str, Any] = {}
    sampling = SamplingSettings()
    warnings: list[str] = []
    for key, value in data.items():
        try:
            if key in APP_KEYS:
                values[key] = APP_KEYS[key](key, value)
            elif key in SETTING_NAMES:
                sampling = _sampling_value(sampling, key, value)
            else:
                warnings.append(_unknown_key_warning(key))
        except SettingError as error:
            message = " ".join(str(error).split())
            named = message if message.startswith(key) else f"{key}: {message}"
            warnings.append(f"{named}; using the default")
    return Config(sampling=sampling, **values), warnings


def load_config(path: str | Path | None = None) -> tuple[Config, list[str]]:
    """Read the config file; never raises for a bad file.

    Args:
        path: the file to read; `config_path()` when None. A missing file means all defaults.

    Returns:
        The config and one-line warnings (each prefixed with the file name), to show at start.
    """
    path = Path(path) if path is not None else config_path()
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        return Config(), []
    except OSError as error:
        return Config(), [f"{path}: cannot read ({error.strerror or error}); using defaults"]
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        return Config(), [f"{path}: not valid TOML ({' '.join(str(error).split())}); using defaults"]
    config, warnings = config_from_dict(data)
    return config, [f"{path}: {warning}" for warning in warnings]


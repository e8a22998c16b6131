"""`fast_metadata`: transformers' conversion of a GGUF file's config and tokenizer, fed from
chatapp's index, writes the same files as transformers' own reading of the file."""

from __future__ import annotations

import contextlib

import pytest

from chatapp.loading import gguf_files
from chatapp.loading.gguf_files import convert_gguf, default_gguf_path
from tests.tiny_gguf import write_tiny_gguf

WRITTEN = ("config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


def _converted(gguf, folder, monkeypatch, fast: bool) -> dict[str, bytes]:
    if not fast:
        monkeypatch.setattr(gguf_files, "fast_metadata", lambda path: contextlib.nullcontext())
    target = folder / ("fast" if fast else "slow")
    convert_gguf(gguf, target, lambda line: None, weights=False)
    monkeypatch.undo()
    return {name: (target / name).read_bytes() for name in WRITTEN if (target / name).exists()}


@pytest.mark.parametrize("arch", ["llama", "gemma3", "qwen2"])
def test_tiny_files_convert_to_the_same_files(arch, tmp_path, monkeypatch):
    gguf, _ = write_tiny_gguf(arch, tmp_path, sentencepiece=True)
    fast, slow = _converted(gguf, tmp_path, monkeypatch, True), _converted(gguf, tmp_path, monkeypatch, False)
    assert set(fast) == set(slow) and {"config.json", "tokenizer.json"} <= set(fast)
    assert fast == slow


def test_the_default_file_converts_to_the_same_files(tmp_path, monkeypatch):
    gguf = default_gguf_path()
    assert _converted(gguf, tmp_path, monkeypatch, True) == _converted(gguf, tmp_path, monkeypatch, False)


def test_the_reader_is_switched_back_and_other_files_read_as_before(tmp_path):
    import gguf as gguf_package
    from transformers import modeling_gguf_pytorch_utils as loader

    from chatapp.loading.gguf_metadata import fast_metadata

    original = gguf_package.GGUFReader, loader._gguf_parse_value
    one, _ = write_tiny_gguf("llama", tmp_path)
    with fast_metadata(one):
        other = gguf_package.GGUFReader(default_gguf_path())  # not the file named: the package's own reader
        assert type(other) is original[0]
        assert loader.read_field(other, "general.architecture") == ["llama"]
    assert (gguf_package.GGUFReader, loader._gguf_parse_value) == original


def test_a_failing_fast_read_falls_back_to_transformers_own(tmp_path, monkeypatch):
    from chatapp.loading import gguf_metadata

    gguf, _ = write_tiny_gguf("llama", tmp_path, sentencepiece=True)
    expected = _converted(gguf, tmp_path, monkeypatch, False)

    def broken(path):
        raise KeyError("a field transformers now reads differently")

    monkeypatch.setattr(gguf_metadata, "_IndexReader", broken)
    target = tmp_path / "fallback"
    convert_gguf(gguf, target, lambda line: None, weights=False)
    assert {name: (target / name).read_bytes() for name in expected} == expected

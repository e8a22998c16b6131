"""Converted copies of a GGUF file are keyed by its contents, so a copy elsewhere reuses them."""

from __future__ import annotations

import os
import shutil

from chatapp.loading.gguf_files import CONTENT_SAMPLE_BYTES, converted_dir


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


def test_the_same_file_in_another_place_maps_to_the_same_copy(tmp_path):
    data = os.urandom(3 * CONTENT_SAMPLE_BYTES)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = _write(tmp_path / "a" / "model.gguf", data)
    second = tmp_path / "b" / "model.gguf"
    shutil.copyfile(first, second)
    assert converted_dir(first) == converted_dir(second)


def test_other_contents_map_to_another_copy(tmp_path):
    data = bytearray(os.urandom(3 * CONTENT_SAMPLE_BYTES))
    first = _write(tmp_path / "one.gguf", bytes(data))
    data[-1] ^= 0xFF  # the last weights differ
    second = _write(tmp_path / "two.gguf", bytes(data))
    third = _write(tmp_path / "three.gguf", bytes(data[:-1]))  # one byte shorter
    keys = {converted_dir(p).name.split("-")[-1] for p in (first, second, third)}
    assert len(keys) == 3

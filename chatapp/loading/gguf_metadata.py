"""transformers' reading of a GGUF file's config and tokenizer, fed from chatapp's own index.

transformers reads a GGUF file's metadata with the `gguf` package's `GGUFReader`, which makes
numpy views of every element of every array: for Gemma 3's 262,144-token vocabulary and 514,906
merges, 17 s and 700 MB, twice (once for the config, once for the tokenizer), and then parses
each element again. `fast_metadata` hands transformers a reader of the same shape built from
`chatapp.loading.gguf_index` (every value already a Python value) for the duration of a
conversion, so the same code turns the same values into the same config and tokenizer in a few
seconds. Should transformers' reading change shape (a missing attribute), the original reader
is used, and `chatapp.loading.gguf_files.convert_gguf` converts again without it if a conversion
through it fails: `fast_metadata` is a speed-up only, never a second implementation.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from pathlib import Path

from chatapp.loading.gguf_index import read_index


@dataclass(frozen=True)
class _Field:
    """A metadata field as transformers reads `GGUFReader.fields` values: `parts[i]` for `i` in
    `data`, each an already parsed value (`fast_metadata`'s parse returns it as it is)."""

    parts: list
    data: range
    types: list


class _IndexReader:
    """What transformers uses of a `GGUFReader`: `fields` and the tensors' names."""

    def __init__(self, path) -> None:
        index = read_index(Path(path), every_array=True)
        self.tensors = index.tensors
        self.fields = {key: _Field(value if isinstance(value, list) else [value],
                                   range(len(value)) if isinstance(value, list) else range(1), [])
                       for key, value in index.fields.items()}


_PARSED = (str, int, float, bool)
"""What `_IndexReader`'s parts hold (a `GGUFReader`'s are numpy arrays)."""


@contextlib.contextmanager
def fast_metadata(gguf: Path):
    """Within it, transformers reads `gguf`'s metadata from chatapp's index (once, however many
    times it asks)."""
    try:
        import gguf as gguf_package
        from transformers import modeling_gguf_pytorch_utils as loader
    except ImportError:
        yield
        return
    if not (hasattr(gguf_package, "GGUFReader") and hasattr(loader, "_gguf_parse_value")):
        yield
        return
    original_reader, original_parse = gguf_package.GGUFReader, loader._gguf_parse_value
    ours = functools.cache(_IndexReader)
    target = str(Path(gguf).resolve())

    def reader(path, *args, **kwargs):
        if str(Path(path).resolve()) == target and not args and not kwargs:
            return ours(target)
        return original_reader(path, *args, **kwargs)

    def parse(value, data_type):
        return value if type(value) in _PARSED else original_parse(value, data_type)

    gguf_package.GGUFReader, loader._gguf_parse_value = reader, parse
    try:
        yield
    finally:
        gguf_package.GGUFReader, loader._gguf_parse_value = original_reader, original_parse

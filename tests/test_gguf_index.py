"""`chatapp.loading.gguf_index`: a GGUF file's index, read fast, equals the `gguf` package's own
reading (metadata, tensor names, types, shapes and bytes); damaged files are refused in one line."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGUFReader

from chatapp.loading.gguf_files import default_gguf_path, gguf_facts
from chatapp.loading.gguf_index import GGUFFormatError, read_index
from chatapp.support.errors import ModelLoadError


def test_the_default_file_reads_as_the_gguf_package_reads_it():
    path = default_gguf_path()
    ours, theirs = read_index(path, arrays=("tokenizer.ggml.merges",)), GGUFReader(str(path))
    assert [t.name for t in ours.tensors] == [t.name for t in theirs.tensors]
    for mine, reference in zip(ours.tensors, theirs.tensors):
        assert mine.type == reference.tensor_type
        assert mine.shape == tuple(int(n) for n in reversed(reference.shape))
        assert np.array_equal(mine.data.reshape(-1), np.asarray(reference.data).view(np.uint8).reshape(-1))
    assert ours.architecture == "llama"
    assert ours.fields["llama.block_count"] == 30
    assert ours.fields["tokenizer.chat_template"] == bytes(theirs.get_field("tokenizer.chat_template").parts[-1]).decode()
    assert ours.fields["tokenizer.ggml.tokens.length"] == 49152  # skipped, but counted
    merges = theirs.get_field("tokenizer.ggml.merges")
    assert ours.fields["tokenizer.ggml.merges"] == [bytes(merges.parts[i]).decode() for i in merges.data]


def test_a_released_tensor_reads_the_same_again():
    index = read_index(default_gguf_path())
    tensor = index.tensors[1]
    before = tensor.data.copy()
    index.release(tensor)
    assert np.array_equal(tensor.data, before)


def test_damaged_files_are_refused_in_one_line(tmp_path):
    text = tmp_path / "notes.gguf"
    text.write_text("not a model")
    with pytest.raises(GGUFFormatError, match="not a GGUF file"):
        read_index(text)
    truncated = tmp_path / "cut.gguf"
    truncated.write_bytes(default_gguf_path().read_bytes()[: 3 << 20])
    with pytest.raises(GGUFFormatError, match="truncated"):
        read_index(truncated)
    empty = tmp_path / "empty.gguf"
    empty.write_bytes(b"")
    with pytest.raises(GGUFFormatError, match="empty"):
        read_index(empty)
    with pytest.raises(ModelLoadError, match="cannot read notes.gguf as a GGUF file") as caught:
        gguf_facts(text)
    assert "\n" not in str(caught.value)

"""GGUF's common block types in chatapp's two exact layouts (`chatapp.loading.gguf_blocks`):
every weight equals the `gguf` package's own dequantization, on random blocks of every type and
on the default model's file."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, GGUFReader
from gguf.constants import GGML_QUANT_SIZES
from gguf.quants import dequantize, quantize

from chatapp.loading.gguf_blocks import EXACT_TYPES, block_weights
from chatapp.loading.gguf_files import default_gguf_path
from chatapp.runtime.block_weights import BlockWeights

FLOAT16_FIELDS = {
    "Q4_0": (0,), "Q4_1": (0, 2), "Q5_0": (0,), "Q5_1": (0, 2), "Q8_0": (0,),
    "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,),
}
"""Byte offsets of each block's float16 numbers (scales, minimums): random bytes there could be
infinities or NaNs, so the tests write finite numbers there, small and subnormal ones included."""
ROWS, COLUMNS = 6, 512


def random_blocks(name: str, seed: int) -> np.ndarray:
    """`(ROWS, bytes a row)` random raw blocks of type `name`, every float16 field finite."""
    rng = np.random.default_rng(seed)
    block, size = GGML_QUANT_SIZES[GGMLQuantizationType[name]]
    raw = rng.integers(0, 256, (ROWS, COLUMNS // block, size), dtype=np.uint8)
    for at in FLOAT16_FIELDS[name]:
        numbers = rng.standard_normal((ROWS, COLUMNS // block)) * 2.0 ** rng.integers(-26, 2, (ROWS, COLUMNS // block))
        raw[..., at:at + 2] = numbers.astype(np.float16)[..., None].view(np.uint8)
    return raw.reshape(ROWS, -1)


def test_every_exact_type_is_covered():
    assert set(EXACT_TYPES) == set(FLOAT16_FIELDS) == {"Q4_0", "Q4_1", "Q4_K", "Q5_0", "Q5_1", "Q5_K", "Q6_K", "Q8_0"}


@pytest.mark.parametrize("name", sorted(FLOAT16_FIELDS))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_blocks_equal_gguf_s_dequantization(name, seed):
    raw = random_blocks(name, seed)
    weights = block_weights(raw, name, (ROWS, COLUMNS))
    expected = dequantize(raw, GGMLQuantizationType[name])
    assert expected.shape == (ROWS, COLUMNS)
    assert np.array_equal(weights.dequantize().numpy(), expected)  # every weight, exactly
    assert weights.bits == (4 if name in ("Q4_0", "Q4_1", "Q4_K") else 5 if name == "Q5_0" else 8)
    assert weights.d.dtype == torch.float16  # the file's own scales, not rounded to bfloat16


@pytest.mark.parametrize("name", ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"])
def test_quantized_real_numbers_round_trip_exactly(name):
    """Blocks quantized by the `gguf` package from normal weights (not random bytes)."""
    weights = np.random.default_rng(3).standard_normal((ROWS, COLUMNS)).astype(np.float32) * 0.02
    raw = quantize(weights, GGMLQuantizationType[name])
    assert np.array_equal(block_weights(raw, name, (ROWS, COLUMNS)).dequantize().numpy(),
                          dequantize(raw, GGMLQuantizationType[name]))


def test_a_layout_breaks_when_a_code_is_off():
    """The comparison can fail: one flipped code bit changes exactly the weights it should."""
    raw = random_blocks("Q4_K", 7)
    good = block_weights(raw, "Q4_K", (ROWS, COLUMNS))
    codes = good.codes.clone()
    codes[0, 0] ^= 1  # weight 0's code, block 0 of row 0
    bad = BlockWeights(good.shape, good.bits, good.block, good.blocks_per_super, codes, good.d, good.dmin,
                       good.sc, good.m)
    changed = np.argwhere(bad.dequantize().numpy() != dequantize(raw, GGMLQuantizationType.Q4_K))
    scale = good.block_scales()[0][0, 0].item()
    assert changed.tolist() == ([[0, 0]] if scale != 0 else [])


def test_a_type_without_an_exact_layout_is_refused():
    with pytest.raises(ValueError, match="Q2_K has no exact layout"):
        block_weights(np.zeros((1, 84), dtype=np.uint8), "Q2_K", (1, 256))


def test_the_default_file_s_tensors_read_exactly():
    reader = GGUFReader(str(default_gguf_path()))
    checked = set()
    for tensor in reader.tensors:
        name = tensor.tensor_type.name
        if name not in EXACT_TYPES or len(tensor.shape) != 2:
            continue
        columns = int(tensor.shape[0])  # GGUF lists the fastest-varying dimension first
        raw = np.asarray(tensor.data)[:16]
        weights = block_weights(raw, name, (raw.shape[0], columns))
        assert np.array_equal(weights.dequantize().numpy(), dequantize(raw, tensor.tensor_type)), tensor.name
        assert weights.nbytes <= 1.4 * raw.nbytes  # near the file's own size in memory (Q6_K: 1.39×)
        checked.add(name)
    assert "Q4_1" in checked

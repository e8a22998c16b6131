"""GGUF's common block types, read into `chatapp.runtime.block_weights.BlockWeights` exactly.

`block_weights(raw, type_name, shape)` takes a tensor's raw blocks as the `gguf` package's reader
gives them (`(N, bytes a row)` uint8) and returns them in one of the three layouts without changing
a single weight: Q4_0, Q4_1 and Q4_K in the 4-bit layout; Q5_0 in the 5-bit one; Q5_1, Q5_K,
Q6_K and Q8_0 in the 8-bit one (`EXACT_TYPES`). Each reader follows the block's definition in
ggml (and in the `gguf` package's `quants` module, which the tests hold every one of them to).
"""

from __future__ import annotations

import numpy as np
import torch

from chatapp.runtime.block_weights import SUPER_BLOCK, BlockWeights, pack_nibbles

K_SCALE_BYTES = 12
"""Bytes of a Q4_K/Q5_K super-block's packed 6-bit scales and minimums."""


def _f16(raw: np.ndarray) -> torch.Tensor:
    """`(..., 2 * n)` bytes as `(..., n)` float16."""
    return torch.from_numpy(np.ascontiguousarray(raw).view(np.float16).copy())


def _nibbles(raw: np.ndarray) -> np.ndarray:
    """Bytes holding codes j (low nibble) and j + half (high nibble) of each row of `raw`
    `(..., half)`: `(..., 2 * half)` codes."""
    return np.concatenate([raw & 0x0F, raw >> 4], axis=-1)


def _i8(values: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(values).astype(np.int8))


def _layout(shape, bits, block, per_super, codes, d, dmin, sc, m) -> BlockWeights:
    """A `BlockWeights` from per-row numpy pieces: codes `(N, K)` (0..15 for 4 bits), d and dmin
    `(N, supers, 2)` bytes or float16 tensors, sc and m `(N, blocks)`."""
    n, k = shape
    codes = torch.from_numpy(np.ascontiguousarray(codes).reshape(n, k))
    packed = pack_nibbles(codes) if bits == 4 else codes.to(torch.int8)
    as_f16 = lambda x: x if isinstance(x, torch.Tensor) else _f16(x).reshape(n, -1)  # noqa: E731
    return BlockWeights((n, k), bits, block, per_super, packed, as_f16(d), as_f16(dmin),
                        _i8(sc).reshape(n, -1), _i8(m).reshape(n, -1))


def _plain(raw: np.ndarray, shape, with_min: bool, high_bits: bool) -> BlockWeights:
    """Q4_0, Q4_1, Q5_1: blocks of 32, a float16 scale (and minimum), 4 low bits of each code two
    a byte (and a 32-bit word of fifth bits)."""
    n, k = shape
    blocks = raw.reshape(n, k // 32, -1)
    d = blocks[..., 0:2]
    at = 4 if with_min else 2
    qh = blocks[..., at:at + 4].copy().view(np.uint32) if high_bits else None
    qs = blocks[..., at + (4 if high_bits else 0):]
    codes = _nibbles(qs).astype(np.uint8)
    if high_bits:
        bits = (qh >> np.arange(32, dtype=np.uint32)) & 1  # (N, blocks, 32): code j's fifth bit
        codes = codes | (bits.astype(np.uint8) << 4)
    ones = np.ones((n, k // 32), dtype=np.int8)
    if with_min:  # w = d * q + m
        return _layout(shape, 8 if high_bits else 4, 32, 1, codes, d, blocks[..., 2:4], ones, ones)
    # Q4_0: w = d * (q - 8) as d * q exact plus d * -8 exact (4-bit codes are unsigned)
    return _layout(shape, 4, 32, 1, codes, d, d, ones, np.full((n, k // 32), -8))


def _q5_0(raw: np.ndarray, shape) -> BlockWeights:
    """Q5_0: blocks of 32: a float16 scale, a 32-bit word of fifth bits, 16 bytes of low nibbles;
    w = d * (q - 16), the signed code times d, as gguf computes it. The 5-bit layout holds the
    block's own bytes, nibbles first, copied without decoding a code."""
    n, k = shape
    blocks = raw.reshape(n, k // 32, 22)
    codes = torch.from_numpy(np.concatenate([blocks[..., 6:], blocks[..., 2:6]], axis=-1).reshape(n, -1))
    return BlockWeights((n, k), 5, 32, 1, codes, _f16(blocks[..., 0:2]).reshape(n, -1),
                        torch.zeros(n, k // 32, dtype=torch.float16), torch.ones(n, k // 32, dtype=torch.int8),
                        torch.zeros(n, k // 32, dtype=torch.int8))


def _q8_0(raw: np.ndarray, shape) -> BlockWeights:
    """Q8_0: blocks of 32 signed bytes and a float16 scale."""
    n, k = shape
    blocks = raw.reshape(n, k // 32, 34)
    codes = blocks[..., 2:].copy().view(np.int8)
    zeros = np.zeros((n, k // 32), dtype=np.int8)
    return _layout(shape, 8, 32, 1, codes, blocks[..., 0:2], torch.zeros(n, k // 32, dtype=torch.float16),
                   np.ones((n, k // 32), dtype=np.int8), zeros)


def _k_scales(packed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q4_K/Q5_K's 12 bytes of eight 6-bit scales and eight 6-bit minimums, unpacked."""
    d, m, m_d = packed[..., 0:4], packed[..., 4:8], packed[..., 8:12]
    sc = np.concatenate([d & 0x3F, (m_d & 0x0F) | ((d >> 2) & 0x30)], axis=-1)
    mins = np.concatenate([m & 0x3F, (m_d >> 4) | ((m >> 2) & 0x30)], axis=-1)
    return sc, mins


def _q45_k(raw: np.ndarray, shape, high_bits: bool) -> BlockWeights:
    """Q4_K, Q5_K: super-blocks of 256 with float16 d and dmin, eight blocks of 32 with 6-bit
    scales and minimums; w = d * sc * q - dmin * m."""
    n, k = shape
    supers = raw.reshape(n, k // SUPER_BLOCK, -1)
    sc, mins = _k_scales(supers[..., 4:4 + K_SCALE_BYTES])
    at = 4 + K_SCALE_BYTES
    qh = supers[..., at:at + 32] if high_bits else None
    qs = supers[..., at + (32 if high_bits else 0):].reshape(n, k // SUPER_BLOCK, 4, 32)
    codes = _nibbles(qs)  # (N, supers, 4, 64): each 32 bytes hold two blocks of 32
    if high_bits:
        fifth = (qh[..., None, :] >> np.arange(8, dtype=np.uint8)[:, None]) & 1  # (N, supers, 8, 32)
        codes = codes | (fifth.reshape(n, k // SUPER_BLOCK, 4, 64) << 4)
    return _layout(shape, 8 if high_bits else 4, 32, 8, codes, supers[..., 0:2], supers[..., 2:4], sc,
                   -mins.astype(np.int16))


def _q6_k(raw: np.ndarray, shape) -> BlockWeights:
    """Q6_K: super-blocks of 256 with a float16 d, sixteen blocks of 16 with signed 8-bit scales,
    6-bit codes minus 32; w = d * sc * (q - 32), one rounding (the code is kept signed)."""
    n, k = shape
    supers = raw.reshape(n, k // SUPER_BLOCK, -1)
    ql = supers[..., 0:128].reshape(n, -1, 2, 64)
    qh = supers[..., 128:192].reshape(n, -1, 2, 32)
    scales = supers[..., 192:208].copy().view(np.int8)
    low = _nibbles(ql)  # (N, supers, 2, 128)
    high = ((qh[..., None, :] >> np.array([0, 2, 4, 6], dtype=np.uint8)[:, None]) & 3).reshape(n, -1, 2, 128)
    codes = (low | (high << 4)).astype(np.int16) - 32
    zeros = np.zeros((n, k // 16), dtype=np.int8)
    return _layout(shape, 8, 16, 16, codes.astype(np.int8), supers[..., 208:210],
                   torch.zeros(n, k // SUPER_BLOCK, dtype=torch.float16), scales, zeros)


EXACT_TYPES = {
    "Q4_0": lambda raw, shape: _plain(raw, shape, with_min=False, high_bits=False),
    "Q4_1": lambda raw, shape: _plain(raw, shape, with_min=True, high_bits=False),
    "Q5_0": _q5_0,
    "Q5_1": lambda raw, shape: _plain(raw, shape, with_min=True, high_bits=True),
    "Q8_0": _q8_0,
    "Q4_K": lambda raw, shape: _q45_k(raw, shape, high_bits=False),
    "Q5_K": lambda raw, shape: _q45_k(raw, shape, high_bits=True),
    "Q6_K": _q6_k,
}
"""The block types that map exactly onto a `BlockWeights` layout, and their readers."""


def block_weights(raw: np.ndarray, type_name: str, shape: tuple[int, int]) -> BlockWeights:
    """A tensor's raw blocks `(N, bytes a row)` of GGUF type `type_name` as `BlockWeights` of
    `shape` `(N, K)`; ValueError for a type without an exact layout."""
    reader = EXACT_TYPES.get(type_name)
    if reader is None:
        raise ValueError(f"GGUF block type {type_name} has no exact layout here (known: {', '.join(EXACT_TYPES)})")
    return reader(np.asarray(raw, dtype=np.uint8).reshape(shape[0], -1), tuple(shape))

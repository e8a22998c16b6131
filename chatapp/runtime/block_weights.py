"""Weights kept in GGUF's own block quantization: three layouts that every common block type maps
onto exactly.

A weight matrix `(N, K)` is cut along K into blocks of `block` weights (32, or 16 for Q6_K), and
the blocks into super-blocks of `blocks_per_super` (one for the plain types, 8 or 16 for the
K-quants). Weight `k` of a block is

    w = code[k] * (d * sc) + dmin * m

with `d` and `dmin` the super-block's float16 numbers (the file's own, never rounded to
bfloat16) and `sc`, `m` the block's small integers. `d * sc` and `dmin * m` are exact in float32
(11 significant bits times at most 8), and so is `code * (d * sc)` wherever GGUF's own
arithmetic (the `gguf` package's `dequantize`, which follows ggml) computes it exactly; where
GGUF rounds a product (Q6_K's 6-bit signed codes), the code is stored signed so that the one
rounding is the same. `dequantize` therefore reproduces `gguf.quants.dequantize` bit for bit.

The three layouts (`bits`):
- 4: codes 0..15, two a byte (Q4_0, Q4_1, Q4_K): in each block of 32, byte j holds code j in its
  low nibble and code j + 16 in its high one (Q4_0's own order);
- 5: signed codes -16..15 in 20 bytes a block of 32 (Q5_0, its minimum folded in: the file's own
  bits without its scale): the low four bits of q = code + 16 as the 4-bit layout holds them,
  then a 32-bit little-endian word whose bit j is code j's fifth bit;
- 8: one signed byte a code (Q5_1, Q5_K: 0..31; Q6_K: -32..31; Q8_0: -128..127).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

NIBBLE_BLOCK = 32
"""Weights per block in the 4-bit and 5-bit layouts."""
FIVE_BIT_BYTES = 20
"""Bytes of a block in the 5-bit layout: 16 of low nibbles, a 32-bit word of fifth bits."""
SUPER_BLOCK = 256
"""Weights per K-quant super-block (ggml's QK_K)."""


@dataclass(frozen=True)
class BlockWeights:
    """A weight matrix `(N, K)` in GGUF block quantization (see the module's formula)."""

    shape: tuple[int, int]
    """`(N, K)`: output rows, input columns."""
    bits: int
    """4 (two codes a byte), 5 (32 signed codes in 20 bytes) or 8 (one signed code a byte)."""
    block: int
    """Weights per block: one `sc` and one `m` each."""
    blocks_per_super: int
    """Blocks per super-block: one `d` and one `dmin` each."""
    codes: torch.Tensor
    """`(N, K / 2)` uint8 for 4 bits, `(N, K * 5 / 8)` uint8 for 5, `(N, K)` int8 for 8."""
    d: torch.Tensor
    """`(N, K / super-block)` float16: the super-block's scale, as the file has it."""
    dmin: torch.Tensor
    """`(N, K / super-block)` float16: the super-block's scale of minimums (a plain type's own
    minimum or scale; 0 where there is none)."""
    sc: torch.Tensor
    """`(N, K / block)` int8: the block's scale, in units of `d`."""
    m: torch.Tensor
    """`(N, K / block)` int8: the block's minimum, in units of `dmin` (negative: subtracted)."""

    @property
    def nbytes(self) -> int:
        """Bytes held in memory."""
        return sum(t.numel() * t.element_size() for t in (self.codes, self.d, self.dmin, self.sc, self.m))

    def map(self, fn) -> "BlockWeights":
        """The same weight with `fn` applied to each of its tensors (codes, d, dmin, sc, m)."""
        return BlockWeights(self.shape, self.bits, self.block, self.blocks_per_super,
                            *(fn(t) for t in (self.codes, self.d, self.dmin, self.sc, self.m)))

    def select_rows(self, index: torch.Tensor) -> "BlockWeights":
        """Output rows `index` (a 1-D tensor of row numbers), in that order: a row permutation
        (as GGUF's q/k layouts need undoing) or an embedding lookup."""
        part = self.map(lambda t: t.index_select(0, index))
        return BlockWeights((index.numel(), self.shape[1]), self.bits, self.block, self.blocks_per_super,
                            part.codes, part.d, part.dmin, part.sc, part.m)

    def code_values(self) -> torch.Tensor:
        """`(N, K / block, block)` the codes as integers (int16)."""
        return code_values(self.codes, self.bits, self.block, self.shape)

    def block_scales(self) -> tuple[torch.Tensor, torch.Tensor]:
        """`(N, K / block)` float32 each: every block's scale `d * sc` and minimum `dmin * m`
        (both exact)."""
        per = self.blocks_per_super
        return super_block_products(self.d, self.sc, per), super_block_products(self.dmin, self.m, per)

    def dequantize(self) -> torch.Tensor:
        """`(N, K)` float32: the weights, as `gguf.quants.dequantize` gives them."""
        scale, low = self.block_scales()
        products = self.code_values().float() * scale.unsqueeze(-1)  # exact where GGUF's are
        return (products + low.unsqueeze(-1)).view(self.shape)


def super_block_products(d: torch.Tensor, sc: torch.Tensor, per: int) -> torch.Tensor:
    """`(N, blocks)` float32: each block's small integer `sc` times its super-block's float16 `d`
    `(N, blocks / per)`, `per` blocks a super-block (exact in float32)."""
    return d.float().repeat_interleave(per, dim=-1) * sc.float()


def code_values(codes: torch.Tensor, bits: int, block: int, shape: tuple[int, int]) -> torch.Tensor:
    """`(N, K / block, block)` int16: the codes of a weight of `shape` in the `bits` layout."""
    n, k = shape
    if bits == 8:
        return codes.to(torch.int16).view(n, k // block, block)
    if bits == 5:
        blocks = codes.view(n, k // NIBBLE_BLOCK, FIVE_BIT_BYTES)
        nibbles = code_values(blocks[..., : NIBBLE_BLOCK // 2].reshape(n, -1), 4, block, shape)
        words = blocks[..., NIBBLE_BLOCK // 2 :].unsqueeze(-1)  # (N, blocks, 4, 1): the fifth bits, 8 a byte
        fifth = (words >> torch.arange(8, dtype=torch.uint8)) & 1  # (N, blocks, 4, 8)
        return nibbles + fifth.reshape(nibbles.shape).to(torch.int16) * 16 - 16
    packed = codes.view(n, k // NIBBLE_BLOCK, NIBBLE_BLOCK // 2)
    low, high = (packed & 0x0F).to(torch.int16), (packed >> 4).to(torch.int16)
    return torch.cat([low, high], dim=-1).view(n, k // block, block)


def row_weights(codes: torch.Tensor, bits: int) -> int:
    """K: the weights a row of `codes` in the `bits` layout holds."""
    row_bytes = codes.shape[1] * codes.element_size()
    return row_bytes * 2 if bits == 4 else row_bytes // FIVE_BIT_BYTES * NIBBLE_BLOCK if bits == 5 else row_bytes


def pack_nibbles(codes: torch.Tensor) -> torch.Tensor:
    """`(..., K)` codes 0..15 to the 4-bit layout `(..., K / 2)` uint8."""
    blocks = codes.to(torch.uint8).view(*codes.shape[:-1], -1, 2, NIBBLE_BLOCK // 2)
    return (blocks[..., 0, :] | (blocks[..., 1, :] << 4)).reshape(*codes.shape[:-1], -1)

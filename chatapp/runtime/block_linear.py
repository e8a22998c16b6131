"""Linear layers and embeddings whose weights stay in GGUF's block quantization.

`BlockLinear` and `BlockEmbedding` hold `ScaledBlocks`: a `chatapp.runtime.block_weights.BlockWeights`'s
codes with each block's scale and minimum as the file has them (the file's size in memory): the
plain types' (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0) float16 numbers; the K-quants' float16 numbers a
super-block and small integers a block, packed, whose products are exact in float32. They compute
in float32: on chatapp's block kernel (`chatapp.runtime.block_kernel`) where it is built, else in
plain torch, dequantizing a slice of rows at a time so that memory never holds the float32
matrix. Either way the numbers are those of a float32 product with the exactly dequantized
weights, up to the order of the sums. A tied LM head and embedding share one `ScaledBlocks`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from chatapp.runtime import block_kernel
from chatapp.runtime.block_weights import SUPER_BLOCK, BlockWeights, code_values, super_block_products

DEQUANTIZED_ROWS = 1 << 14
"""Rows the plain-torch path dequantizes at a time (64 MB of float32 at K = 1024)."""
MATMUL_FROM = 64
"""Inputs of at least this many rows (a long prefill) are multiplied by the dequantized weight
through torch's matrix product, one slice of rows at a time; fewer go to the kernel, which
decodes each weight row once for all of them (Gemma 3 270M, 23 prompt tokens: about 60 against
80-100 ms; the two tie near 48 tokens)."""


@dataclass(frozen=True)
class ScaledBlocks:
    """A weight `(N, K)` as the block kernel reads it: weight k of block b of a row is
    `code[k] * scale[b] + low[b]`."""

    shape: tuple[int, int]
    bits: int
    """4, 5 or 8, as in `BlockWeights`."""
    block: int
    """Weights per block."""
    codes: torch.Tensor
    """`BlockWeights.codes`."""
    scale: torch.Tensor
    """Each block's scale `d * sc`, exact: `(N, K / block)` float16 where every one is a float16
    number (the plain types, whose scale is the file's own) or float32; or a K-quant's, packed
    (`packed_scales`): `(N, bytes)` uint8."""
    low: torch.Tensor
    """`(N, K / block)` of `scale`'s dtype: `dmin * m`, exact; empty where every minimum is zero
    (Q8_0, Q6_K, Q5_0) or `scale` is packed (which holds them)."""

    @classmethod
    def of(cls, weights: BlockWeights) -> "ScaledBlocks":
        if weights.blocks_per_super * weights.block == SUPER_BLOCK and weights.blocks_per_super > 1:
            return cls(weights.shape, weights.bits, weights.block, weights.codes, packed_scales(weights),
                       torch.empty(0, dtype=torch.uint8))
        scale, low = weights.block_scales()
        low = low if bool(low.any()) else torch.empty(0)
        if all(torch.equal(t.half().float(), t) for t in (scale, low)):
            scale, low = scale.half(), low.half()  # the plain types: the file's own float16 numbers
        return cls(weights.shape, weights.bits, weights.block, weights.codes, scale.contiguous(), low.contiguous())

    def block_scales(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`(N, K / block)` float32: each block's scale, and its minimum (None where all are zero)."""
        if self.scale.dtype == torch.uint8:
            return unpacked_scales(self.scale, self.shape[1], self.block)
        return self.scale.float(), self.low.float() if self.low.numel() else None

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.codes, self.scale, self.low))

    def kernel_args(self) -> tuple:
        return self.codes, self.scale, self.low, self.bits, self.block

    def rows(self, start: int, stop: int) -> "ScaledBlocks":
        """Output rows `start:stop` (views)."""
        low = self.low[start:stop] if self.low.numel() else self.low
        return ScaledBlocks((stop - start, self.shape[1]), self.bits, self.block, self.codes[start:stop],
                            self.scale[start:stop], low)

    def dequantize(self, ids: torch.Tensor | None = None) -> torch.Tensor:
        """`(N, K)` float32 (the rows `ids` only, when given): exactly `BlockWeights.dequantize`'s
        numbers, the same products and sums."""
        if ids is not None:  # those rows' scales only are converted (an embedding lookup a step)
            low = self.low.index_select(0, ids) if self.low.numel() else self.low
            picked = ScaledBlocks((ids.numel(), self.shape[1]), self.bits, self.block, self.codes.index_select(0, ids),
                                  self.scale.index_select(0, ids), low)
            return picked.dequantize()
        codes, (scale, low) = self.codes, self.block_scales()
        rows = codes.shape[0]
        if self.bits == 8:  # signed bytes straight to float32 (exact), without code_values' int16 step
            values = codes.float().view(rows, self.shape[1] // self.block, self.block)
        else:
            values = code_values(codes, self.bits, self.block, (rows, self.shape[1])).float()
        products = values * scale.unsqueeze(-1)
        if low is not None:
            products = products + low.unsqueeze(-1)
        return products.view(rows, self.shape[1])


def packed_scales(weights: BlockWeights) -> torch.Tensor:
    """A K-quant's scales as the file holds them, `(N, bytes)` uint8 a row: the super-blocks'
    float16 d, then dmin, then each block's int8 sc, then m; Q6_K (sixteen blocks of 16 a
    super-block) has no minimums, and its rows no dmin and m."""
    n = weights.shape[0]
    parts = [weights.d, weights.dmin, weights.sc, weights.m] if weights.blocks_per_super == 8 else [weights.d, weights.sc]
    return torch.cat([part.contiguous().view(torch.uint8).reshape(n, -1) for part in parts], dim=1).contiguous()


def unpacked_scales(packed: torch.Tensor, k: int, block: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`packed_scales`'s rows back to each block's float32 scale `d * sc` and minimum `dmin * m`
    (None where the rows hold none), exact."""
    supers, blocks = k // SUPER_BLOCK, k // block
    with_low = packed.shape[1] == 4 * supers + 2 * blocks
    at = 0

    def take(count: int, dtype: torch.dtype) -> torch.Tensor:
        nonlocal at
        part = packed[:, at : at + count * dtype.itemsize].contiguous().view(dtype)
        at += count * dtype.itemsize
        return part

    d = take(supers, torch.float16)
    dmin = take(supers, torch.float16) if with_low else None
    sc = take(blocks, torch.int8)
    per = blocks // supers
    scale = super_block_products(d, sc, per)
    if dmin is None:
        return scale, None
    return scale, super_block_products(dmin, take(blocks, torch.int8), per)


def block_matmul(x: torch.Tensor, weights: ScaledBlocks, kernel=None) -> torch.Tensor:
    """`x @ W.T` for x `(M, K)` float32 and the block weight W `(N, K)`: `(M, N)` float32."""
    if kernel is not None and x.shape[0] < MATMUL_FROM:
        return kernel.block_linear(x, *weights.kernel_args())
    n = weights.shape[0]
    step = max(1, min(n, DEQUANTIZED_ROWS))
    parts = []
    for start in range(0, n, step):
        part = weights.rows(start, min(n, start + step))
        dense = kernel.block_dequantize(*part.kernel_args()) if kernel is not None else part.dequantize()
        parts.append(x @ dense.T)
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)


class BlockLinear(nn.Module):
    """A bias-free (or float-biased) linear layer computed from `ScaledBlocks`."""

    def __init__(self, weights: ScaledBlocks, bias: torch.Tensor | None = None) -> None:
        super().__init__()
        self.weights = weights
        self.out_features, self.in_features = weights.shape
        self.register_parameter("bias", None if bias is None else nn.Parameter(bias, requires_grad=False))
        self.kernel = block_kernel.ops()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., K) -> (..., N)
        flat = x.reshape(-1, self.in_features).float()
        out = block_matmul(flat, self.weights, self.kernel)
        if self.bias is not None:
            out = out + self.bias.float()
        return out.reshape(*x.shape[:-1], self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"{self.weights.bits}-bit codes in blocks of {self.weights.block}")


class BlockEmbedding(nn.Module):
    """An embedding lookup reading only the looked-up rows of `ScaledBlocks`, times `scale`
    where the model scales its embeddings (Gemma: the square root of d_model, as a float32
    number rounded to the model's dtype, as transformers does)."""

    def __init__(self, weights: ScaledBlocks, scale: float | None = None, dtype=torch.float32,
                 use_kernel: bool = True) -> None:
        """Look rows up in `weights`; without `use_kernel`, in plain torch even where the block
        kernel is built (a model that does not load the kernel otherwise: the int4 default)."""
        super().__init__()
        self.weights = weights
        self.num_embeddings, self.embedding_dim = weights.shape
        self.scale = scale
        self.dtype = dtype
        self.kernel = block_kernel.ops() if use_kernel else None

    def forward(self, ids: torch.Tensor) -> torch.Tensor:  # (...) -> (..., d_model)
        if self.kernel is not None:
            rows = self.kernel.block_rows(ids, *self.weights.kernel_args())
        else:
            flat = ids.reshape(-1)
            if bool((flat < 0).any() or (flat >= self.num_embeddings).any()):
                raise IndexError("token id out of the embedding's range")
            rows = self.weights.dequantize(flat)
        rows = rows.to(self.dtype)
        if self.scale is not None:
            rows = rows * torch.tensor(self.scale, dtype=self.dtype)
        return rows.reshape(*ids.shape, self.embedding_dim)


def fuse_block_linears(linears: list[nn.Module]) -> BlockLinear | None:
    """One `BlockLinear` computing `cat([l(x) for l in linears], -1)`, when all are block
    linears of one layout and width (the originals are repointed at row slices of it, so nothing
    is stored twice), else None. A missing minimum or bias becomes zeros in the fused one; scales
    held differently (float16, packed, float32) are fused as float32 numbers."""
    if not linears or not all(type(layer) is BlockLinear for layer in linears):
        return None
    first = linears[0].weights
    parts = [layer.weights for layer in linears]
    if any((w.bits, w.block, w.shape[1]) != (first.bits, first.block, first.shape[1]) for w in parts):
        return None
    if len({(w.scale.dtype, w.scale.shape[1] if w.scale.dtype == torch.uint8 else 0) for w in parts}) == 1:
        scales, lows = [w.scale for w in parts], [w.low for w in parts]  # held alike: as they are
    else:  # float32 for all (exact), where they are held differently
        scales, lows = zip(*(w.block_scales() for w in parts))
        lows = [torch.empty(0) if low is None else low for low in lows]
    dtype = scales[0].dtype
    lows = [low if low.numel() else torch.zeros_like(scale) for low, scale in zip(lows, scales)] \
        if any(low.numel() for low in lows) else []
    rows = sum(w.shape[0] for w in parts)
    fused = ScaledBlocks((rows, first.shape[1]), first.bits, first.block, torch.cat([w.codes for w in parts]),
                         torch.cat(scales), torch.cat(lows) if lows else torch.empty(0, dtype=dtype))
    biases = [layer.bias for layer in linears]
    bias = None
    if any(b is not None for b in biases):
        bias = torch.cat([b.detach() if b is not None else torch.zeros(layer.out_features)
                          for b, layer in zip(biases, linears)])
    start = 0
    for layer in linears:
        layer.weights = fused.rows(start, start + layer.out_features)
        start += layer.out_features
    return BlockLinear(fused, bias)

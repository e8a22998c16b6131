"""Linear layers and embeddings whose weights stay in GGUF's block quantization.

`BlockLinear` and `BlockEmbedding` hold a `chatapp.runtime.block_weights.BlockWeights` (the
file's own codes and float16 scales, about the file's size in memory) and compute in float32:
on chatapp's block kernel (`chatapp.runtime.block_kernel`) where it is built, else in plain torch,
dequantizing a slice of rows at a time so that memory never holds the float32 matrix. Either way
the numbers are those of a float32 product with the exactly dequantized weights, up to the order
of the sums. A tied LM head and embedding share one `BlockWeights`.
"""

from __future__ import annotations

import torch
from torch import nn

from chatapp.runtime import block_kernel
from chatapp.runtime.block_weights import BlockWeights

DEQUANTIZED_ROWS = 1 << 14
"""Rows the plain-torch path dequantizes at a time (64 MB of float32 at K = 1024)."""
MATMUL_FROM = 16
"""Inputs of at least this many rows (a prefill) are multiplied by the dequantized weight
through torch's matrix product, one slice of rows at a time, which reuses each weight far
better than the kernel's row-by-row products."""


def _tensors(weights: BlockWeights) -> tuple:
    return (weights.codes, weights.d, weights.dmin, weights.sc, weights.m,
            weights.bits, weights.block, weights.blocks_per_super)


def _dequantized_rows(weights: BlockWeights, start: int, stop: int, kernel) -> torch.Tensor:
    """Rows `start:stop` of the weight in float32."""
    if kernel is not None:
        part = BlockWeights((stop - start, weights.shape[1]), weights.bits, weights.block, weights.blocks_per_super,
                            *(t[start:stop] for t in (weights.codes, weights.d, weights.dmin, weights.sc, weights.m)))
        return kernel.block_dequantize(*_tensors(part))
    return weights.rows(start, stop).dequantize()


def block_matmul(x: torch.Tensor, weights: BlockWeights, kernel=None) -> torch.Tensor:
    """`x @ W.T` for x `(M, K)` float32 and the block weight W `(N, K)`: `(M, N)` float32."""
    if kernel is not None and x.shape[0] < MATMUL_FROM:
        return kernel.block_linear(x, *_tensors(weights))
    n = weights.shape[0]
    step = max(1, min(n, DEQUANTIZED_ROWS))
    parts = [x @ _dequantized_rows(weights, start, min(n, start + step), kernel).T for start in range(0, n, step)]
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)


class BlockLinear(nn.Module):
    """A bias-free (or float-biased) linear layer computed from a `BlockWeights`."""

    def __init__(self, weights: BlockWeights, bias: torch.Tensor | None = None) -> None:
        super().__init__()
        self.weights = weights
        self.out_features, self.in_features = weights.shape
        self.register_parameter("bias", None if bias is None else nn.Parameter(bias, requires_grad=False))
        self.kernel = block_kernel.ops()

    @property
    def nbytes(self) -> int:
        return self.weights.nbytes

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
    """An embedding lookup reading only the looked-up rows of a `BlockWeights`, times
    `scale` where the model scales its embeddings (Gemma: the square root of d_model, as a
    float32 number rounded to the model's dtype, as transformers does)."""

    def __init__(self, weights: BlockWeights, scale: float | None = None, dtype=torch.float32) -> None:
        super().__init__()
        self.weights = weights
        self.num_embeddings, self.embedding_dim = weights.shape
        self.scale = scale
        self.dtype = dtype
        self.kernel = block_kernel.ops()

    def forward(self, ids: torch.Tensor) -> torch.Tensor:  # (...) -> (..., d_model)
        if self.kernel is not None:
            rows = self.kernel.block_rows(ids, *_tensors(self.weights))
        else:
            flat = ids.reshape(-1)
            if bool((flat < 0).any() or (flat >= self.num_embeddings).any()):
                raise IndexError("token id out of the embedding's range")
            rows = self.weights.select_rows(flat).dequantize()
        rows = rows.to(self.dtype)
        if self.scale is not None:
            rows = rows * torch.tensor(self.scale, dtype=self.dtype)
        return rows.reshape(*ids.shape, self.embedding_dim)

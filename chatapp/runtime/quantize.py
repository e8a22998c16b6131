"""Weight-only 4-bit linears for fast CPU decoding, using torch's int4 kernels.

The default model comes from a Q4_1 GGUF file: each run of 32 weights along a row is
`d * q + m` with q in 0..15. `quantize_int4` finds those blocks again in the dequantized weights
and packs them for `torch._weight_int4pack_mm_for_cpu` (dequant `(q - 8) * scale + zero`, so
scale = d and zero = m + 8d): the same 4-bit values the GGUF file holds, at a quarter of the
bytes of bfloat16. Only the scales are rounded (to bfloat16, which the kernel computes in), so
outputs differ from float32 about as much as bfloat16 weights do.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

GROUP_SIZE = 32
"""Weights per quantization block along the input dimension, as in GGUF's Q4_0/Q4_1."""
LEVELS = 15
"""Largest 4-bit code."""
ZERO_OFFSET = 8
"""torch's int4 kernels dequantize (q - 8) * scale + zero."""
EXACT_TOLERANCE = 1e-3
"""Largest relative error for a block to count as holding GGUF 4-bit values exactly."""


def int4_supported() -> bool:
    """Whether this torch build has the CPU int4 kernels."""
    return hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu") and hasattr(torch, "_convert_weight_to_int4pack_for_cpu")


class Int4Linear(nn.Module):
    """A bias-free linear layer whose weight is packed 4-bit with per-block scale and zero."""

    def __init__(self, packed: torch.Tensor, scales_and_zeros: torch.Tensor, in_features: int, out_features: int) -> None:
        """Hold a packed weight; see `quantize_linear`."""
        super().__init__()
        self.register_buffer("packed", packed)
        self.register_buffer("scales_and_zeros", scales_and_zeros)  # (K / G, N, 2) bfloat16
        self.in_features = in_features
        self.out_features = out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., K) -> (..., N)
        flat = x.reshape(-1, self.in_features).to(torch.bfloat16)
        out = torch._weight_int4pack_mm_for_cpu(flat, self.packed, GROUP_SIZE, self.scales_and_zeros)
        return out.reshape(*x.shape[:-1], self.out_features).to(x.dtype)


ROW_MULTIPLE = 16
"""torch packs int4 weights whose output size is a multiple of this."""
EXACT_TOP = 256
"""Logits per step that `OutputHead` recomputes in float32."""
NO_ROWS = torch.empty(0, dtype=torch.long)
"""No rows to recompute beyond the best ones (no watched tokens)."""

# The state-dict keys of an `OutputHead` saved as a model's `lm_head` (the int4 file cache).
HEAD_KEY = "lm_head.weight"
"""The LM head's packed 4-bit codes."""
SCALES_KEY = "lm_head.scales"
"""Their scales and zeros."""
EXACT_KEY = "lm_head.exact_weight"
"""The LM head's float32 weights, stored only when they are not the input embedding's (untied)."""


class OutputHead(nn.Module):
    """An LM head that streams int4 weights but gives the best logits in float32.

    Reading the `(V, d_model)` matrix is the largest single cost of a CPU decode step after the
    int4 layers (it has to come from memory again every step). This head reads it packed to
    4 bits in blocks of 32 (an eighth of float32's bytes, `torch._weight_int4pack_mm_for_cpu`),
    then recomputes the `EXACT_TOP` largest logits from the float32 weights: the candidates, the
    greedy choice and the top-k distribution (for k up to `EXACT_TOP`) are float32 numbers; only
    the far tail, which moves the softmax's normaliser by a small amount, keeps the 4-bit
    rounding. On the default model, over 300 steps of 5 prompts, the 4-bit pass's best 256 held
    every one of the true best 50; the raw probability of the best candidate moved by 0.002% of
    its value in the median step (0.9% at most) and the entropy by 0.0002 nats (0.05 at most).
    """

    def __init__(self, packed: torch.Tensor, scales_and_zeros: torch.Tensor, exact, exact_top: int = EXACT_TOP) -> None:
        """Hold the `(V, d_model)` weights twice: packed 4-bit (`packed`, `scales_and_zeros`, see
        `pack_int4`) for the full pass; `exact` for the best rows: float32 and shared (e.g. with a
        tied input embedding), or the GGUF file's own blocks (a `ScaledBlocks`, shared with a
        `BlockEmbedding`), whose rows dequantize to the same float32 numbers (the default
        model's Q8_0 embedding: 31 MiB instead of 108)."""
        super().__init__()
        self.weight = nn.Parameter(packed.detach(), requires_grad=False)
        self.register_buffer("scales", scales_and_zeros.detach())  # (d_model / G, V, 2) bfloat16
        blocks = not isinstance(exact, torch.Tensor)
        self.register_buffer("exact_weight", None if blocks else exact.detach().float(), persistent=False)
        self.exact_blocks = exact if blocks else None
        """The exact rows' blocks, or None (`exact_weight` holds them in float32)."""
        self.vocab_rows = exact.shape[0]
        self.exact_top = min(exact_top, self.vocab_rows)

    def exact_rows(self, ids: torch.Tensor) -> torch.Tensor:
        """`(..., d_model)` float32: the exact weights' rows `ids` `(...)`."""
        if self.exact_blocks is None:
            return self.exact_weight[ids]
        return self.exact_blocks.dequantize(ids.reshape(-1)).reshape(*ids.shape, -1)

    @staticmethod
    def fits(weight: torch.Tensor) -> bool:
        """Whether a head with this `(V, d_model)` weight can be packed: d_model a whole number of
        int4 blocks (rows are padded as needed)."""
        return weight.shape[1] % GROUP_SIZE == 0

    @classmethod
    def from_float32(cls, weight: torch.Tensor, exact_top: int = EXACT_TOP) -> "OutputHead":
        """A head for `weight`, kept as given for the exact rows, with new 4-bit codes (rows
        padded with zeros to a multiple of `ROW_MULTIPLE`, as the packing needs)."""
        padding = torch.zeros(-weight.shape[0] % ROW_MULTIPLE, weight.shape[1], device=weight.device)
        packed, scales_and_zeros, _ = pack_int4(torch.cat([weight.detach().float(), padding]))
        return cls(packed, scales_and_zeros, weight, exact_top)

    kernel_parts: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
    """The head's 4-bit codes, scales and zeros laid out for chatapp's int4 kernel
    (`chatapp.runtime.int4_layout.convert`), once a decoder has taken it up for the model's decode steps."""

    best_of = None
    """`(V,)` logits, k -> (values, ids) of the k highest (the block kernel's `top_k`, set once it
    is loaded), or None: `torch.topk` picks the rows to recompute."""
    exact_of = None
    """The block kernel's `exact_logits` (set with `best_of`), or None: for a head whose exact rows
    are blocks, the choice of the best rows and their float32 products in one call (about 0.1 ms
    instead of 0.35 of a step on the default model), the products' sums rounded in another order
    than `torch.mv`'s."""
    always_exact: torch.Tensor | None = None
    """`(W,)` ids whose logits are recomputed in float32 too, wherever they rank (the tokens
    `ask --watch` follows), for one context vector."""

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:  # (..., d_model) -> (..., V) float32
        flat = hidden.reshape(-1, hidden.shape[-1])
        kernel = self.kernel_parts
        if kernel is not None and flat.shape[0] == 1:  # a decode step (torch's kernel batches better)
            logits = torch.ops.chatapp.int4_linear(flat.float(), *kernel)
        else:
            logits = torch._weight_int4pack_mm_for_cpu(flat.to(torch.bfloat16), self.weight, GROUP_SIZE, self.scales)
        logits = logits[:, : self.vocab_rows].float()  # (B, V): without the padding rows
        if hidden.dim() == 1:  # one context vector: recompute its best rows as one small product
            logits = logits[0]
            if self.exact_of is not None and self.exact_blocks is not None:
                always = self.always_exact if self.always_exact is not None else NO_ROWS
                self.exact_of(logits, hidden.float().contiguous(), self.exact_top, always, *self.exact_blocks.kernel_args())
                return logits
            if self.best_of is not None:
                best = self.best_of(logits, self.exact_top)[1]  # (M,)
            else:
                best = torch.topk(logits, self.exact_top, sorted=False).indices  # (M,)
            if self.always_exact is not None:
                best = torch.cat([best, self.always_exact.to(best.device)])  # (M + W,)
            logits[best] = torch.mv(self.exact_rows(best), hidden.float())
            return logits
        best = torch.topk(logits, self.exact_top, dim=-1, sorted=False).indices  # (B, M)
        rows = self.exact_rows(best)  # (B, M, d_model)
        exact = torch.matmul(rows, hidden.reshape(-1, hidden.shape[-1]).float().unsqueeze(-1)).squeeze(-1)  # (B, M)
        return logits.scatter(-1, best, exact).reshape(*hidden.shape[:-1], -1)


@dataclass
class QuantizeReport:
    """What `quantize_int4` did."""

    layers: int = 0
    """Linear layers replaced."""
    exact_blocks: float = 0.0
    """Fraction of 32-weight blocks that were already 4-bit (from a GGUF file) and so kept exactly."""


def int4_blocks(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """`weight` `(N, K)` rounded to 4 bits a block of G: each block's 16 levels evenly spaced from
    its least value to its largest. Returns the blocks `(N, K / G, G)` float32, their codes
    (0..15, as float32), each block's scale and least value `(N, K / G, 1)`, so that a weight is
    about `code * scale + least` (zero = least + `ZERO_OFFSET` * scale in torch's convention)."""
    weight = weight.detach().float()
    n, k = weight.shape
    blocks = weight.reshape(n, k // GROUP_SIZE, GROUP_SIZE)
    low = blocks.amin(-1, keepdim=True)
    high = blocks.amax(-1, keepdim=True)
    scale = ((high - low) / LEVELS).clamp(min=torch.finfo(torch.float32).tiny)
    codes = ((blocks - low) / scale).round().clamp(0, LEVELS)
    return blocks, codes, scale, low


def pack_int4(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
    """`weight` `(N, K)` packed for torch's int4 kernels: (packed codes, scales and zeros
    `(K / G, N, 2)` in bfloat16, the fraction of its blocks that were exactly 4-bit)."""
    n, k = weight.shape
    blocks, codes, scale, low = int4_blocks(weight)
    high = blocks.amax(-1, keepdim=True)
    rebuilt = codes * scale + low
    error = (rebuilt - blocks).abs().amax(-1) / (high - low).squeeze(-1).clamp(min=1e-12)
    exact = float((error <= EXACT_TOLERANCE).float().mean())
    zero = low + ZERO_OFFSET * scale
    scales_and_zeros = torch.cat([scale, zero], -1).transpose(0, 1).contiguous().to(torch.bfloat16)  # (K/G, N, 2)
    packed = torch._convert_weight_to_int4pack_for_cpu(codes.reshape(n, k).to(torch.int32), 1)
    return packed, scales_and_zeros, exact


def quantize_linear(linear: nn.Linear) -> tuple[Int4Linear, float]:
    """Pack one linear layer; return it and the fraction of its blocks that were exactly 4-bit."""
    packed, scales_and_zeros, exact = pack_int4(linear.weight)
    return Int4Linear(packed, scales_and_zeros, linear.in_features, linear.out_features), exact


def _eligible(module: nn.Module) -> bool:
    return (
        isinstance(module, nn.Linear)
        and module.bias is None
        and module.in_features % GROUP_SIZE == 0
        and module.out_features % ROW_MULTIPLE == 0
        and module.weight.device.type == "cpu"
    )


@torch.inference_mode()
def quantize_int4(model: nn.Module) -> QuantizeReport:
    """Replace the transformer blocks' linear layers with `Int4Linear`, in place.

    The output and input embeddings are left as they are (see `OutputHead` for the LM head).
    """
    report = QuantizeReport()
    exact_total = 0.0
    skip = {id(model.get_output_embeddings())}
    for parent in list(model.base_model.modules()):
        for name, child in list(parent.named_children()):
            if id(child) in skip or not _eligible(child):
                continue
            replacement, exact = quantize_linear(child)
            setattr(parent, name, replacement)
            report.layers += 1
            exact_total += exact
    report.exact_blocks = exact_total / report.layers if report.layers else 0.0
    return report

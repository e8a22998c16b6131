"""The weights of chatapp's int4 kernel (`chatapp.runtime.int4_kernel`): their layout, how a
model's int4 weights are laid out in it (one copy), and the arithmetic of its products.

Layouts (`convert`): a weight `(N, K)` in blocks of 32 along K, `w = scale * (q - 8) + zero`
with q in 0..15 (torch's int4 convention, `chatapp.runtime.quantize`), becomes
- `weight` `(N, K / 2)` uint8: per block 16 bytes, byte j holding q[j] in its low nibble and
  q[j + 16] in its high one (GGUF's own Q4 layout);
- `scales`, `zeros` `(N, K / 32)` bfloat16: the very numbers torch's kernel reads, so a step
  reads as many bytes of weights as with torch's kernel.

Arithmetic (every int4 product of the kernel's ops, but a prefill's from 8 tokens on AMX-INT8
tiles, with the activations rounded to 11 bits, `kernels/amx_int4.h`, and off the tiles those of
a prefill of 20 tokens or more, which multiply the weight dequantized to float32): each block of 32 activations is rounded to int16
(scale = largest magnitude / `ACTIVATION_LEVELS`), its products with the 4-bit codes are summed
exactly in int32 (AVX512-VNNI `vpdpwssd`), and `zero - 8 * scale` times the block's exact float32
sum is added. The outputs are float arithmetic on the same 4-bit weights but for that rounding,
which is finer than torch's kernel's rounding of activations to bfloat16, so the two kernels'
outputs differ slightly. `reference_int4_linear` computes `int4_linear`'s numbers in plain torch
for the tests.

A model's weights come packed for torch's int4 kernel (`chatapp.runtime.quantize`, or the int4
cache file's mapping); `laid_out` converts them a few thousand rows at a time into the kernel's
tensors, joining the weights one product reads (q/k/v, gate/up), and gives back each source's
pages as it goes, so the process ends up holding the kernel's copy only.
"""

from __future__ import annotations

import torch

from chatapp.runtime.quantize import GROUP_SIZE, ZERO_OFFSET, int4_blocks
from chatapp.support.memory import release_pages

REQUANTIZED_ROWS = 1024
"""Rows `requantized` rounds at a time (2.6 MB of float32 at K = 640)."""
ACTIVATION_LEVELS = 32767.0
"""Activations are rounded per block of 32 to integers up to this (int16), scale = max |x| / it."""


def unpack_codes(packed: torch.Tensor, n: int, k: int) -> torch.Tensor | None:
    """The 4-bit codes `(N, K)` uint8 of a weight packed by `torch._convert_weight_to_int4pack_for_cpu`,
    or None when torch packs in a layout this function does not know.

    On AVX512 CPUs torch stores rows in blocks of 64: `(N / 64, K, 32)` bytes, byte j holding
    row j in its low nibble and row 32 + j in its high one. `_layout_known` checks that on a
    small probe before anything relies on it.
    """
    if n % 64 or packed.numel() != n * k // 2 or not _layout_known():
        return None
    return _unpack(packed, n, k)


def _unpack(packed: torch.Tensor, n: int, k: int) -> torch.Tensor:
    blocks = packed.reshape(n // 64, k, 32)
    codes = torch.cat([blocks & 15, blocks >> 4], dim=2)  # (N / 64, K, 64)
    return codes.transpose(1, 2).reshape(n, k)


_LAYOUT_KNOWN: list[bool] = []


def _layout_known() -> bool:
    """Whether torch packs int4 weights as `unpack_codes` reads them (probed once)."""
    if not _LAYOUT_KNOWN:
        generator = torch.Generator().manual_seed(0)
        codes = torch.randint(0, 16, (128, 96), generator=generator, dtype=torch.int32)
        packed = torch._convert_weight_to_int4pack_for_cpu(codes, 1)
        _LAYOUT_KNOWN.append(bool(torch.equal(_unpack(packed, 128, 96).to(torch.int32), codes)))
    return _LAYOUT_KNOWN[0]


def pack(codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The kernel's tensors for codes `(N, K)` (0..15) with `w = scales * (q - 8) + zeros` per block
    of 32 (`scales`, `zeros` `(N, K / 32)`, rounded to bfloat16)."""
    n, k = codes.shape
    blocks = codes.to(torch.uint8).reshape(n, k // GROUP_SIZE, 2, GROUP_SIZE // 2)
    weight = (blocks[:, :, 0] | (blocks[:, :, 1] << 4)).reshape(n, k // 2).contiguous()
    return weight, scales.to(torch.bfloat16).contiguous(), zeros.to(torch.bfloat16).contiguous()


def convert(packed: torch.Tensor, scales_and_zeros: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """The kernel's tensors for a weight packed for torch's int4 kernel (`chatapp.runtime.quantize`:
    scales and zeros `(K / 32, N, 2)` bfloat16), or None when its shape or layout does not suit
    the kernel. The same 4-bit codes and the same scales: only the arithmetic changes."""
    blocks, n, _ = scales_and_zeros.shape
    k = blocks * GROUP_SIZE
    if k % (2 * GROUP_SIZE):
        return None
    codes = unpack_codes(packed, n, k)
    if codes is None:
        return None
    return pack(codes, scales_and_zeros[..., 0].transpose(0, 1), scales_and_zeros[..., 1].transpose(0, 1))


def reference_int4_linear(x: torch.Tensor, weight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor) -> torch.Tensor:
    """What `torch.ops.chatapp.int4_linear` computes, in plain torch (float64 sums): x `(M, K)`
    rounded to int16 per block of 32, times the 4-bit codes, plus `zeros - 8 scales` times the
    exact block sums of x."""
    m, k = x.shape
    n = weight.shape[0]
    x = x.float().reshape(m, k // GROUP_SIZE, GROUP_SIZE)
    largest = x.abs().amax(-1, keepdim=True)
    inverse = torch.where(largest > 0, ACTIVATION_LEVELS / largest, torch.zeros_like(largest))
    xq = torch.round(x * inverse).clamp(-ACTIVATION_LEVELS, ACTIVATION_LEVELS)
    xscale = largest / ACTIVATION_LEVELS  # (M, K/32, 1)
    low, high = weight & 15, weight >> 4  # (N, K/2)
    codes = torch.stack([low.reshape(n, -1, 16), high.reshape(n, -1, 16)], 2).reshape(n, k // GROUP_SIZE, GROUP_SIZE)
    dots = torch.einsum("mgi,ngi->mng", xq.double(), codes.double())  # (M, N, K/32)
    scale, zero = scales.double().unsqueeze(0), zeros.double().unsqueeze(0)
    scaled = dots * (scale * xscale.double().transpose(1, 2))
    offsets = (zero - ZERO_OFFSET * scale) * x.double().sum(-1).unsqueeze(1)  # (M, N, K/32)
    return (scaled + offsets).sum(-1).float()


LAYOUT_ROWS = 4096
"""Rows of a weight laid out at a time (a multiple of torch's 64-row blocks): the conversion's
temporaries stay a few MB, where the LM head's whole 49,152 rows made about 100 MB of them."""


def laid_out(parts: list[torch.Tensor]) -> list[torch.Tensor] | None:
    """The kernel's three tensors for the product of `parts` (each weight's packed codes and scales
    for torch's int4 kernel, in turn; several are joined row-wise, as q/k/v and gate/up are), or
    None where the kernel's layout does not suit them. The sources' pages are given back as they
    are laid out (`release_pages`): the kernel's copy replaces them, and the process holds one."""
    total = sum(parts[index + 1].shape[1] for index in range(0, len(parts), 2))
    laid_out: list[torch.Tensor] = []
    row = 0
    for index in range(0, len(parts), 2):
        packed, scales = parts[index], parts[index + 1]  # (N, K/2) uint8; (K/32, N, 2)
        for start in range(0, scales.shape[1], LAYOUT_ROWS):
            rows = slice(start, start + LAYOUT_ROWS)
            converted = convert(packed[rows], scales[:, rows])
            if converted is None:
                return None
            if not laid_out:  # written into in place: no second copy while they are joined
                laid_out = [torch.empty((total, *t.shape[1:]), dtype=t.dtype) for t in converted]
            for target, piece in zip(laid_out, converted):
                target[row : row + piece.shape[0]] = piece
            row += converted[0].shape[0]
            release_pages(packed[rows])
        release_pages(scales)
    return laid_out


def requantized(weights, stop=lambda: False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """The kernel's tensors for a 4-bit copy of a weight held in wider GGUF blocks (`weights`, a
    `chatapp.runtime.block_linear.ScaledBlocks`): its rows dequantized exactly and rounded to
    4 bits a block of 32 as `chatapp.runtime.quantize.pack_int4` rounds a float weight, scales
    and zeros in bfloat16, `REQUANTIZED_ROWS` rows at a time (memory never holds the float32
    matrix). None once `stop()` is true between two slices."""
    n, k = weights.shape
    codes = torch.empty(n, k // 2, dtype=torch.uint8)
    scales = torch.empty(n, k // GROUP_SIZE, dtype=torch.bfloat16)
    zeros = torch.empty_like(scales)
    for start in range(0, n, REQUANTIZED_ROWS):
        if stop():
            return None
        end = min(n, start + REQUANTIZED_ROWS)
        _, part_codes, scale, low = int4_blocks(weights.rows(start, end).dequantize())
        laid = pack(part_codes.reshape(end - start, k), scale.squeeze(-1), (low + ZERO_OFFSET * scale).squeeze(-1))
        for target, part in zip((codes, scales, zeros), laid):
            target[start:end] = part
    return codes, scales, zeros

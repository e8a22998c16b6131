"""The decoder layers of a Llama-family model as one function, compiled by TorchScript.

`run_layers` takes everything as tensors and plain values (weights as lists, the KV buffers, the
rotary tables), so TorchScript can compile it; `LlamaDecoder` (chatapp.runtime.llama_decoder) prepares
those and calls it for every prefill and decode step. Written in the TorchScript subset of
Python: `typing.List`/`Optional` annotations, no closures, globals only as default values.
"""

from __future__ import annotations

import functools
import warnings
from typing import Callable, List, Optional

import torch
import torch.nn.functional as F

from chatapp.runtime.quantize import GROUP_SIZE


def project(x: torch.Tensor, parts: List[torch.Tensor], cast: bool, group_size: int = GROUP_SIZE) -> torch.Tensor:
    """`cat([linear(x) for each linear], -1)` for the (weight, scales) pairs of `_parts`.

    int4 products compute in bfloat16; with `cast` their output comes back in `x`'s dtype, else
    it stays bfloat16 (for a product that is only added into the residual stream, whose
    in-place add converts it at no extra cost).
    """
    outputs: List[torch.Tensor] = []
    for index in range(0, len(parts), 2):
        weight, scales = parts[index], parts[index + 1]
        if scales.numel() == 0:
            outputs.append(F.linear(x, weight))
        else:
            outputs.append(torch._weight_int4pack_mm_for_cpu(x.to(torch.bfloat16), weight, group_size, scales))
    out = outputs[0] if len(outputs) == 1 else torch.cat(outputs, -1)
    return out.to(x.dtype) if cast else out


def rms_norm(x: torch.Tensor, doubled_weight: torch.Tensor, eps: float) -> torch.Tensor:
    """The RMS norm of each row of `x` `(T, d)`, with `doubled_weight` = `cat([weight, weight])`.

    Computed by layer norm's fused kernel on `[x, -x]`: that row has mean 0 and variance
    `mean(x**2)`, so its layer norm is `x / sqrt(mean(x**2) + eps)` in the first half. One kernel
    instead of the six small ones of `F.rms_norm` (pow, mean, add, rsqrt and two products),
    about a third of the time on CPU; the results differ from `F.rms_norm` by rounding (~1e-9).
    """
    width = x.shape[-1]
    # contiguous: int4 products need it, and a bfloat16 model's cast to bfloat16 would not copy.
    return F.layer_norm(torch.cat([x, -x], -1), [2 * width], doubled_weight, None, eps)[..., :width].contiguous()


def run_layers(
    x: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    rotation: torch.Tensor,
    norms: List[torch.Tensor],
    qkv_parts: List[List[torch.Tensor]],
    o_parts: List[List[torch.Tensor]],
    gate_up_parts: List[List[torch.Tensor]],
    down_parts: List[List[torch.Tensor]],
    caches: List[torch.Tensor],
    start: int,
    heads: int,
    kv_heads: int,
    eps: float,
    mask: Optional[torch.Tensor],
    causal: bool,
    positions: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Run `x` `(T, d_model)`, the embedded tokens at positions `start..`, through every
    decoder layer, writing their keys and values into `caches`; return the final residual.

    `cos`/`sin` are the rotary tables `(T, heads + 2 kv_heads, head_dim)` (ones and zeros for v),
    `norms` holds each layer's two RMS norm weights in turn, each doubled (see `rms_norm`).
    With `positions` `(T,)` on the device instead of `start`, the keys and values are written
    there and attention runs over the whole buffers under `mask` (`chatapp.runtime.captured_step`:
    no shape depends on the position). `LlamaDecoder` runs it compiled, or as plain Python where
    TorchScript is missing.
    """
    count, head_dim = x.shape[0], rotation.shape[0]
    end = start + count
    for index in range(len(caches)):
        cache = caches[index]  # (2, kv_heads, capacity, head_dim)
        qkv = project(rms_norm(x, norms[2 * index], eps), qkv_parts[index], True)
        qkv = qkv.view(count, -1, head_dim)  # (T, H + 2 KVH, hd)
        qkv = torch.addcmul(qkv * cos, qkv @ rotation, sin)  # rotary embeddings on q and k
        new_kv = qkv[:, heads:].view(count, 2, kv_heads, head_dim).permute(1, 2, 0, 3)  # (2, KVH, T, hd)
        if positions is None:
            cache[:, :, start:end] = new_kv
            keys, values = cache[0:1, :, :end], cache[1:2, :, :end]  # (1, KVH, end, hd) each
        else:
            cache.index_copy_(2, positions, new_kv)
            keys, values = cache[0:1], cache[1:2]  # (1, KVH, capacity, hd) each
        attended = F.scaled_dot_product_attention(
            qkv[:, :heads].transpose(0, 1).unsqueeze(0),  # (1, H, T, hd)
            keys,
            values,
            attn_mask=mask,
            is_causal=causal,
            enable_gqa=heads != kv_heads,
        )  # (1, H, T, hd)
        x.add_(project(attended[0].transpose(0, 1).reshape(count, heads * head_dim), o_parts[index], False))
        gate_up = project(rms_norm(x, norms[2 * index + 1], eps), gate_up_parts[index], True)
        gate, up = gate_up.chunk(2, -1)  # (T, I) each
        x.add_(project(F.silu(gate) * up, down_parts[index], False))
    return x


@functools.cache
def compiled_run_layers() -> Callable:
    """`run_layers` compiled by TorchScript, or the Python function where that fails.

    TorchScript runs the ~30 small operations of each layer without Python between them, about
    15% off a decode step of the default model on CPU, with the same kernels and so the same
    numbers (on CPU, where TorchScript fuses nothing; its GPU fuser may round differently). It
    compiles in milliseconds and needs no C++ toolchain (torch.compile's CPU backend needs one
    and minutes). torch marks it deprecated; if a torch without it fails here, decoding simply
    stays in Python.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.jit.script(run_layers)
    except Exception:  # noqa: BLE001 - any failure to compile means: run the Python version
        return run_layers

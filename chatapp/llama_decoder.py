"""Our own decoder for Llama-family models: the fast path of prefill and decode-one.

For a small model such as SmolLM2-135M, most of a decode step through transformers' eager
modules is Python dispatch, not arithmetic: every layer runs three separate q/k/v products, two
gate/up products, rotary embeddings per tensor, a growing `torch.cat` KV cache and several
layers of wrappers. `LlamaDecoder` runs the same mathematics with the model's own weights in
fewer, larger operations:

- q, k and v come from one fused product, and gate and up from another (the model's linear
  layers are repointed at row slices of the fused weights, so the weights are not stored twice;
  only int4 scales, a few percent of the packed bytes, are);
- rotary embeddings are applied to q and k together, with the cos/sin of the model's own
  rotary module, computed once per forward for all layers;
- the KV cache is a preallocated buffer written in place, grown by doubling.

It returns only the final hidden state of the last position; the LM head (chatapp.lm_head)
turns that into logits. Models it does not cover (other architectures, biases, sliding
windows, layers spread by Accelerate) run through transformers' modules (`chatapp.decoding`).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from chatapp.decoding import TokenCache
from chatapp.quantize import GROUP_SIZE, Int4Linear

MODEL_TYPES = ("llama",)
"""Architectures whose decoder layers this module reproduces."""
INT4_ROW_BLOCK = 64
"""torch's CPU int4 packing interleaves rows in blocks of 64: only whole blocks can be joined."""
MIN_CAPACITY = 256
"""Tokens the KV buffers hold at first; they double when full."""


def unsupported_reason(model) -> str | None:
    """Why `model` must run through transformers' modules, or None when `LlamaDecoder` fits."""
    config = model.config
    if getattr(config, "model_type", None) not in MODEL_TYPES:
        return f"architecture {getattr(config, 'model_type', '?')!r}"
    device_map = getattr(model, "hf_device_map", None)
    if device_map and len(set(device_map.values())) > 1:
        return "layers spread over several devices"
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        return "linear biases"
    if getattr(config, "hidden_act", "silu") != "silu" or getattr(config, "pretraining_tp", 1) != 1:
        return "activation or tensor-parallel layout"
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    if rope.get("rope_type", rope.get("type", "default")) == "dynamic":
        return "dynamic rotary scaling"
    layer = model.model.layers[0]
    parts = [layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj,
             layer.self_attn.o_proj, layer.mlp.gate_proj, layer.mlp.up_proj, layer.mlp.down_proj]
    if not all(type(p) in (nn.Linear, Int4Linear) for p in parts):
        return "linear layers of an unknown kind"
    return None


def _fuse(linears: list[nn.Module]) -> nn.Module:
    """One module computing `cat([l(x) for l in linears], -1)`; the originals become views of it."""
    if all(type(layer) is nn.Linear for layer in linears):
        weight = torch.cat([layer.weight.data for layer in linears])  # (sum N, K)
        fused = nn.Linear(weight.shape[1], weight.shape[0], bias=False, device="meta")  # no init: replaced
        fused.weight = nn.Parameter(weight, requires_grad=False)
        start = 0
        for layer in linears:  # share storage: the model's own layers see the same numbers
            rows = layer.weight.shape[0]
            layer.weight.data = weight[start : start + rows]
            start += rows
        return fused
    if all(type(layer) is Int4Linear and layer.out_features % INT4_ROW_BLOCK == 0 for layer in linears):
        packed = torch.cat([layer.packed for layer in linears])  # whole blocks of rows: independent
        scales = torch.cat([layer.scales_and_zeros for layer in linears], dim=1)  # (K/G, sum N, 2)
        start = 0
        for layer in linears:
            layer.packed = packed[start : start + layer.out_features]
            start += layer.out_features
        return Int4Linear(packed, scales, linears[0].in_features, start)
    return _Concat(linears)


class _Concat(nn.Module):
    """Mixed kinds of linear layers: run them one by one."""

    def __init__(self, linears: list[nn.Module]) -> None:
        super().__init__()
        self.parts = nn.ModuleList(linears)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([part(x) for part in self.parts], -1)


def _rotation_matrix(head_dim: int, dtype, device) -> torch.Tensor:
    """`R` with `x @ R == cat(-x[half:], x[:half])`: transformers' `rotate_half` as one product."""
    half = head_dim // 2
    rotation = torch.zeros(head_dim, head_dim, dtype=dtype, device=device)
    index = torch.arange(half, device=device)
    rotation[index + half, index] = -1.0
    rotation[index, index + half] = 1.0
    return rotation


def _projection(linear: nn.Module, dtype=None) -> Callable[[torch.Tensor], torch.Tensor]:
    """A plain function computing `linear(x)` for 2-D `x`, without nn.Module's call overhead.

    int4 products compute in bfloat16; their output is cast to `dtype`, or left in bfloat16 when
    `dtype` is None (for a product that is only added into the residual stream, whose in-place
    add converts it at no extra cost).
    """
    if type(linear) is nn.Linear:
        weight = linear.weight
        return lambda x: F.linear(x, weight)
    if type(linear) is Int4Linear:
        packed, scales = linear.packed, linear.scales_and_zeros
        int4_mm = torch._weight_int4pack_mm_for_cpu
        if dtype is None:
            return lambda x: int4_mm(x.to(torch.bfloat16), packed, GROUP_SIZE, scales)
        return lambda x: int4_mm(x.to(torch.bfloat16), packed, GROUP_SIZE, scales).to(dtype)
    return linear


class LlamaDecoder(TokenCache):
    """Prefill and decode-one for a Llama-family model with our own KV buffers."""

    kind = "chatapp decoder"

    def __init__(self, model) -> None:
        """Prepare fused weights for `model` (check `unsupported_reason` first)."""
        super().__init__(model)
        config = model.config
        body = model.model
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.eps = config.rms_norm_eps
        self.max_length = getattr(config, "max_position_embeddings", None) or MIN_CAPACITY
        self.embed_weight = body.embed_tokens.weight
        self.dtype = self.embed_weight.dtype
        self.norm_weight = body.norm.weight
        self.rotary = body.rotary_emb
        self.rotation = _rotation_matrix(self.head_dim, self.dtype, self.device)
        self.intermediate = body.layers[0].mlp.down_proj.in_features
        self.layers = []
        for layer in body.layers:
            attn, mlp = layer.self_attn, layer.mlp
            self.layers.append((
                layer.input_layernorm.weight,
                _projection(_fuse([attn.q_proj, attn.k_proj, attn.v_proj]), self.dtype),
                _projection(attn.o_proj),
                layer.post_attention_layernorm.weight,
                _projection(_fuse([mlp.gate_proj, mlp.up_proj]), self.dtype),
                _projection(mlp.down_proj),
            ))
        self.reset()

    def reset(self) -> None:
        """Forget everything and free the KV buffers."""
        self.token_ids = []
        self.capacity = 0
        self.cache = None  # (layers, 2, kv_heads, capacity, head_dim): keys, values
        self.layer_caches: list[torch.Tensor] = []

    def keep(self, n: int) -> None:
        """Keep the first `n` tokens (the buffers beyond them are simply overwritten later)."""
        del self.token_ids[n:]

    def cache_bytes(self) -> int:
        """Memory held by the KV buffers."""
        return 0 if self.cache is None else self.cache.numel() * self.cache.element_size()

    def _reserve(self, length: int) -> None:
        if length <= self.capacity:
            return
        capacity = max(MIN_CAPACITY, self.capacity)
        while capacity < length:
            capacity *= 2
        capacity = max(length, min(capacity, self.max_length))  # never beyond the context window
        shape = (len(self.layers), 2, self.kv_heads, capacity, self.head_dim)
        cache = torch.empty(shape, dtype=self.dtype, device=self.device)
        held = len(self.token_ids)
        if self.cache is not None and held:
            cache[..., :held, :] = self.cache[..., :held, :]
        self.cache, self.capacity = cache, capacity
        self.layer_caches = list(cache.unbind(0))  # (2, kv_heads, capacity, head_dim) each

    def _rotary_tables(self, x: torch.Tensor, start: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin `(T, heads + 2 kv_heads, head_dim)`: rotate q and k, leave v alone."""
        positions = torch.arange(start, start + count, device=self.device).unsqueeze(0)  # (1, T)
        cos, sin = self.rotary(x, positions)  # (1, T, head_dim) each, from the model's own module
        rotated = self.heads + self.kv_heads
        shape = (count, rotated + self.kv_heads, self.head_dim)
        cos_table = torch.ones(shape, dtype=x.dtype, device=self.device)
        sin_table = torch.zeros(shape, dtype=x.dtype, device=self.device)
        cos_table[:, :rotated] = cos.transpose(0, 1)
        sin_table[:, :rotated] = sin.transpose(0, 1)
        return cos_table, sin_table

    def _forward(self, input_ids: torch.Tensor, ids: list[int]) -> torch.Tensor:
        start, count = len(self.token_ids), len(ids)
        end = start + count
        self._reserve(end)
        heads, kv_heads, head_dim = self.heads, self.kv_heads, self.head_dim
        q_width = heads * head_dim
        x = F.embedding(input_ids[0], self.embed_weight)  # (T, d_model), a fresh tensor we may add into
        cos, sin = self._rotary_tables(x, start, count)
        mask = None
        causal = count > 1 and start == 0
        if count > 1 and start > 0:  # the new tokens see the whole cache and each other causally
            rows = torch.arange(start, end, device=self.device).unsqueeze(1)
            mask = torch.arange(end, device=self.device).unsqueeze(0) <= rows  # (T, end)
        shape, eps, rotation, split = (x.shape[-1],), self.eps, self.rotation, self.intermediate
        for (norm1, qkv_proj, o_proj, norm2, gate_up_proj, down_proj), cache in zip(self.layers, self.layer_caches):
            qkv = qkv_proj(F.rms_norm(x, shape, norm1, eps)).view(count, -1, head_dim)  # (T, H + 2 KVH, hd)
            qkv = torch.addcmul(qkv * cos, qkv @ rotation, sin)  # rotary embeddings on q and k
            cache[:, :, start:end] = qkv[:, heads:].view(count, 2, kv_heads, head_dim).permute(1, 2, 0, 3)
            attended = F.scaled_dot_product_attention(
                qkv[:, :heads].transpose(0, 1).unsqueeze(0),  # (1, H, T, hd)
                cache[0:1, :, :end],  # keys (1, KVH, end, hd)
                cache[1:2, :, :end],  # values
                attn_mask=mask,
                is_causal=causal,
                enable_gqa=heads != kv_heads,
            )  # (1, H, T, hd)
            x.add_(o_proj(attended[0].transpose(0, 1).reshape(count, q_width)))
            gate, up = gate_up_proj(F.rms_norm(x, shape, norm2, eps)).split(split, -1)  # (T, I) each
            x.add_(down_proj(F.silu(gate) * up))
        self.token_ids.extend(ids)
        return F.rms_norm(x[-1], shape, self.norm_weight, eps)  # (d_model,)

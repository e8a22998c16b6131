"""One decoder for the architectures people run, built from a description of their layers.

Llama, Mistral, Qwen2, Qwen3, Phi-3, Gemma 2 and Gemma 3 differ in a handful of choices per layer, which
`LayerPlan` reads from the model's own config and modules: q/k/v as one product or three, norms
on q and k, norms after attention and the MLP as well as before ("sandwich" norms), a sliding
window, soft-capped attention logits, the attention scale, and which rotary table a layer uses.
`LayeredDecoder` runs any such layer with the model's own modules for what they compute (norms
with their offsets, projections, whatever their weights are: float, `BlockLinear`; the MLP and
its activation; the rotary tables and their application) and its own KV buffers, masks and
attention for the rest. transformers' per-call machinery (cache objects, mask builders,
attention dispatch, output records) was about half of a Gemma 3 270M decode step.

Models it does not describe run through transformers' modules (`transformers_decoder`);
`plan_reason` says why.
"""

from __future__ import annotations

import inspect
import math
import sys
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from chatapp.runtime.block_linear import BlockEmbedding, BlockLinear, fuse_block_linears
from chatapp.runtime.kernel_switch import requantize_in_background
from chatapp.runtime.decoder import Decoder, grown_capacity
from chatapp.runtime.layer_fusion import FusedNorm, fuse_mlp, fuse_norm
from chatapp.runtime.layer_step import NativeLayers
from chatapp.runtime.llama_decoder import rotation_matrix
from chatapp.runtime.requantized_head import RequantizedHead, requantizable
from chatapp.support.memory import return_freed_memory

MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "phi3", "gemma2", "gemma3_text")
"""Architectures whose layers `LayerPlan` describes."""
CONFIG_WINDOWS = ("mistral", "phi3")
"""Architectures whose sliding window is the config's, for every layer (the others name it on
each layer's attention module: `chatapp.loading.plain_model.LAYER_TYPE_WINDOWS`)."""
MIN_CAPACITY = 256
"""Tokens the KV buffers hold at first; they double when full."""
NORM_NAMES = ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
              "post_feedforward_layernorm", "q_norm", "k_norm")
"""The norms a layer (or its attention) may have, as transformers names them."""


@dataclass(frozen=True)
class LayerPlan:
    """What one decoder layer does, beyond its modules."""

    fused_qkv: bool
    """q, k and v come from one product (`qkv_proj`, Phi-3)."""
    qk_norm: bool
    """q and k are normed per head before the rotary embedding (Qwen3, Gemma 3)."""
    sandwich: bool
    """Norms after attention and after the MLP too (Gemma 2/3), not only before each."""
    window: int | None
    """A sliding window: each position attends to this many positions up to itself."""
    softcap: float | None
    """Attention logits become `tanh(s / softcap) * softcap` (Gemma 2)."""
    scaling: float
    """Attention logits' scale."""
    rotary_kind: str | None
    """The layer type the model's rotary module takes for this layer (Gemma 3: local or global
    tables), or None when it has one table."""


def _model_type(model) -> str:
    return getattr(model.config, "model_type", "")


def plan_reason(model) -> str | None:
    """Why `model` is not one `LayeredDecoder` runs, or None."""
    if _model_type(model) not in MODEL_TYPES:
        return f"architecture {_model_type(model)!r}"
    if getattr(model.config, "use_bidirectional_attention", False):
        return "bidirectional attention"
    device_map = getattr(model, "hf_device_map", None)
    if device_map and len(set(device_map.values())) > 1:
        return "layers spread over several devices"
    body = getattr(model, "model", None)
    if body is None or not all(hasattr(body, name) for name in ("embed_tokens", "layers", "norm", "rotary_emb")):
        return "an unknown module layout"
    for layer in body.layers:
        attn = getattr(layer, "self_attn", None)
        if attn is None or not hasattr(attn, "o_proj") or not hasattr(layer, "mlp"):
            return "an unknown layer layout"
        if not (hasattr(attn, "qkv_proj") or all(hasattr(attn, n) for n in ("q_proj", "k_proj", "v_proj"))):
            return "an unknown attention layout"
        if not hasattr(attn, "scaling") or not hasattr(layer, "input_layernorm"):
            return "an unknown attention layout"
    return None


def plan_layer(layer, config, takes_kind: bool) -> LayerPlan:
    attn = layer.self_attn
    kind = None
    if takes_kind:
        kind = getattr(attn, "layer_type", None) or config.layer_types[attn.layer_idx]
    return LayerPlan(
        fused_qkv=hasattr(attn, "qkv_proj"),
        qk_norm=hasattr(attn, "q_norm") and hasattr(attn, "k_norm"),
        sandwich=hasattr(layer, "pre_feedforward_layernorm"),
        window=(getattr(config, "sliding_window", None) if config.model_type in CONFIG_WINDOWS
                else getattr(attn, "sliding_window", None)) or None,
        softcap=getattr(attn, "attn_logit_softcapping", None) or None,
        scaling=float(attn.scaling),
        rotary_kind=kind,
    )


NO_BIAS = torch.empty(0)


class LayeredDecoder(Decoder):
    """Prefill and decode-one over the model's own modules and chatapp's KV buffers."""

    kind = "chatapp layered decoder"

    def __init__(self, model) -> None:
        """Describe `model`'s layers (check `plan_reason` first)."""
        super().__init__(model)
        body = model.model
        config = model.config
        self.embed, self.layers, self.norm, self.rotary = body.embed_tokens, body.layers, body.norm, body.rotary_emb
        takes_kind = "layer_type" in inspect.signature(self.rotary.forward).parameters
        self.plans = [plan_layer(layer, config, takes_kind) for layer in self.layers]
        self.norms = [{name: fuse_norm(getattr(module, name)) for module in (layer, layer.self_attn)
                       for name in NORM_NAMES if hasattr(module, name)} for layer in self.layers]
        self.final_norm = fuse_norm(self.norm)
        self.qkv, self.gate_up = [], []
        for layer, plan in zip(self.layers, self.plans):
            attn = layer.self_attn
            self.qkv.append(None if plan.fused_qkv else fuse_block_linears([attn.q_proj, attn.k_proj, attn.v_proj]))
            self.gate_up.append(fuse_mlp(layer.mlp))
            if self.qkv[-1] is not None or self.gate_up[-1] is not None:
                # The weights the fused copies replaced, a layer at a time: the heap kept the freed
                # holes, which the next, larger copies cannot reuse (Gemma 3 270M: 60 MiB at the peak).
                return_freed_memory()
        first = self.layers[0].self_attn
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.head_dim = int(getattr(first, "head_dim", None) or config.hidden_size // self.heads)
        self.apply_rotary = sys.modules[type(first).__module__].apply_rotary_pos_emb
        self.max_length = getattr(config, "max_position_embeddings", None) or MIN_CAPACITY
        self.dtype = next(p for p in model.parameters()).dtype
        self.rotation = rotation_matrix(self.head_dim, self.dtype, self.device)
        native = NativeLayers.of(self) if self.device.type == "cpu" else "not on the CPU"
        self.native, self.native_reason = (None, native) if isinstance(native, str) else (native, None)
        if self.native is not None:
            self.kind = "chatapp layered decoder, one native call a step"
        head = model.get_output_embeddings()
        if self.native is not None and requantizable(head):
            head = RequantizedHead(head, wait=True)  # the kernel is built: ready in under a second
            model.set_output_embeddings(head)
            requantize_in_background(head)
        if isinstance(head, RequantizedHead):
            self.kind = f"chatapp layered decoder, layers in one native call a step, LM head 4-bit + exact top {head.exact_top}"
        self.reset()

    def reset(self) -> None:
        """Forget everything and free the KV buffers."""
        self.token_ids = []
        self.capacity = 0
        self.caches: list[torch.Tensor] = []  # (2, kv_heads, capacity, head_dim) a layer

    def keep(self, n: int) -> None:
        """Keep the first `n` tokens (the buffers beyond them are simply overwritten later)."""
        del self.token_ids[n:]

    def cache_bytes(self) -> int:
        return sum(cache.numel() * cache.element_size() for cache in self.caches)

    def _reserve(self, length: int) -> None:
        if length <= self.capacity:
            return
        capacity = grown_capacity(self.capacity, length, self.max_length, MIN_CAPACITY)
        held = len(self.token_ids)
        caches = []
        for old in self.caches or [None] * len(self.layers):
            cache = torch.empty(2, self.kv_heads, capacity, self.head_dim, dtype=self.dtype, device=self.device)
            if old is not None and held:
                cache[:, :, :held] = old[:, :, :held]
            caches.append(cache)
        self.caches, self.capacity = caches, capacity

    def _run(self, input_ids: torch.Tensor, ids: list[int], every_layer: bool) -> list[torch.Tensor]:
        start, count = len(self.token_ids), len(ids)
        end = start + count
        self._reserve(end)
        x = self.embed(input_ids)  # (1, T, d_model)
        if count == 1 and self.native is not None:
            outputs = self.native.step(self, x, self.caches, start)  # (layers, d_model)
            self.token_ids.extend(ids)
            return list(outputs) if every_layer else [outputs[-1]]
        positions = torch.arange(start, end, device=self.device).unsqueeze(0)  # (1, T)
        tables: dict = {}
        outputs = []
        for layer, plan, norms, cache in zip(self.layers, self.plans, self.norms, self.caches):
            if plan.rotary_kind not in tables:
                tables[plan.rotary_kind] = (self.rotary(x, positions, plan.rotary_kind) if plan.rotary_kind
                                            else self.rotary(x, positions))
            x = self._layer(layer, plan, norms, cache, x, tables[plan.rotary_kind], start, end)
            if every_layer:
                outputs.append(x[0, -1])
        self.token_ids.extend(ids)
        return outputs if every_layer else [x[0, -1]]

    @torch.inference_mode()
    def decode_choosing(self, token_id: int, head, choice: tuple) -> tuple[torch.Tensor, ...] | None:
        """`decode_one(token_id)` and the LM head `head`'s choice of the next token, in one call of
        the block kernel (`decode_step`), or with a `RequantizedHead` whose 4-bit copy is ready, in
        two: the block kernel's step up to the context vector, then the int4 kernel's
        `choose_from_head`. None, having run nothing, unless the layers run as one native call and
        the embedding and `head` are the file's blocks on the kernel (and the logits are
        transformed, if at all, by a final soft-cap). Arguments and answer as
        `LlamaDecoder.decode_choosing`'s."""
        native, embed, config = self.native, self.embed, self.model.config
        four_bit = head.four_bit() if isinstance(head, RequantizedHead) else None
        blocks = head.blocks if isinstance(head, RequantizedHead) else head
        if (native is None or not isinstance(embed, BlockEmbedding) or embed.kernel is None or embed.dtype != torch.float32
                or type(blocks) is not BlockLinear or blocks.kernel is None or not isinstance(self.final_norm, FusedNorm)
                or getattr(config, "logits_scaling", None) or getattr(config, "logit_scale", None)):
            return None
        start = len(self.token_ids)
        self._reserve(start + 1)
        cos, sin = native.tables_at(self, start)
        rows, weights = embed.weights, blocks.weights
        bias = NO_BIAS if blocks.bias is None else blocks.bias.detach().float().contiguous()
        softcap = getattr(config, "final_logit_softcapping", None) or 0.0
        answer = native.kernel.decode_step(
            token_id, [rows.codes, rows.scale, rows.low], [rows.bits, rows.block], embed.scale or 0.0, cos, sin,
            native.tensors, native.ints, native.floats, self.caches, start, native.heads, native.kv_heads, native.act,
            self.final_norm.doubled, self.final_norm.eps, [] if four_bit is not None else [weights.codes, weights.scale, weights.low, bias],
            [weights.bits, weights.block], softcap, *choice,
        )
        self.token_ids.append(token_id)
        if four_bit is not None:
            hidden = answer[3]
            answer = (*torch.ops.chatapp.choose_from_head(
                hidden, list(four_bit), head.vocab_rows, head.exact_top, head.exact_ids,
                [weights.codes, weights.scale, weights.low], [weights.bits, weights.block], softcap, *choice), hidden)
        return answer

    def _forward(self, input_ids: torch.Tensor, ids: list[int]) -> torch.Tensor:
        return self.final_norm(self._run(input_ids, ids, False)[0])

    def _forward_layers(self, input_ids: torch.Tensor, ids: list[int]) -> torch.Tensor:
        return self.final_norm(torch.stack(self._run(input_ids, ids, True)))  # (layers, d_model)

    def _layer(self, layer, plan: LayerPlan, norms: dict, cache: torch.Tensor, x: torch.Tensor, table, start: int,
               end: int) -> torch.Tensor:
        """One decoder layer on `x` `(1, T, d_model)` at positions `start..end`; `norms` are the
        layer's norms by name (`fuse_norm`'s)."""
        count = end - start
        attn = layer.self_attn
        h = norms["input_layernorm"](x)
        fused = attn.qkv_proj if plan.fused_qkv else self.qkv[attn.layer_idx]
        if fused is not None:
            q, k, v = fused(h).split([self.heads * self.head_dim, self.kv_heads * self.head_dim,
                                      self.kv_heads * self.head_dim], dim=-1)
        else:
            q, k, v = attn.q_proj(h), attn.k_proj(h), attn.v_proj(h)
        q = q.view(1, count, self.heads, self.head_dim).transpose(1, 2)  # (1, H, T, hd)
        k = k.view(1, count, self.kv_heads, self.head_dim).transpose(1, 2)  # (1, KVH, T, hd)
        v = v.view(1, count, self.kv_heads, self.head_dim).transpose(1, 2)
        if plan.qk_norm:
            q, k = norms["q_norm"](q), norms["k_norm"](k)
        q, k = self._rotate(q, k, *table)
        cache[0, :, start:end] = k[0]
        cache[1, :, start:end] = v[0]
        first = 0 if plan.window is None else max(0, start - plan.window + 1)
        keys, values = cache[0:1, :, first:end], cache[1:2, :, first:end]  # (1, KVH, S, hd)
        mask = self._mask(start, end, first, plan.window) if count > 1 else None
        attended = self._attention(q, keys, values, mask, plan)  # (1, H, T, hd)
        out = attn.o_proj(attended.transpose(1, 2).reshape(1, count, self.heads * self.head_dim))
        mlp = self._mlp(layer, attn.layer_idx)
        if plan.sandwich:
            x = x + norms["post_attention_layernorm"](out)
            return x + norms["post_feedforward_layernorm"](mlp(norms["pre_feedforward_layernorm"](x)))
        x = x + out
        return x + mlp(norms["post_attention_layernorm"](x))

    def _mlp(self, layer, index: int):
        """The layer's MLP: the model's own module, or gate and up as one product (`fuse_mlp`)."""
        gate_up = self.gate_up[index]
        if gate_up is None:
            return layer.mlp
        mlp = layer.mlp

        def run(h: torch.Tensor) -> torch.Tensor:
            gate, up = gate_up(h).chunk(2, dim=-1)
            return mlp.down_proj(mlp.act_fn(gate) * up)

        return run

    def _rotate(self, q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        """The rotary embedding on q and k: the model's own formula, `x * cos + rotate_half(x) *
        sin`, for q and k together with `rotate_half` as one product (three operations instead
        of about twenty); a partial rotary embedding (Phi-3's kind) goes to the model's own
        function."""
        if cos.shape[-1] != self.head_dim:
            return self.apply_rotary(q, k, cos, sin)
        both = torch.cat([q, k], dim=1)  # (1, H + KVH, T, hd)
        both = torch.addcmul(both * cos.unsqueeze(1), both @ self.rotation, sin.unsqueeze(1))
        return both[:, :self.heads], both[:, self.heads:]

    def _mask(self, start: int, end: int, first: int, window: int | None) -> torch.Tensor:
        """`(T, S)` True where query position `start + i` may attend to key position `first + j`:
        not after itself, and within the window."""
        queries = torch.arange(start, end, device=self.device).unsqueeze(1)
        keys = torch.arange(first, end, device=self.device).unsqueeze(0)
        allowed = keys <= queries
        if window is not None:
            allowed &= queries - keys < window
        return allowed

    def _attention(self, q, keys, values, mask, plan: LayerPlan) -> torch.Tensor:
        if plan.softcap is None:
            return F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=plan.scaling,
                                                  enable_gqa=self.heads != self.kv_heads)
        groups = self.heads // self.kv_heads  # soft-capped: the eager formula, as transformers runs it
        keys, values = keys.repeat_interleave(groups, dim=1), values.repeat_interleave(groups, dim=1)
        scores = torch.matmul(q, keys.transpose(2, 3)) * plan.scaling
        scores = torch.tanh(scores / plan.softcap) * plan.softcap
        if mask is not None:
            scores = scores.masked_fill(~mask, -math.inf)
        weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
        return torch.matmul(weights, values)

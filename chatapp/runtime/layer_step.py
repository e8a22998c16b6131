"""A whole decode step of `LayeredDecoder`'s layers in one native call.

`NativeLayers.of(decoder)` describes the decoder's layers the way the block kernel's
`decode_layers` (`kernels/layer_step.cpp`) reads them, or says why it cannot (`reason`): every
linear weight must be a `BlockLinear` or a float32 `nn.Linear`, every norm one `FusedNorm`
computes, the MLP `down(act(gate) * up)` with an activation the kernel has, and the rotary
embedding over whole heads. Each of those is checked on the model's own modules (a probe), as
the decoder's fusions are. The step then runs with the model's own rotary tables for its
position, computed in torch.

The native step computes what the decoder's torch operations compute, in float32, in a
different order of sums (`tests/test_layer_step.py` holds them within 1e-5). On a Gemma 3 270M
file its 18 layers went from about 40 torch operations each to one call for all. The same
kernel's `decode_step` runs the whole step, LM head and choice included
(`LayeredDecoder.decode_choosing`); the rotary tables are made for 64 positions at a time
(`tables_at`).
"""

from __future__ import annotations

import torch
from torch import nn

from chatapp.runtime import block_kernel
from chatapp.runtime.block_linear import BlockLinear
from chatapp.runtime.layer_fusion import mlp_activation

NORM_ORDER = ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
              "post_feedforward_layernorm", "q_norm", "k_norm")
"""The kernel's six norm slots, by transformers' names."""

_EMPTY = torch.empty(0)
TABLE_POSITIONS = 64
"""Positions whose rotary tables `NativeLayers.tables_at` makes at a time."""


def _linear_slot(module) -> tuple[list[torch.Tensor], int, int] | None:
    """A linear layer as the kernel's four tensors, bits and block size; None if it is neither
    block codes nor float32."""
    if module is None:
        return [_EMPTY] * 4, 0, 0
    if type(module) is BlockLinear:
        w = module.weights
        bias = _EMPTY if module.bias is None else module.bias.detach().float().contiguous()
        return [w.codes, w.scale, w.low, bias], w.bits, w.block
    weight = getattr(module, "weight", None)
    if hasattr(module, "_hf_hook") or weight is None or weight.device.type != "cpu":
        return None  # weights that accelerate moves in and out (offloaded), or not in this memory
    if type(module) is nn.Linear and weight.dtype == torch.float32:
        bias = _EMPTY if module.bias is None else module.bias.detach().contiguous()
        return [module.weight.detach().contiguous(), _EMPTY, _EMPTY, bias], 32, 0
    return None


def _mlp_slots(decoder, layer) -> list | None:
    """gate|up as the decoder runs them: one fused product, two, or the model's own fused one."""
    mlp = layer.mlp
    fused = decoder.gate_up[layer.self_attn.layer_idx]
    if fused is not None:
        return [fused, None]
    if hasattr(mlp, "gate_proj") and hasattr(mlp, "up_proj"):
        return [mlp.gate_proj, mlp.up_proj]
    if hasattr(mlp, "gate_up_proj"):  # Phi-3
        return [mlp.gate_up_proj, None]
    return None


class NativeLayers:
    """The decoder's layers as `decode_layers` takes them."""

    def __init__(self, kernel, tensors: list, ints: list[int], floats: list[float], kinds: list, act: int,
                 heads: int, kv_heads: int) -> None:
        self.kernel, self.tensors, self.ints, self.floats = kernel, tensors, ints, floats
        self.kinds, self.act, self.heads, self.kv_heads = kinds, act, heads, kv_heads

    @classmethod
    def of(cls, decoder) -> "NativeLayers | str":
        """The description of `decoder`'s layers, or why there is none."""
        kernel = block_kernel.ops()
        if kernel is None:
            return "no block kernel"
        if decoder.dtype != torch.float32:
            return f"{decoder.dtype} weights"
        tensors, ints, floats, kinds = [], [], [], []
        act = None
        for index, (layer, plan, norms) in enumerate(zip(decoder.layers, decoder.plans, decoder.norms)):
            attn = layer.self_attn
            eps = []
            for name in NORM_ORDER:
                norm = norms.get(name)
                if name == "post_feedforward_layernorm" and not plan.sandwich:
                    norm = None
                if norm is not None and not hasattr(norm, "weight_vector"):
                    return f"norm {name} is not an RMS norm the kernel computes"
                if norm is not None and norm.weight_vector.device.type != "cpu":
                    return f"norm {name}'s weight is not in this memory"
                if norm is not None and name in ("q_norm", "k_norm") and norm.weight_vector.numel() != decoder.head_dim:
                    return f"{name} spans more than a head"
                tensors.append(_EMPTY if norm is None else norm.weight_vector)
                eps.append(0.0 if norm is None else norm.eps)
            if plan.fused_qkv:
                qkv = [attn.qkv_proj, None, None]
            elif decoder.qkv[index] is not None:
                qkv = [decoder.qkv[index], None, None]
            else:
                qkv = [attn.q_proj, attn.k_proj, attn.v_proj]
            gate_up = _mlp_slots(decoder, layer)
            if gate_up is None or not hasattr(layer.mlp, "down_proj"):
                return "an unknown MLP layout"
            layer_act = mlp_activation(layer.mlp, gate_up, layer.mlp.down_proj)
            if layer_act is None or (act is not None and layer_act != act):
                return "an MLP activation the kernel does not compute"
            act = layer_act
            for module in [*qkv, attn.o_proj, *gate_up, layer.mlp.down_proj]:
                slot = _linear_slot(module)
                if slot is None:
                    return f"weights of type {type(module).__name__}"
                tensors.extend(slot[0])
                ints.extend(slot[1:])
            if plan.rotary_kind not in kinds:
                kinds.append(plan.rotary_kind)
            ints.extend([plan.window or 0, kinds.index(plan.rotary_kind)])
            floats.extend([*eps, plan.softcap or 0.0, plan.scaling])
        native = cls(kernel, tensors, ints, floats, kinds, act, decoder.heads, decoder.kv_heads)
        cos, _ = native.tables(decoder, torch.zeros(1, 1, decoder.layers[0].self_attn.o_proj.out_features), 0)
        if cos.shape[-1] != decoder.head_dim:
            return "a partial rotary embedding"
        return native

    def tables(self, decoder, x: torch.Tensor, position: int, count: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """The model's rotary tables at positions `position..position + count`, a row a kind:
        cos and sin `(count, kinds, head_dim)` (each number computed alone, as at one position)."""
        positions = torch.arange(position, position + count, device=x.device).unsqueeze(0)  # (1, count)
        pairs = [decoder.rotary(x, positions, kind) if kind else decoder.rotary(x, positions) for kind in self.kinds]
        return (torch.stack([cos.reshape(count, -1) for cos, _ in pairs], 1).float().contiguous(),
                torch.stack([sin.reshape(count, -1) for _, sin in pairs], 1).float().contiguous())

    _table_rows: tuple[int, torch.Tensor, torch.Tensor] | None = None

    def tables_at(self, decoder, position: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The rotary tables at `position` `(kinds, head_dim)`, from tables made for
        `TABLE_POSITIONS` positions at a time (a decode step then runs no torch operation for
        them; Gemma 3 270M's for 64 positions take 256 KiB)."""
        rows = self._table_rows
        if rows is None or not rows[0] <= position < rows[0] + rows[1].shape[0]:
            probe = torch.zeros(1, 1, decoder.layers[0].self_attn.o_proj.out_features)
            rows = self._table_rows = (position, *self.tables(decoder, probe, position, TABLE_POSITIONS))
        return rows[1][position - rows[0]], rows[2][position - rows[0]]

    def step(self, decoder, x: torch.Tensor, caches: list[torch.Tensor], position: int) -> torch.Tensor:
        """Run the embedded token `x` `(1, 1, d_model)` at `position` through every layer, writing
        its keys and values into `caches`; every layer's output `(layers, d_model)`."""
        cos, sin = self.tables_at(decoder, position)
        return self.kernel.decode_layers(x.reshape(-1).float().contiguous(), cos, sin, self.tensors, self.ints,
                                         self.floats, caches, position, self.heads, self.kv_heads, self.act)

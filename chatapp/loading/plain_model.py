"""The common architectures' module trees as plain torch modules, for a GGUF file read natively.

Importing transformers' model code to build a skeleton costs about 130 MiB that stay resident
(it brings scipy, sympy, torch._dynamo and torch.distributed along) and a second or two. Yet
chatapp never calls a transformers forward on a natively read GGUF model:
`chatapp.runtime.layered_decoder.LayeredDecoder` runs its layers and `chatapp.lm_head` its head.
So `build_plain_model` builds, for Llama, Mistral, Qwen2, Qwen3, Phi-3, Gemma 2 and Gemma 3
(text), the module tree transformers builds, with the same names (the file's tensors map onto
it as onto transformers') and its parameters on the meta device, out of modules that compute
what transformers' modules compute: RMS norms (Gemma's with one plus the weight), gated MLPs
with the config's activation, Gemma's scaled embedding and the rotary tables (transformers' own
rope-parameter functions and update rule, `transformers.modeling_rope_utils`, a light import).
A config it does not reproduce gives None: the caller then builds transformers' skeleton. The
tests hold every architecture's native load to transformers' own GGUF loading.
"""

from __future__ import annotations

import logging
from types import SimpleNamespace

import torch
from torch import nn
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS, dynamic_rope_update  # light: no model code

log = logging.getLogger(__name__)

PLAIN_TYPES = ("llama", "mistral", "qwen2", "qwen3", "phi3", "gemma2", "gemma3_text")
"""Architectures `build_plain_model` builds."""
GEMMA_TYPES = ("gemma2", "gemma3_text")
"""Norms with one plus the weight, sandwich norms, a scaled embedding, `query_pre_attn_scalar`."""
LAYER_TYPE_WINDOWS = ("qwen2", "qwen3", "gemma2", "gemma3_text")
"""Architectures whose attention names its layer type and, on sliding layers, the window."""
QK_NORM_TYPES = ("qwen3", "gemma3_text")
"""Architectures with norms on q and k."""
ACTIVATIONS = {
    "silu": nn.SiLU,
    "swish": nn.SiLU,
    "gelu": nn.GELU,
    "gelu_pytorch_tanh": lambda: nn.GELU(approximate="tanh"),
}
"""transformers' activation names (`ACT2FN`) this module reproduces, and torch's module for each."""


class RMSNorm(nn.Module):
    """transformers' RMS norm: in float32, times the weight (Llama's way, after casting back) or
    times one plus the weight (Gemma's, before casting back)."""

    def __init__(self, size: int, eps: float, plus_one: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(size, device="meta"), requires_grad=False)
        self.eps = eps
        self.plus_one = plus_one

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normed = x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.eps)
        if self.plus_one:
            return (normed * (1.0 + self.weight.float())).type_as(x)
        return self.weight * normed.to(x.dtype)


class ScaledEmbedding(nn.Embedding):
    """Gemma's embedding: the rows times `embed_scale` (a float32 scalar, as transformers keeps it)."""

    def __init__(self, rows: int, width: int, scale: float) -> None:
        super().__init__(rows, width, _weight=torch.empty(rows, width, device="meta"), _freeze=True)
        self.register_buffer("embed_scale", torch.tensor(scale), persistent=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return super().forward(ids) * self.embed_scale.to(self.weight.dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim: int = 1):
    """transformers' rotary embedding on q and k, over the first `cos.shape[-1]` dimensions
    (all of them, or Phi-3's partial share)."""
    cos, sin = cos.unsqueeze(unsqueeze_dim), sin.unsqueeze(unsqueeze_dim)
    dim = cos.shape[-1]
    q_rot, q_pass, k_rot, k_pass = q[..., :dim], q[..., dim:], k[..., :dim], k[..., dim:]
    q_embed = torch.cat([(q_rot * cos) + (rotate_half(q_rot) * sin), q_pass], dim=-1)
    k_embed = torch.cat([(k_rot * cos) + (rotate_half(k_rot) * sin), k_pass], dim=-1)
    return q_embed, k_embed


def _head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def _default_inv_freq(config, parameters: dict) -> tuple[torch.Tensor, float]:
    """transformers' default rotary frequencies (Phi-3's over its partial share of a head)."""
    dim = int(_head_dim(config) * parameters.get("partial_rotary_factor", 1.0))
    base = parameters["rope_theta"]
    return 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float) / dim)), 1.0


def _inv_freq(config, parameters: dict, layer_type: str | None) -> tuple[torch.Tensor, float]:
    if parameters["rope_type"] == "default":
        return _default_inv_freq(config, parameters)
    kwargs = {"layer_type": layer_type} if layer_type is not None else {}
    return ROPE_INIT_FUNCTIONS[parameters["rope_type"]](config, None, **kwargs)


def _cos_sin(x, position_ids, inv_freq, scaling):
    freqs = position_ids[..., None].float() * inv_freq.to(device=x.device, dtype=torch.float)
    emb = torch.cat((freqs, freqs), dim=-1)
    return (emb.cos() * scaling).to(dtype=x.dtype), (emb.sin() * scaling).to(dtype=x.dtype)


class RotaryEmbedding(nn.Module):
    """One rotary table for every layer, as transformers' rotary embedding computes it (its
    update rule for the dynamic and long kinds, `dynamic_rope_update`, included)."""

    def __init__(self, config) -> None:
        super().__init__()
        self.config = config
        self.max_seq_len_cached = self.original_max_seq_len = config.max_position_embeddings
        self.rope_type = config.rope_parameters["rope_type"]
        inv_freq, self.attention_scaling = _inv_freq(config, config.rope_parameters, None)
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.register_buffer("original_inv_freq", inv_freq.clone(), persistent=False)

    @dynamic_rope_update
    def forward(self, x, position_ids):
        return _cos_sin(x, position_ids, self.inv_freq, self.attention_scaling)


class LayerTypeRotaryEmbedding(nn.Module):
    """A rotary table per layer type (Gemma 3: local and global), as transformers computes them."""

    def __init__(self, config) -> None:
        super().__init__()
        self.config = config
        self.max_seq_len_cached = self.original_max_seq_len = config.max_position_embeddings
        self.rope_type = {}
        for layer_type in sorted(set(config.layer_types)):
            parameters = config.rope_parameters[layer_type]
            if parameters is None:
                continue
            self.rope_type[layer_type] = parameters["rope_type"]
            inv_freq, scaling = _inv_freq(config, parameters, layer_type)
            self.register_buffer(f"{layer_type}_inv_freq", inv_freq, persistent=False)
            self.register_buffer(f"{layer_type}_original_inv_freq", inv_freq.clone(), persistent=False)
            setattr(self, f"{layer_type}_attention_scaling", scaling)

    @dynamic_rope_update
    def forward(self, x, position_ids, layer_type):
        return _cos_sin(x, position_ids, getattr(self, f"{layer_type}_inv_freq"),
                        getattr(self, f"{layer_type}_attention_scaling"))


def _linear(inputs: int, outputs: int, bias: bool) -> nn.Linear:
    """An `nn.Linear` with meta parameters, made without its initialization (which on meta tensors
    imports torch._dynamo, about 60 MiB)."""
    linear = nn.Linear.__new__(nn.Linear)
    nn.Module.__init__(linear)
    linear.in_features, linear.out_features = inputs, outputs
    linear.weight = nn.Parameter(torch.empty(outputs, inputs, device="meta"), requires_grad=False)
    linear.bias = nn.Parameter(torch.empty(outputs, device="meta"), requires_grad=False) if bias else None
    return linear


def _embedding(rows: int, width: int) -> nn.Embedding:
    """An `nn.Embedding` with a meta weight, uninitialized (see `_linear`)."""
    return nn.Embedding(rows, width, _weight=torch.empty(rows, width, device="meta"), _freeze=True)


class Attention(nn.Module):
    """A layer's attention projections, norms and facts, named as transformers names them
    (`LayeredDecoder` computes the attention itself)."""

    def __init__(self, config, index: int) -> None:
        super().__init__()
        kind, width = config.model_type, config.hidden_size
        heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.layer_idx = index
        self.head_dim = head_dim = _head_dim(config)
        if kind in GEMMA_TYPES:
            self.scaling = config.query_pre_attn_scalar ** -0.5
            self.attn_logit_softcapping = config.attn_logit_softcapping
        else:
            self.scaling = head_dim ** -0.5
        if kind in LAYER_TYPE_WINDOWS:
            self.layer_type = config.layer_types[index] if hasattr(config, "layer_types") else None
            self.sliding_window = config.sliding_window if self.layer_type == "sliding_attention" else None
        bias = {"qwen2": True, "mistral": False, "phi3": False}.get(kind, getattr(config, "attention_bias", False))
        if kind == "phi3":
            self.qkv_proj = _linear(width, (heads + 2 * kv_heads) * head_dim, False)
        else:
            self.q_proj = _linear(width, heads * head_dim, bias)
            self.k_proj = _linear(width, kv_heads * head_dim, bias)
            self.v_proj = _linear(width, kv_heads * head_dim, bias)
        self.o_proj = _linear(heads * head_dim, width, bias and kind != "qwen2")
        if kind in QK_NORM_TYPES:
            self.q_norm = RMSNorm(head_dim, config.rms_norm_eps, kind in GEMMA_TYPES)
            self.k_norm = RMSNorm(head_dim, config.rms_norm_eps, kind in GEMMA_TYPES)


class GatedMLP(nn.Module):
    """`down(act(gate(x)) * up(x))`, with gate and up as two products or, Phi-3's way, one."""

    def __init__(self, config, activation: type) -> None:
        super().__init__()
        width, inner = config.hidden_size, config.intermediate_size
        bias = getattr(config, "mlp_bias", False) if config.model_type == "llama" else False
        if config.model_type == "phi3":
            self.gate_up_proj = _linear(width, 2 * inner, False)
            self.activation_fn = activation()
        else:
            self.gate_proj = _linear(width, inner, bias)
            self.up_proj = _linear(width, inner, bias)
            self.act_fn = activation()
        self.down_proj = _linear(inner, width, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "gate_up_proj"):
            gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
            return self.down_proj(up * self.activation_fn(gate))
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, config, index: int, activation: type) -> None:
        super().__init__()
        gemma = config.model_type in GEMMA_TYPES
        self.self_attn = Attention(config, index)
        self.mlp = GatedMLP(config, activation)
        names = ["input_layernorm", "post_attention_layernorm"]
        if gemma:
            names += ["pre_feedforward_layernorm", "post_feedforward_layernorm"]
        for name in names:
            setattr(self, name, RMSNorm(config.hidden_size, config.rms_norm_eps, gemma))


class PlainCausalLM(nn.Module):
    """Weights and attributes of a causal LM, laid out as transformers lays them out; it has no
    forward of its own (chatapp's decoders and `lm_head` run it)."""

    def __init__(self, config, body: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.config = config
        self.model = body
        self.lm_head = head
        self.generation_config = SimpleNamespace(eos_token_id=getattr(config, "eos_token_id", None))
        """What transformers' `GenerationConfig.from_model_config` takes from the config that chatapp reads."""

    @property
    def dtype(self) -> torch.dtype:
        return next((p.dtype for p in self.parameters() if p.is_floating_point()), torch.float32)

    @property
    def device(self) -> torch.device:
        return next((p.device for p in self.parameters()), torch.device("cpu"))

    def get_input_embeddings(self) -> nn.Module:
        return self.model.embed_tokens

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def set_output_embeddings(self, head: nn.Module) -> None:
        self.lm_head = head

    def forward(self, *args, **kwargs):
        raise NotImplementedError("PlainCausalLM holds weights for chatapp's decoders; it has no forward of its own")


def plain_model_reason(config) -> str | None:
    """Why `build_plain_model` does not build a model of `config`, or None."""
    kind = getattr(config, "model_type", None)
    if kind not in PLAIN_TYPES:
        return f"architecture {kind!r}"
    activation = getattr(config, "hidden_activation" if kind in GEMMA_TYPES else "hidden_act", None)
    if activation not in ACTIVATIONS:
        return f"activation {activation!r}"
    rope = getattr(config, "rope_parameters", None)
    if not isinstance(rope, dict):
        return "no rotary parameters"
    per_type = kind == "gemma3_text"
    tables = [p for p in rope.values() if p is not None] if per_type else [rope]
    if any(not isinstance(p, dict) or "rope_type" not in p for p in tables):
        return "unknown rotary parameters"
    if kind != "phi3" and any(p.get("partial_rotary_factor", 1.0) != 1.0 for p in tables):
        return "a partial rotary embedding outside Phi-3"
    if getattr(config, "pretraining_tp", 1) != 1:
        return "a tensor-parallel layout"
    if getattr(config, "use_bidirectional_attention", False):
        return "bidirectional attention (chatapp's decoders attend causally)"
    return None


def build_plain_model(config) -> PlainCausalLM | None:
    """`config`'s causal LM as plain modules, its parameters on the meta device (the rotary
    tables and Gemma's embedding scale real), or None when `plain_model_reason` gives a reason."""
    if plain_model_reason(config) is not None:
        return None
    kind = config.model_type
    gemma = kind in GEMMA_TYPES
    activation = ACTIVATIONS[getattr(config, "hidden_activation" if gemma else "hidden_act")]
    try:
        body = nn.Module()
        if gemma:
            body.embed_tokens = ScaledEmbedding(config.vocab_size, config.hidden_size, config.hidden_size ** 0.5)
        else:
            body.embed_tokens = _embedding(config.vocab_size, config.hidden_size)
        body.layers = nn.ModuleList(DecoderLayer(config, i, activation) for i in range(config.num_hidden_layers))
        body.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, gemma)
        body.rotary_emb = LayerTypeRotaryEmbedding(config) if kind == "gemma3_text" else RotaryEmbedding(config)
        head = _linear(config.hidden_size, config.vocab_size, False)
    except (AttributeError, KeyError, TypeError, ValueError) as error:  # a config missing what its family has
        log.warning("no plain modules for this %s config (%s: %s); transformers' skeleton instead", kind,
                    type(error).__name__, error)
        return None
    return PlainCausalLM(config, body, head).eval()

"""A Llama-family model as plain torch modules, for the warm start from the int4 cache.

Importing transformers' model code costs more than reading the cached int4 weights (it pulls in
torch.distributed and torch._dynamo; README, Performance, "Start-up"). But chatapp never calls a
transformers forward on such a model: `chatapp.runtime.llama_decoder.LlamaDecoder` runs the layers and
`chatapp.lm_head` the head. So a warm start builds `PlainLlama`: the same module tree and
parameter names as transformers' `LlamaForCausalLM` (the cache file loads into either), holding
the weights and the attributes the decoder and the head read, with a rotary module that
computes what transformers' default rotary embedding computes. Configurations it does not
reproduce (other rotary kinds, biases, float linear layers) give None: the caller then builds
transformers' model.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn

from chatapp.runtime.block_linear import BlockEmbedding
from chatapp.runtime.llama_decoder import config_unsupported_reason, rope_type
from chatapp.runtime.quantize import EXACT_KEY, GROUP_SIZE, HEAD_KEY, SCALES_KEY, Int4Linear, OutputHead

ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
"""Linear layers of a layer's self-attention, as transformers names them."""
MLP = ("gate_proj", "up_proj", "down_proj")
"""Linear layers of a layer's MLP."""


class ModelConfig(SimpleNamespace):
    """A model's config.json as attributes (what transformers' config object offers chatapp)."""

    def get_text_config(self) -> "ModelConfig":
        return self


class DefaultRotaryEmbedding(nn.Module):
    """transformers' default rotary embedding for Llama: the same formula, operation for operation."""

    def __init__(self, theta: float, head_dim: int) -> None:
        super().__init__()
        self.register_buffer(
            "inv_freq", 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float) / head_dim)), persistent=False
        )
        self.attention_scaling = 1.0

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = position_ids[..., None].float() * self.inv_freq.to(device=x.device, dtype=torch.float)
        emb = torch.cat((freqs, freqs), dim=-1)
        cos = emb.cos() * self.attention_scaling
        sin = emb.sin() * self.attention_scaling
        return cos.to(dtype=x.dtype), sin.to(dtype=x.dtype)


class PlainLlama(nn.Module):
    """Weights and attributes of a Llama-family causal LM, laid out as transformers lays them out."""

    def __init__(self, config: ModelConfig, body: nn.Module, head: nn.Module, generation_config) -> None:
        super().__init__()
        self.config = config
        self.model = body
        self.lm_head = head
        self.generation_config = generation_config

    @property
    def dtype(self) -> torch.dtype:
        embed = self.model.embed_tokens
        return embed.weight.dtype if hasattr(embed, "weight") else embed.dtype

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def get_input_embeddings(self) -> nn.Module:
        return self.model.embed_tokens

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def forward(self, *args, **kwargs):
        raise NotImplementedError("PlainLlama holds weights for chatapp's decoder; it has no forward of its own")


def read_config(location: str | Path) -> ModelConfig | None:
    """The model's config, or None when `PlainLlama` cannot reproduce it."""
    try:
        raw = json.loads((Path(location) / "config.json").read_text(encoding="utf-8"))
        config = ModelConfig(**raw)
        theta = (raw.get("rope_parameters") or {}).get("rope_theta", raw.get("rope_theta"))
        # The layers our decoder runs, with the only rotary embedding DefaultRotaryEmbedding computes.
        if config_unsupported_reason(config) is not None or rope_type(config) != "default" or theta is None:
            return None
        config.head_dim = raw.get("head_dim") or raw["hidden_size"] // raw["num_attention_heads"]
        config.rope_theta = float(theta)
        return config
    except (OSError, ValueError, TypeError, KeyError, AttributeError, ZeroDivisionError):
        return None  # unreadable or unusual: transformers builds the model


def _generation_config(location: Path, config: ModelConfig) -> SimpleNamespace:
    try:
        raw = json.loads((location / "generation_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raw = {}
    return SimpleNamespace(eos_token_id=raw.get("eos_token_id", getattr(config, "eos_token_id", None)))


def build_plain_llama(state: dict[str, torch.Tensor], location: str | Path, embedding=None):
    """`PlainLlama` from an int4 cache's tensors, or None when transformers must build the model.

    Args:
        state: the cache file's tensors (not modified), named as `chatapp.loading.int4_file_cache` names them.
        location: the model folder (config.json, generation_config.json).
        embedding: the tied embedding's GGUF blocks (`ScaledBlocks`) when the cache holds them
            (then `state` has no `model.embed_tokens.weight`).
    """
    location = Path(location)
    config = read_config(location)
    if config is None:
        return None
    used: set[str] = set()

    def take(key: str) -> torch.Tensor:
        used.add(key)
        return state[key]

    def norm(key: str) -> nn.Module:
        weight = take(key)
        module = nn.RMSNorm(weight.shape[0], eps=config.rms_norm_eps, device="meta")
        module.weight = nn.Parameter(weight, requires_grad=False)
        return module

    layers = nn.ModuleList()
    try:
        for index in range(config.num_hidden_layers):
            prefix = f"model.layers.{index}."
            layer = nn.Module()
            layer.self_attn, layer.mlp = nn.Module(), nn.Module()
            for section, group, names in (("self_attn.", layer.self_attn, ATTENTION), ("mlp.", layer.mlp, MLP)):
                for name in names:
                    packed = take(f"{prefix}{section}{name}.packed")
                    scales = take(f"{prefix}{section}{name}.scales_and_zeros")  # (K / G, N, 2)
                    setattr(group, name, Int4Linear(packed, scales, scales.shape[0] * GROUP_SIZE, scales.shape[1]))
            layer.input_layernorm = norm(prefix + "input_layernorm.weight")
            layer.post_attention_layernorm = norm(prefix + "post_attention_layernorm.weight")
            layers.append(layer)
        body = nn.Module()
        if embedding is not None:  # the file's own blocks, else the float32 weight
            body.embed_tokens = BlockEmbedding(embedding, use_kernel=False)
            embed = embedding
        else:
            embed = take("model.embed_tokens.weight")
            body.embed_tokens = nn.Embedding(embed.shape[0], embed.shape[1], _weight=embed, _freeze=True)
        body.layers = layers
        body.norm = norm("model.norm.weight")
        body.rotary_emb = DefaultRotaryEmbedding(config.rope_theta, config.head_dim)
        exact = take(EXACT_KEY) if EXACT_KEY in state else embed  # absent when tied to the embedding
        head = OutputHead(take(HEAD_KEY), take(SCALES_KEY), exact)
    except (KeyError, AttributeError, TypeError, ValueError):  # float layers, another layout, a sparse config
        return None
    if used != set(state):  # weights we would silently drop (biases, extra layers)
        return None
    config.tie_word_embeddings = False
    return PlainLlama(config, body, head, _generation_config(location, config)).eval()

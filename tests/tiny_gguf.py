"""Tiny GGUF files of each supported architecture, written with `gguf.GGUFWriter` in mixed block
types, the way llama.cpp's converter lays a model out (its tensor names, Llama's q/k row order,
Gemma's norms stored plus one), for parity tests against transformers' own GGUF loading."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from gguf import GGMLQuantizationType, GGUFWriter, MODEL_ARCH_NAMES, get_tensor_name_map
from gguf.constants import GGML_QUANT_SIZES
from gguf.quants import quantize

HIDDEN, INTERMEDIATE, VOCAB, LAYERS = 256, 512, 384, 2
ARCHITECTURES = {
    # GGUF architecture: (transformers model_type, config, per-architecture metadata)
    "llama": ("llama", dict(num_attention_heads=4, num_key_value_heads=2, head_dim=64), {"rope.dimension_count": 64}),
    "qwen2": ("qwen2", dict(num_attention_heads=4, num_key_value_heads=2), {}),
    "qwen3": ("qwen3", dict(num_attention_heads=2, num_key_value_heads=1, head_dim=128), {}),
    "phi3": ("phi3", dict(num_attention_heads=4, num_key_value_heads=4), {}),
    "gemma2": ("gemma2", dict(num_attention_heads=2, num_key_value_heads=1, head_dim=256, sliding_window=4),
               {"attention.key_length": 256, "attention.value_length": 256, "attention.sliding_window": 4}),
    "gemma3": ("gemma3_text", dict(num_attention_heads=2, num_key_value_heads=1, head_dim=256, sliding_window=4),
               {"attention.key_length": 256, "attention.value_length": 256, "attention.sliding_window": 4}),
    "mistral": ("mistral", dict(num_attention_heads=4, num_key_value_heads=2, head_dim=64), {"rope.dimension_count": 64}),
}
"""Each covers what its family adds: Llama's permuted q/k, Qwen2's q/k/v biases, Qwen3's q/k
norms, Phi-3's fused qkv and gate/up, Mistral's own model type, Gemma's norm offsets, pre/post
norms, scaled embeddings, GELU, sliding windows (4 tokens, so the tests cross them) and Gemma 2's
logit soft-capping."""
GGUF_ARCH = {"mistral": "llama"}
"""Files whose GGUF architecture is another's: llama.cpp writes Mistral as `llama`, and transformers
reads a `llama` file named "mistral" as Mistral."""

UNTIED = {"qwen2", "phi3"}
"""Architectures written with an output weight of their own (the others tie it to the embedding)."""
BLOCK_TYPES = ["Q4_K", "Q5_0", "Q8_0", "Q6_K", "Q4_0", "Q5_K", "Q4_1", "Q5_1"]
"""The block types the weights cycle through, so every file mixes them."""
K_SCALE = {"Q4_K": (0.02 / (63 * 15), 0.02 / 63), "Q5_K": (0.02 / (63 * 31), 0.02 / 63), "Q6_K": (0.02 / (127 * 32), 0),
           "Q2_K": (0.02 / (15 * 3), 0.02 / 15)}
"""d and dmin magnitudes that keep random K-quant weights near 0.02 (the gguf package cannot
quantize K types, so their blocks are random bytes with these scales)."""
K_FIELDS = {"Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208, None), "Q2_K": (80, 82)}


def _random_k_blocks(name: str, shape: tuple[int, int], rng) -> np.ndarray:
    block, size = GGML_QUANT_SIZES[GGMLQuantizationType[name]]
    rows, columns = shape
    raw = rng.integers(0, 256, (rows, columns // block, size), dtype=np.uint8)
    d_at, dmin_at = K_FIELDS[name]
    d_scale, dmin_scale = K_SCALE[name]
    for at, scale in ((d_at, d_scale), (dmin_at, dmin_scale)):
        if at is not None:
            values = (rng.uniform(0.5, 1.5, (rows, columns // block)) * scale).astype(np.float16)
            raw[..., at:at + 2] = values[..., None].view(np.uint8)
    return raw.reshape(rows, -1)


def _llama_permute(weights: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's converter's q/k row order (transformers undoes it on reading)."""
    return weights.reshape(heads, 2, weights.shape[0] // heads // 2, *weights.shape[1:]).swapaxes(1, 2).reshape(weights.shape)


def write_tiny_gguf(arch: str, folder: Path, seed: int = 0, block_types: list[str] | None = None,
                    sentencepiece: bool = False) -> tuple[Path, dict]:
    """Write the tiny `arch` model's GGUF file in `folder`, its weights cycling through
    `block_types` (default `BLOCK_TYPES`); the file and the block type of each tensor written
    quantized. Its tokenizer is a bare token list, or with `sentencepiece` a SentencePiece one
    (scores, token types and a chat template) that transformers converts into a tokenizer."""
    block_types = block_types or BLOCK_TYPES
    from transformers import AutoConfig, AutoModelForCausalLM

    model_type, dims, extra = ARCHITECTURES[arch]
    config = AutoConfig.for_model(model_type, hidden_size=HIDDEN, intermediate_size=INTERMEDIATE, vocab_size=VOCAB,
                                  num_hidden_layers=LAYERS, max_position_embeddings=512, rms_norm_eps=1e-6,
                                  tie_word_embeddings=arch not in UNTIED,
                                  attention_bias=arch == "qwen2", pad_token_id=0, eos_token_id=1, bos_token_id=2,
                                  **dims)
    with torch.device("meta"):
        shapes = {name: tuple(p.shape) for name, p in AutoModelForCausalLM.from_config(config).state_dict().items()}
    gguf_arch = GGUF_ARCH.get(arch, arch)
    arch_id = next(key for key, value in MODEL_ARCH_NAMES.items() if value == gguf_arch)
    names = get_tensor_name_map(arch_id, LAYERS)
    rng = np.random.default_rng(seed)
    path = folder / f"tiny-{arch}{'' if block_types is BLOCK_TYPES else '-' + '-'.join(block_types)}{'-spm' if sentencepiece else ''}.gguf"
    writer = GGUFWriter(str(path), gguf_arch)
    writer.add_name(arch)  # transformers reads a `llama` file named exactly "mistral" as Mistral
    writer.add_context_length(512)
    writer.add_embedding_length(HIDDEN)
    writer.add_block_count(LAYERS)
    writer.add_feed_forward_length(INTERMEDIATE)
    writer.add_head_count(dims["num_attention_heads"])
    writer.add_head_count_kv(dims["num_key_value_heads"])
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_rope_freq_base(10000.0)
    writer.add_vocab_size(VOCAB)
    for key, value in extra.items():
        writer.add_uint32(f"{gguf_arch}.{key}", value)
    if sentencepiece:
        pieces = ["<pad>", "<eos>", "<bos>", "<unk>"] + [f"\u2581{chr(97 + i % 26)}{i}" for i in range(4, VOCAB)]
        writer.add_tokenizer_model("llama")
        writer.add_token_list(pieces)
        writer.add_token_scores([0.0] * 4 + [-float(i) for i in range(4, VOCAB)])
        writer.add_token_types([3, 3, 3, 2] + [1] * (VOCAB - 4))
        writer.add_unk_token_id(3)
        writer.add_chat_template("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}")
    else:
        writer.add_tokenizer_model("gpt2")
        writer.add_token_list([f"t{i}" for i in range(VOCAB)])
    writer.add_pad_token_id(0)
    writer.add_eos_token_id(1)
    writer.add_bos_token_id(2)
    types: dict[str, str] = {}
    index = 0
    for hf_name, shape in shapes.items():
        if arch not in UNTIED and hf_name == "lm_head.weight":
            continue
        base, _, suffix = hf_name.rpartition(".")
        gguf_name = names.get_name(base)
        if gguf_name is None:
            continue
        gguf_name += "." + suffix
        if "norm" in hf_name:
            values = 1.0 + rng.normal(0, 0.1, shape)  # (Gemma's are read minus one, as its converter adds one)
            writer.add_tensor(gguf_name, values.astype(np.float32))
            continue
        if suffix == "bias":
            writer.add_tensor(gguf_name, rng.normal(0, 0.1, shape).astype(np.float32))
            continue
        spread = 1.0 if "embed" in hf_name else 0.05
        values = rng.normal(0, spread, shape).astype(np.float32)
        if gguf_arch == "llama" and gguf_name.endswith(("attn_q.weight", "attn_k.weight")):
            heads = dims["num_attention_heads"] if "attn_q" in gguf_name else dims["num_key_value_heads"]
            values = _llama_permute(values, heads)
        name = block_types[index % len(block_types)]
        index += 1
        kind = GGMLQuantizationType[name]
        raw = _random_k_blocks(name, shape, rng) if name in K_SCALE else quantize(values, kind)
        writer.add_tensor(gguf_name, raw, raw_shape=raw.shape, raw_dtype=kind)
        types[gguf_name] = name
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path, types

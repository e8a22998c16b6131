"""A ready-to-run copy of an int4 model, kept beside its converted weights in the user cache.

The first int4 load reads the float32 weights and packs them (`chatapp.runtime.quantize`); it then
saves the result here. Later loads build the model's skeleton without weights (on the meta
device) and take the packed tensors straight from this file, skipping the float32 read and the
packing. A Llama-family model comes back as `chatapp.loading.plain_llama.PlainLlama`, which needs no
transformers import; others as transformers' model. The file names the torch version and the
CPU capability that packed it (torch's int4 layout depends on both: blocks of 64 rows with
AVX-512, 32 with AVX2) and a format number; any mismatch or damage means "no cache": the slow
path runs and rewrites it (damage with a warning). safetensors refuses a file its header does not
cover, so a truncated copy is never mapped and read past its end (which would be a SIGBUS).
Temporary files of a save that was killed are removed once an hour old.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import torch
from torch import nn

from chatapp.runtime.block_linear import BlockEmbedding, ScaledBlocks
from chatapp.runtime.block_weights import row_weights
from chatapp.runtime.quantize import EXACT_KEY, HEAD_KEY, SCALES_KEY, Int4Linear, OutputHead
from chatapp.support.atomic_file import replacing

log = logging.getLogger(__name__)

FORMAT = "5"
"""Bumped whenever what the file holds changes meaning (5: a plain type's embedding scales as the
file's float16 numbers)."""
EMBEDDING_BLOCK_KEYS = ("chatapp.embedding.codes", "chatapp.embedding.scale", "chatapp.embedding.low",
                        "chatapp.embedding.layout")
"""A tied input embedding kept in its GGUF blocks (`ScaledBlocks`): codes, scales, minimums, and
(bits, block) as a tensor; the model then has no `model.embed_tokens.weight`."""
PACKED_SUFFIX = ".packed"
"""State-dict keys of int4 layers end with this (their scales with `.scales_and_zeros`)."""


def cache_path(location: str | Path, dtype: torch.dtype) -> Path:
    """Where the int4 copy of the model in folder `location` lives, for body dtype `dtype`."""
    return Path(location) / f"chatapp-int4-{str(dtype).removeprefix('torch.')}.safetensors"


def _packing() -> dict[str, str]:
    """What the packed layout depends on: torch's version and the CPU kernels it picked."""
    return {"torch": torch.__version__, "cpu": torch.backends.cpu.get_cpu_capability()}


def remove_stale_temporaries(path: Path) -> None:
    """Remove temporary files beside `path` left by a save that was killed (`replacing` names them
    `.NAME.XXXX.tmp`), once `chatapp.support.stale_files.STALE_SECONDS` old."""
    from chatapp.support.stale_files import remove_stale_staging

    remove_stale_staging(path.parent, f".{path.name}.")


def save_int4(model, path: Path, exact_blocks: float) -> None:
    """Write `model` (int4 layers, an `OutputHead`) to `path`; a failure only costs the cache."""
    from safetensors.torch import save_file

    remove_stale_temporaries(path)

    head = model.get_output_embeddings()
    if not isinstance(head, OutputHead):  # a head the packing left alone: not this cache's layout
        return
    embedding = model.get_input_embeddings()
    state = {key: tensor.contiguous() for key, tensor in model.state_dict().items()}
    if isinstance(embedding, BlockEmbedding):
        if head.exact_blocks is not embedding.weights:
            return  # blocks of an untied head: not this cache's layout
        state.update(embedding_block_state(embedding.weights))
    elif head.exact_weight.data_ptr() != embedding.weight.data_ptr():
        state[EXACT_KEY] = head.exact_weight.contiguous()
    metadata = {"format": FORMAT, "exact_blocks": repr(exact_blocks), **_packing()}
    # The cache is an optimisation: a failure to write it must not fail the load.
    with contextlib.suppress(Exception), replacing(path) as temp:  # a reader never sees half a file
        save_file(state, str(temp), metadata=metadata)


def embedding_block_state(weights: ScaledBlocks) -> dict[str, torch.Tensor]:
    """An embedding's blocks as the cache's tensors (`EMBEDDING_BLOCK_KEYS`)."""
    layout = torch.tensor([weights.bits, weights.block], dtype=torch.int64)
    return dict(zip(EMBEDDING_BLOCK_KEYS, (weights.codes.contiguous(), weights.scale.contiguous(),
                                           weights.low.contiguous(), layout)))


def embedding_blocks_of(state: dict[str, torch.Tensor]) -> ScaledBlocks | None:
    """The embedding's blocks from the cache's tensors (`state` is not modified), or None."""
    if EMBEDDING_BLOCK_KEYS[0] not in state:
        return None
    codes, scale, low, layout = (state[key] for key in EMBEDDING_BLOCK_KEYS)
    bits, block = (int(v) for v in layout)
    return ScaledBlocks((codes.shape[0], row_weights(codes, bits)), bits, block, codes, scale, low)


def load_int4(path: Path, location: str | Path, dtype: torch.dtype):
    """The int4 model saved at `path` (for the model folder `location`) and its exact-block share,
    or None when there is no usable copy."""
    remove_stale_temporaries(path)
    if not path.is_file():
        return None
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            packing = _packing()
            if metadata.get("format") != FORMAT or any(metadata.get(k) != v for k, v in packing.items()):
                return None
            state = {key: handle.get_tensor(key) for key in handle.keys()}
        return _build(state, location, dtype), float(metadata["exact_blocks"])
    except Exception:  # a damaged or foreign file: load the slow way and rewrite it
        log.warning("the int4 copy in %s was damaged; packing the weights again", path)
        return None


def _build(state: dict, location: str | Path, dtype: torch.dtype):
    from chatapp.loading.plain_llama import build_plain_llama

    blocks = embedding_blocks_of(state)
    rest = {key: tensor for key, tensor in state.items() if key not in EMBEDDING_BLOCK_KEYS}
    plain = build_plain_llama(rest, location, blocks)
    if plain is not None:  # no transformers import: the warm start's fast path
        plain.config.dtype = dtype
        return plain
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    from chatapp.loading.gguf_files import quiet_transformers

    quiet_transformers()

    state = rest
    if blocks is not None:  # transformers' modules take the float32 embedding (the same numbers)
        state["model.embed_tokens.weight"] = blocks.dequantize()
    config = AutoConfig.from_pretrained(location, local_files_only=True)
    config.tie_word_embeddings = False
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    for key in [k for k in state if k.endswith(PACKED_SUFFIX)]:
        name = key.removesuffix(PACKED_SUFFIX)
        packed, scales = state[key], state[name + ".scales_and_zeros"]  # also assigned below
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        old = getattr(parent, child)
        setattr(parent, child, Int4Linear(packed, scales, old.in_features, old.out_features))
    exact = state.pop(EXACT_KEY, None)
    packed, scales = state.pop(HEAD_KEY), state.pop(SCALES_KEY)
    result = model.load_state_dict(state, assign=True, strict=False)
    if result.unexpected_keys or set(result.missing_keys) - {HEAD_KEY}:
        raise ValueError("the int4 cache does not match the model")
    head = OutputHead(packed, scales, exact if exact is not None else model.get_input_embeddings().weight)
    model.set_output_embeddings(head)
    _rebuild_meta_buffers(model)
    model.config.dtype = dtype
    with contextlib.suppress(OSError, ValueError):
        model.generation_config = GenerationConfig.from_pretrained(location, local_files_only=True)
    return model.eval()


def _rebuild_meta_buffers(model: nn.Module) -> None:
    """Recompute buffers that are not saved (e.g. rotary frequencies) by rebuilding their modules."""
    for name, module in list(model.named_modules()):
        if any(buffer.is_meta for buffer in module.buffers(recurse=False)):
            parent_name, _, child = name.rpartition(".")
            rebuilt = type(module)(config=model.config)  # raises for a module we cannot rebuild
            setattr(model.get_submodule(parent_name) if parent_name else model, child, rebuilt)
    if any(t.is_meta for t in list(model.parameters()) + list(model.buffers())):
        raise ValueError("the int4 cache leaves part of the model unloaded")

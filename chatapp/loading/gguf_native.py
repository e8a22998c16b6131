"""A model built straight from a GGUF file, its weights kept in the file's own block quantization.

The model's skeleton comes from the config, its parameters on the meta device (nothing
allocated): chatapp's plain modules for the common architectures
(`chatapp.loading.plain_model`, without importing transformers' model code), transformers' own
model for any other. The file's tensors are named from the gguf package's name table as
transformers names them (`_tensor_names`), and the architecture's tensor processor undoes what
llama.cpp's converter changed (Llama's q/k row order, Gemma's norm offsets). Then each tensor
goes where transformers would put it:

- the weight of a linear layer or of the token embedding, in a block type with an exact layout
  (`chatapp.loading.gguf_blocks.EXACT_TYPES`), becomes a `BlockLinear` / `BlockEmbedding` over
  the file's own blocks, its rows reordered where the processor reorders rows;
- everything else (norms, biases, F32/F16/BF16 tensors, rarer block types) is dequantized by the
  `gguf` package and processed as transformers processes it, in float32.

A tied LM head shares the embedding's blocks. The model then runs on chatapp's layered decoder
(`chatapp.runtime.layered_decoder`) for the common architectures, or through transformers' own
modules for any other that transformers reads from GGUF, in about the file's size of memory
instead of four times it in float32.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

from chatapp.loading.gguf_blocks import EXACT_TYPES, block_weights
from chatapp.loading.gguf_index import read_index
from chatapp.loading.plain_model import build_plain_model, plain_model_reason
from chatapp.runtime.block_linear import BlockEmbedding, BlockLinear, ScaledBlocks
from chatapp.support.errors import ModelLoadError
from chatapp.support.memory import return_freed_memory

log = logging.getLogger(__name__)

GGUF_ARCH_NAMES = {"gemma3_text": "gemma3", "qwen2_moe": "qwen2moe", "qwen3_moe": "qwen3moe", "cohere": "command-r",
                   "mistral": "llama"}
"""transformers' model types whose GGUF architecture is named otherwise (as transformers maps them;
Mistral is written as `llama`, which transformers' own GGUF loading misses with gguf 0.18)."""
LARGE_TENSOR_BYTES = 8 << 20
"""Past this size, a tensor is read `CHUNK_ROWS` rows at a time (`_read_blocks`)."""
CHUNK_ROWS = 8192
"""Rows of a large tensor read at a time."""
TRIM_EVERY_BYTES = 16 << 20
"""The heap is given back after about this many bytes of blocks read (on Gemma 3 270M, after
every tensor made the load 0.1-0.5 s longer and its peak no lower)."""
UNUSED_TENSORS = {"rope_freqs.weight"}
"""Tensors some GGUF files carry that no transformers parameter holds (transformers skips them)."""


def _row_order(processor, name: str, rows: int, context: dict) -> np.ndarray | None:
    """The row order the tensor processor gives tensor `name` of `rows` rows (its q/k
    un-permutation), or None when it does more than reorder rows (then the tensor is dequantized
    and processed as a float tensor)."""
    probe = np.repeat(np.arange(rows, dtype=np.float64)[:, None], 2, axis=1)
    result = processor.process(weights=probe, name=name, **context)
    out = np.asarray(result.weights)
    if result.name != name or out.shape != probe.shape or not np.array_equal(out[:, 0], out[:, 1]):
        return None
    order = out[:, 0].astype(np.int64)
    return order if np.array_equal(np.sort(order), np.arange(rows)) else None


def _read_blocks(tensor, type_name: str, order: np.ndarray, index) -> ScaledBlocks:
    """The tensor's blocks as `ScaledBlocks`, rows in `order`. A large tensor in the file's own
    row order is read `CHUNK_ROWS` rows at a time into its final tensors, each chunk's file pages
    dropped once read: a whole-tensor read held the mapped file, the codes and the readers'
    temporaries at once (Gemma 3's embedding: about 450 MB above what it keeps)."""
    rows = tensor.shape[0]
    if not np.array_equal(order, np.arange(rows)):
        exact = block_weights(tensor.data, type_name, tensor.shape).select_rows(torch.from_numpy(order))
        return ScaledBlocks.of(exact)
    if tensor.data.nbytes <= LARGE_TENSOR_BYTES:
        return ScaledBlocks.of(block_weights(tensor.data, type_name, tensor.shape))
    codes = scale = low = None
    for start in range(0, rows, CHUNK_ROWS):
        stop = min(rows, start + CHUNK_ROWS)
        part = ScaledBlocks.of(block_weights(tensor.data[start:stop], type_name, (stop - start, tensor.shape[1])))
        if codes is None:
            codes = torch.empty((rows, *part.codes.shape[1:]), dtype=part.codes.dtype)
            scale = torch.empty((rows, part.scale.shape[1]), dtype=part.scale.dtype)
            first = part
        if part.scale.dtype != scale.dtype:  # a float32 slice after float16 ones: all float32 (exact)
            scale = scale.float()
            low = None if low is None else low.float()
        codes[start:stop], scale[start:stop] = part.codes, part.scale
        if part.low.numel():  # a slice with minimums (`ScaledBlocks.of` leaves out all-zero ones)
            if low is None:
                low = torch.zeros_like(scale)
            low[start:stop] = part.low
        index.release_rows(tensor, start, stop)
    return ScaledBlocks((rows, tensor.shape[1]), first.bits, first.block, codes, scale,
                        torch.empty(0, dtype=scale.dtype) if low is None else low)


def _tensor_names(model: nn.Module, index, full_map) -> dict[str, str]:
    """GGUF tensor name -> transformers parameter name for `model`, from one name table of the
    gguf package, as transformers maps the top-level names; `full_map()` (transformers' own
    walk, which builds that table again for each of a model's ~300 modules: 3 s) where that
    leaves one of the file's tensors unnamed."""
    from gguf import MODEL_ARCH_NAMES, get_tensor_name_map

    arch_name = GGUF_ARCH_NAMES.get(model.config.model_type, model.config.model_type)
    arch = next((key for key, value in MODEL_ARCH_NAMES.items() if value == arch_name), None)
    if arch is None:
        return full_map()
    table = get_tensor_name_map(arch, model.config.num_hidden_layers)
    names = {}
    for hf_name in model.state_dict():
        base, _, suffix = hf_name.rpartition(".")
        gguf_name = table.get_name(base) if suffix in ("weight", "bias") else None
        if gguf_name is not None:
            names[f"{gguf_name}.{suffix}"] = hf_name
    if any(tensor.name not in names for tensor in index.tensors if tensor.name not in UNUSED_TENSORS):
        return full_map()
    return names


def _set_tensor(model: nn.Module, name: str, value: torch.Tensor) -> None:
    """Put `value` where the parameter or buffer `name` is."""
    path, _, attribute = name.rpartition(".")
    module = model.get_submodule(path)
    if attribute in module._parameters or isinstance(module, BlockLinear):
        module._parameters[attribute] = nn.Parameter(value, requires_grad=False)
    else:
        module._buffers[attribute] = value


def _replace(model: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, child = path.rpartition(".")
    setattr(model.get_submodule(parent_path) if parent_path else model, child, new)


def load_native(gguf: Path, config) -> tuple[nn.Module, dict]:
    """The causal LM of `config` with the weights of `gguf` (see the module docstring), and what
    was done: `{"blocks": {type: count}, "dequantized": {type: count}}`.

    Raises:
        ModelLoadError: the file lacks a tensor the model needs.
    """
    from gguf import dequantize
    from transformers.modeling_gguf_pytorch_utils import TENSOR_PROCESSORS, TensorProcessor, get_gguf_hf_weights_map

    model = build_plain_model(config)
    if model is None:
        log.info("transformers' skeleton for %s: %s", gguf.name, plain_model_reason(config))
        model = _transformers_skeleton(config)
    index = read_index(gguf)
    processor = TENSOR_PROCESSORS.get(index.architecture, TensorProcessor)(config=config.to_dict())
    names = _tensor_names(model, index, lambda: get_gguf_hf_weights_map(model, processor))
    context = {"tensor_key_mapping": names, "parsed_parameters": {"tensors": {}, "config": config.to_dict()}}
    done = {"blocks": {}, "dequantized": {}}
    embedding_blocks = None
    untrimmed = 0
    for tensor in index.tensors:
        hf_name = names.get(tensor.name)
        if hf_name is None:
            continue
        type_name, shape = tensor.type_name, tensor.shape
        path, _, attribute = hf_name.rpartition(".")
        module = model.get_submodule(path)
        order = None
        if attribute == "weight" and type_name in EXACT_TYPES and isinstance(module, (nn.Linear, nn.Embedding)):
            order = _row_order(processor, tensor.name, shape[0], context)
        if order is not None:
            weights = _read_blocks(tensor, type_name, order, index)
            if isinstance(module, nn.Embedding):
                scale = getattr(module, "embed_scale", None)
                _replace(model, path, BlockEmbedding(weights, None if scale is None else float(scale)))
                embedding_blocks = weights
            else:
                bias = module.bias if module.bias is not None and not module.bias.is_meta else None
                _replace(model, path, BlockLinear(weights, bias))
            done["blocks"][type_name] = done["blocks"].get(type_name, 0) + 1
            index.release(tensor)
            untrimmed += tensor.data.nbytes
            if untrimmed > TRIM_EVERY_BYTES:  # the readers' temporaries, left in the heap, added up to 30 MiB
                return_freed_memory()
                untrimmed = 0
            continue
        values = dequantize(tensor.data, tensor.type)
        values = processor.process(weights=values, name=tensor.name, **context).weights
        target = (module.out_features,) if isinstance(module, BlockLinear) else getattr(module, attribute).shape
        _set_tensor(model, hf_name, torch.from_numpy(np.array(values, dtype=np.float32)).reshape(target))  # a copy
        index.release(tensor)
        if type_name not in ("F32", "F16", "BF16"):  # a block type without an exact layout
            done["dequantized"][type_name] = done["dequantized"].get(type_name, 0) + 1
    _tie_head(model, embedding_blocks)
    missing = [name for name, value in [*model.named_parameters(), *model.named_buffers()] if value.is_meta]
    if missing:
        raise ModelLoadError(f"{gguf.name} lacks the tensor {missing[0]} ({len(missing)} missing): it does not "
                             "match its own architecture's layout")
    model.eval()
    return_freed_memory()  # the readers' temporaries
    return model, done


def token_embedding_blocks(gguf: Path, weight: torch.Tensor) -> ScaledBlocks | None:
    """The token embedding of `gguf` in its own blocks, when it has an exact layout and those
    blocks dequantize to `weight` exactly (the float32 embedding transformers read), else None."""
    index = read_index(gguf)
    tensor = next((t for t in index.tensors if t.name == "token_embd.weight"), None)
    if tensor is None or tensor.type_name not in EXACT_TYPES or tuple(tensor.shape) != tuple(weight.shape):
        return None
    blocks = _read_blocks(tensor, tensor.type_name, np.arange(tensor.shape[0]), index)
    index.release(tensor)
    return blocks if torch.equal(blocks.dequantize(), weight.detach().float()) else None


def _transformers_skeleton(config) -> nn.Module:
    """transformers' own model of `config`, its parameters on the meta device (rotary tables real)."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    with init_empty_weights(include_buffers=False):
        return AutoModelForCausalLM.from_config(config, dtype=torch.float32)


def _tie_head(model: nn.Module, embedding_blocks) -> None:
    """Give a model whose file has no output weight its tied LM head: the embedding's blocks, or
    its float weight."""
    head = model.get_output_embeddings()
    if not isinstance(head, nn.Linear) or not head.weight.is_meta:
        return
    if embedding_blocks is not None:
        model.set_output_embeddings(BlockLinear(embedding_blocks))
    else:
        head.weight = model.get_input_embeddings().weight

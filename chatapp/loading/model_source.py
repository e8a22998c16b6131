"""Where a `--model` value's weights, config and tokenizer are read from (`resolve_source`),
converting a GGUF file's config and tokenizer (or all of it) into the user cache the first time
(`converted_copy`), and the one line an out-of-memory load gets (`out_of_memory_message`).
Nothing here imports torch or transformers' model code."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from chatapp.loading.gguf_files import (
    STAGING_PREFIX,
    Progress,
    convert_gguf,
    converted_dir,
    converted_intact,
    default_gguf_path,
    facts_memo,
    header_dir,
    quiet_transformers,
    remove_converted,
)
from chatapp.loading.model_specs import DEFAULT_MODEL, DEFAULT_MODEL_NAME
from chatapp.support.errors import ModelLoadError
from chatapp.support.stale_files import mark_used, remove_stale_staging, remove_unused

log = logging.getLogger(__name__)

WEIGHT_FILE_PATTERNS = ("*.safetensors", "*.bin", "*.gguf")
"""Files whose sizes add up to a model's weights."""

@dataclass(frozen=True)
class ModelSource:
    """Where `from_pretrained` reads a model from."""

    location: str
    """Folder or ORG/NAME."""
    name: str
    """Display name."""
    gguf: Path | None = None
    """The GGUF file the weights come from, if any."""
    native: bool = False
    """Whether the weights are read straight from `gguf`, kept in its blocks (`location` then
    holds only the config and tokenizer)."""


def resolve_source(spec: str, progress: Progress, native: bool = False) -> ModelSource:
    """Map a `--model` value to where and how to load it; a GGUF file's weights are read
    natively with `native`, else from its converted copy."""
    if spec == DEFAULT_MODEL:
        gguf = default_gguf_path()
        return ModelSource(str(converted_copy(gguf, progress, native)), DEFAULT_MODEL_NAME, gguf, native)
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelLoadError(f"no GGUF file at {path}: check the path")
        return ModelSource(str(converted_copy(path, progress, native)), path.stem, path, native)  # converted once
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"{path} is a folder but holds no config.json: point --model at a Hugging Face model folder")
        return ModelSource(str(path), path.name)
    if spec.count("/") == 1 and not spec.startswith((".", "/", "~")):
        return ModelSource(spec, spec.split("/")[-1])
    raise ModelLoadError(
        f"model {spec!r} not found: pass 'default', a model folder, a .gguf file, or ORG/NAME in the local Hugging Face cache"
    )


def converted_copy(gguf: Path, progress: Progress, header_only: bool = False) -> Path:
    """The converted copy of `gguf` (with `header_only`, its config and tokenizer alone),
    converting it first when it is missing or damaged (its manifest missing or a file's size
    changed: `converted_intact`). The copy and its facts memo are marked used, and the other
    entries of the cache nothing has used for two weeks (`stale_files.UNUSED_SECONDS`) are
    removed, such as the copies of files since changed or deleted, which no start reads again;
    one is made again if its file is opened again."""
    target = header_dir(gguf) if header_only else converted_dir(gguf)
    remove_stale_staging(target.parent, STAGING_PREFIX)
    if target.exists() and not converted_intact(target):
        discard_converted(gguf, target, progress)
    if not target.exists():
        quiet_transformers()
        convert_gguf(gguf, target, progress, weights=not header_only)
    mark_used(facts_memo(gguf))
    remove_unused(target.parent, "*", keep=target, companions=False)  # copies of other files, weeks unused
    return target


def discard_converted(gguf: Path, target: Path, progress: Progress) -> None:
    """Remove the damaged converted copy `target` of `gguf`, saying so in one line."""
    log.warning("the converted copy of %s was damaged; converting it again", gguf.name)
    progress(f"the converted copy of {gguf.name} was damaged; converting it again")
    remove_converted(target)


def weights_size_gb(location: str) -> float | None:
    """Size of a local model's weight files in GB, or None when unknown."""
    folder = Path(location)
    if not folder.is_dir():
        return None
    files = [f for pattern in WEIGHT_FILE_PATTERNS for f in folder.glob(pattern)]
    return sum(f.stat().st_size for f in files) / 1e9 if files else None


def out_of_memory_message(spec: str, source, device: str, dtype) -> str:
    """One line naming the model's size and what to try instead."""
    size = weights_size_gb(source.location) if source is not None else None
    sized = f" ({size:.1f} GB of weights on disk)" if size else ""
    smaller = "--dtype bfloat16" if str(dtype).endswith("float32") else "a smaller model"
    return (
        f"out of memory loading {spec!r}{sized} on {device} as {str(dtype).removeprefix('torch.')}: "
        f"try {smaller}, --device cpu, or --device-map auto"
    )

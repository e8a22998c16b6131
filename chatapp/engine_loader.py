"""The engine as the app loads it, for the TUI, `chatapp ask` and the bench's fresh processes."""

from __future__ import annotations

from chatapp.engine import DEFAULT_TOP_N, Engine
from chatapp.loading import DEFAULT_MODEL, Progress, load_model
from chatapp.memory import freeze_loaded_objects


def load_engine(
    model: str = DEFAULT_MODEL,
    device: str | None = None,
    dtype: str = "auto",
    *,
    progress: Progress | None = None,
    device_map: str | None = None,
    max_memory: dict | None = None,
    quantize: str = "auto",
    top_n: int = DEFAULT_TOP_N,
) -> Engine:
    """Load `model` (arguments as for `load_model`), wrap it in an engine, and freeze what the
    load left in memory (`freeze_loaded_objects`), as every process that then chats does."""
    loaded = load_model(model, device, dtype, progress=progress, device_map=device_map, max_memory=max_memory,
                        quantize=quantize)
    engine = Engine(loaded, top_n=top_n)
    freeze_loaded_objects()
    return engine

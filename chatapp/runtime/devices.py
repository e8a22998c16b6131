"""Where a model runs: device, dtype, memory limits, and where inputs must go.

Plain helpers around torch and Accelerate; `chatapp.loading.models` uses them to place a model.
"""

from __future__ import annotations

import re

from chatapp.support.errors import ModelLoadError

DTYPES = ("auto", "float32", "bfloat16", "float16")
"""Accepted `--dtype` values."""
MEMORY_AMOUNT = re.compile(r"\d+(\.\d+)?\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)", re.IGNORECASE)
"""A memory size as Accelerate reads it, e.g. 10GiB or 500MB."""
NATIVE_BF16_FLAGS = {"avx512_bf16", "amx_bf16"}
"""/proc/cpuinfo flags of CPUs that compute bfloat16 natively."""


def pick_device(requested: str | None = None) -> str:
    """Accelerate's choice of device (CUDA, then MPS, then CPU) unless one is requested."""
    import torch

    if requested:
        try:
            device = torch.device(requested)
        except (RuntimeError, ValueError):
            raise ModelLoadError(f"unknown device {requested!r}: use cpu, cuda, cuda:N or mps") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ModelLoadError(f"device {requested!r} asked for, but no CUDA GPU is available: try --device cpu")
        if device.type == "mps" and not torch.backends.mps.is_available():
            raise ModelLoadError(f"device {requested!r} asked for, but MPS is not available: try --device cpu")
        return str(device)
    from accelerate import PartialState

    return str(PartialState().device)


def pick_dtype(name: str, device: str):
    """The torch dtype for `--dtype`; "auto" takes the fastest exact-enough one for the device."""
    import torch

    if name not in DTYPES:
        raise ModelLoadError(f"unknown dtype {name!r}: use one of {', '.join(DTYPES)}")
    if name != "auto":
        return getattr(torch, name)
    kind = torch.device(device).type
    if kind == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if kind == "mps":
        return torch.float16
    return torch.float32


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 in hardware (AVX512-BF16 or AMX), so it is faster."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as cpuinfo:
            flags = set(cpuinfo.read().split())
    except OSError:
        return False
    return bool(flags & NATIVE_BF16_FLAGS)


def parse_max_memory(text: str) -> dict:
    """Parse `--max-memory`, e.g. "0=10GiB,cpu=30GiB", into Accelerate's max_memory dict."""
    limits: dict = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        device, sep, amount = part.partition("=")
        device, amount = device.strip(), amount.strip()
        if not sep or not device or not MEMORY_AMOUNT.fullmatch(amount):
            raise ModelLoadError(f"bad --max-memory entry {part!r}: write DEVICE=AMOUNT, e.g. cpu=2GiB,0=10GiB")
        key = device.removeprefix("cuda:")
        limits[int(key) if key.isdigit() else key] = amount
    if not limits:
        raise ModelLoadError("--max-memory is empty: write DEVICE=AMOUNT, e.g. cpu=2GiB")
    return limits


def input_device(model):
    """Where input ids must go: the device of the input embedding (CPU if it is offloaded)."""
    import torch

    weight = getattr(model.get_input_embeddings(), "weight", None)  # none: GGUF blocks, on the CPU
    device = weight.device if weight is not None else torch.device("cpu")
    return torch.device("cpu") if device.type == "meta" else device


def placement_of(model) -> str:
    """Human description of where the weights are, e.g. "cpu" or "auto: cpu, disk"."""
    device_map = getattr(model, "hf_device_map", None)
    if device_map and len(set(device_map.values())) > 1:
        places = sorted({str(v) for v in device_map.values()})
        return "auto: " + ", ".join(places)
    return str(next(model.parameters()).device)

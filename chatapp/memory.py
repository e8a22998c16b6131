"""Resident memory of this process, for the benchmark and the long-session tests, and keeping
what a loaded model leaves in memory out of the garbage collector's way."""

from __future__ import annotations

import gc
import os
import resource
import sys

MIB = 1024 * 1024
"""Bytes in a MiB."""


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # bytes on macOS, KiB elsewhere
    return peak / MIB if sys.platform == "darwin" else peak / 1024


def current_rss_mb() -> float:
    """Resident memory now, in MiB (the peak where /proc is not available)."""
    try:
        with open("/proc/self/statm") as statm:
            pages = int(statm.read().split()[1])
    except OSError:
        return peak_rss_mb()
    return pages * os.sysconf("SC_PAGE_SIZE") / MIB


def freeze_loaded_objects() -> None:
    """Exempt every object alive now from later garbage collections (`gc.freeze`).

    Call once the model is loaded: torch, transformers, Textual and the model leave about
    200,000 Python objects that stay alive for the whole session. Every full collection walked
    them all while holding the interpreter lock, stalling the decoder: in the TUI, a full
    collection took 100-250 ms in the middle of a reply, and 13-16 ms once they were frozen.
    There is no collection first: loading the default model leaves about 200 unreachable
    objects and no memory to free, and a full collection would add some 90 ms to the start.
    """
    gc.freeze()

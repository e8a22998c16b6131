"""Resident memory of this process (for the benchmark and the long-session tests), and the
garbage collector kept out of the way of long-lived objects: paused while many are built,
and told to skip those a loaded model leaves behind."""

from __future__ import annotations

import functools
import gc
import os
import sys
from contextlib import contextmanager
from typing import Iterator

MIB = 1024 * 1024
"""Bytes in a MiB."""


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB.

    On Linux, the high-water mark of the process's own memory (`VmHWM`): `ru_maxrss` also keeps,
    across `exec`, the peak of the process it was forked from, so a child started by a large
    process would report its parent's size."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    import resource  # Unix only: the chat files that import this module work everywhere

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


MADV_PAGEOUT = 21
"""Linux's madvise advice (5.4 on) to reclaim a range's pages now."""


def release_pages(tensor) -> None:
    """Give back the resident pages that lie wholly inside `tensor`'s bytes, without changing
    what it holds (madvise `MADV_PAGEOUT`): the pages of a tensor mapped from a file (the int4
    cache) are dropped and read from the file again if the tensor is ever used; anonymous pages
    stay where there is no swap. For a weight another copy has replaced, so that the process
    holds one copy; nothing happens where the system lacks the call."""
    if sys.platform != "linux" or tensor.numel() == 0:
        return
    import ctypes

    page = os.sysconf("SC_PAGE_SIZE")
    begin = tensor.data_ptr()
    end = begin + tensor.numel() * tensor.element_size()
    first, last = -(-begin // page) * page, end // page * page
    if last <= first:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise(ctypes.c_void_p(first), ctypes.c_size_t(last - first), MADV_PAGEOUT)  # a failure: pages stay


def freeze_loaded_objects() -> None:
    """Exempt every object alive now from later garbage collections (`gc.freeze`).

    Call once the model is loaded: torch, transformers, Textual and the model leave a great
    many Python objects that stay alive for the whole session, and every full collection would
    walk them all while holding the interpreter lock, stalling the decoder (README,
    Performance). There is no collection first: loading leaves next to nothing unreachable,
    and a full collection would only lengthen the start.
    """
    gc.freeze()


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while building many long-lived objects.

    Decoding a long chat allocates some 250,000 objects, none in cycles; each allocation burst
    would otherwise trigger collections that rescan everything built so far, doubling load time.
    Loading a model (imports included) is the same: 1.5-2.1 s instead of 1.7-2.5 s.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def return_freed_memory() -> None:
    """Hand memory that was freed back to the system (glibc's `malloc_trim`; nothing elsewhere).

    Tensors of a few megabytes come from the C heap once glibc has raised its mmap threshold
    (after the first large free), and freeing them leaves holes the heap keeps: replacing a
    model's weights with fused copies left Gemma 3 270M 60 MiB larger for good."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim():
    """glibc's `malloc_trim`, or None; found once (`find_library` runs `ldconfig`: about 1 ms)."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None

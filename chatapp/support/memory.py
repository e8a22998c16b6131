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


MADV_DONTNEED = 4
"""madvise advice: drop a range's pages from the process (a private file mapping's come back from
the file when touched again; the file's pages stay in the system's page cache)."""
PRESENT, SWAPPED, FILE_PAGE = 1 << 63, 1 << 62, 1 << 61
"""Bits of a page's /proc/self/pagemap entry."""


def release_pages(tensor) -> None:
    """Give back the resident pages that lie wholly inside `tensor`'s bytes where they are a
    file's (a tensor mapped from the int4 cache file), without changing what it holds: they are
    unmapped (madvise `MADV_DONTNEED`) and read from the file again if the tensor is ever used,
    while the system keeps them in its page cache for the next start. For a weight another copy
    has replaced, so that the process holds one copy. Pages that are not a file's (memory of the
    process's own, which the advice would zero) are left alone, as is everything where the
    system lacks /proc/self/pagemap or the call."""
    if sys.platform != "linux" or tensor.numel() == 0:
        return
    import ctypes
    import struct

    page = os.sysconf("SC_PAGE_SIZE")
    begin = tensor.data_ptr()
    end = begin + tensor.numel() * tensor.element_size()
    first, last = -(-begin // page), end // page  # page numbers: [first, last)
    if last <= first:
        return
    try:
        with open("/proc/self/pagemap", "rb") as pagemap:
            pagemap.seek(first * 8)
            entries = struct.unpack(f"<{last - first}Q", pagemap.read((last - first) * 8))
    except (OSError, struct.error):
        return
    if any(entry & SWAPPED or (entry & PRESENT and not entry & FILE_PAGE) for entry in entries):
        return  # some of it is the process's own memory: dropping it would lose it
    libc = _libc()
    if libc is not None:
        libc.madvise(ctypes.c_void_p(first * page), ctypes.c_size_t((last - first) * page), MADV_DONTNEED)


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
def _libc():
    """The C library, or None; found once (`find_library` runs `ldconfig`: about 1 ms)."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name) if name else None
    except OSError:
        return None


def _malloc_trim():
    """glibc's `malloc_trim`, or None."""
    return getattr(_libc(), "malloc_trim", None)

"""Resident memory of this process, for the benchmark and the long-session tests."""

from __future__ import annotations

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

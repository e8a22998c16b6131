"""The leftovers of a write that was killed: staging folders and temporary files.

A writer names what it stages with a prefix, its process id and a dash, so what a process that
died left behind is found and removed. Pure Python: no torch, no Textual.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from pathlib import Path

STALE_SECONDS = 3600
"""A staging folder or temporary file whose owner cannot be told (no process id in its name) is
left alone until it is this old: no conversion or save takes that long."""


def remove_stale_staging(folder: Path, prefix: str) -> None:
    """Remove the entries of `folder` named `prefix` + a process id + "-" whose process is gone,
    and those named `prefix` without one (older chatapp versions) once `STALE_SECONDS` old.
    Best effort: whatever cannot be removed is left for the next time."""
    try:
        entries = list(folder.glob(f"{prefix}*"))
    except OSError:
        return
    for entry in entries:
        if _abandoned(entry.name[len(prefix):], entry):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    entry.unlink()


def _abandoned(rest: str, entry: Path) -> bool:
    """Whether a staging entry whose name goes on with `rest` after its prefix is abandoned."""
    owner, dash, _ = rest.partition("-")
    if dash and owner.isdigit():
        return not _process_alive(int(owner))
    try:
        return time.time() - entry.lstat().st_mtime > STALE_SECONDS
    except OSError:
        return False


def _process_alive(pid: int) -> bool:
    """Whether a process with id `pid` runs (on this machine: the cache is a local folder)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True  # someone else's process, or a number we cannot ask about: keep it
    return True

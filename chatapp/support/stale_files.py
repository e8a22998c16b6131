"""The leftovers of a write that was killed (staging folders and temporary files), and builds
that nothing has used for a long time.

A writer names what it stages with a prefix, its process id and a dash, so what a process that
died left behind is found and removed. A build (a kernel library, a model's converted copy) is
marked used each time it is loaded (`mark_used`), so those that no chatapp loads any more (the
builds of older sources, the copies of files deleted, replaced or not opened for weeks) are
found and removed (`remove_unused`). Pure Python: no torch, no Textual.
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
UNUSED_SECONDS = 14 * 24 * 3600
"""A build nothing has loaded for this long is removed (`remove_unused`): another chatapp still
using it (an older checkout) would have marked it used since, and a model's copy is made again
the next time its file is opened."""


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
            _remove(entry)


def mark_used(entry: Path) -> None:
    """Note that `entry` (a build) was used now: its modification time. Best effort."""
    with contextlib.suppress(OSError):
        os.utime(entry)


def remove_unused(folder: Path, pattern: str, keep: Path, unused_seconds: float = UNUSED_SECONDS,
                  companions: bool = True) -> list[Path]:
    """Mark `keep`, the build in use, used (`mark_used`), and remove the other entries of `folder`
    matching `pattern` (a glob) that nothing has marked used (or made) for `unused_seconds`, each
    with its companions unless `companions` is False (the files named after it, such as a
    checksum beside a library); the entries removed. Best effort: whatever cannot be removed is
    left for the next time."""
    mark_used(keep)
    removed = []
    try:
        entries = [entry for entry in folder.glob(pattern) if entry != keep]
    except OSError:
        return removed
    now = time.time()
    for entry in entries:
        try:
            if now - entry.lstat().st_mtime <= unused_seconds:
                continue
            beside = list(folder.glob(f"{entry.name}.*")) if companions else []
        except OSError:
            continue
        for path in [entry, *beside]:
            _remove(path)
        removed.append(entry)
    return removed


def _remove(path: Path) -> None:
    """Remove a folder with what it holds, or a file (a link as a file). Best effort."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()


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

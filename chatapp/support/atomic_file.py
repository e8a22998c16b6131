"""Crash-safe file writes: a reader sees the old file or the new one, never a torn mix.

Pure Python: no torch, no Textual.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator


def atomic_write(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` so that a crash at any moment leaves the old file or the new one."""
    with replacing(path) as temp, open(temp, "wb") as handle:
        handle.write(data)


@contextlib.contextmanager
def replacing(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path` to write the new file to (by any means, e.g. a
    library's own save function); on success it is synced and replaces `path` in one `os.replace`,
    and the folder is synced so the rename itself survives a power cut. On failure `path` is
    untouched and the temporary file removed."""
    target = Path(path)
    fd, temp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        os.chmod(temp, _mode_for(target))  # mkstemp makes it 0600: give it the file's own mode
        yield Path(temp)
        with open(temp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(temp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    with contextlib.suppress(OSError):  # not every platform can open a folder (Windows)
        folder = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)


def _mode_for(target: Path) -> int:
    """The mode the written file gets: the replaced file's, or for a new file what `open` would
    give it (0666 less the process's umask)."""
    try:
        return target.stat().st_mode & 0o7777
    except OSError:
        return 0o666 & ~_umask()


def _umask() -> int:
    """The process's umask, read without changing it where the system allows (Linux)."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o077)  # elsewhere: set and restore it (0o077 keeps a racing file private)
    os.umask(mask)
    return mask

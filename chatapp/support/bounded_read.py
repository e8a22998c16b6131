"""Reading a file the user named, safely: only a regular file, and only up to a limit.

A name can point at anything: a device without end (`/dev/zero`, which grew the app without
bound), a pipe that blocks until someone writes, a folder. The file is opened without blocking and then
checked (what is checked is what is read), and reading stops one byte past the limit, so a file
that grows meanwhile is still refused.

Pure Python: no torch, no Textual.
"""

from __future__ import annotations

import os
import stat

MAX_MESSAGE_BYTES = 1 << 20
"""Longest message a file may supply (`ask @FILE`, `/file`): 1 MiB, far beyond any local
model's context."""


class FileRefused(ValueError):
    """Why a file was not read: one line, without the file's name (the caller names it)."""


def read_regular_file(path: str | os.PathLike, limit: int) -> bytes:
    """The bytes of the regular file at `path`, when it holds at most `limit` of them.

    Raises:
        FileRefused: it cannot be opened (the system's reason, e.g. "No such file or
            directory"), is a folder or not a regular file, or holds more than `limit` bytes.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as error:
        raise FileRefused(error.strerror or str(error)) from error
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise FileRefused("is a folder" if stat.S_ISDIR(info.st_mode) else "not a regular file")
    with open(fd, "rb", buffering=0) as handle:
        data = b"" if info.st_size > limit else handle.read(limit + 1)
    if info.st_size > limit or len(data) > limit:
        raise FileRefused(f"holds {max(info.st_size, len(data))} bytes, more than the {limit} chatapp reads")
    return data


def read_text_file(path: str | os.PathLike, limit: int = MAX_MESSAGE_BYTES) -> str:
    """The UTF-8 text of the regular file at `path` (at most `limit` bytes, a byte order mark
    dropped), to be sent as a message.

    Raises:
        FileRefused: as `read_regular_file`, or the file is not text (not UTF-8, or it holds NUL
            bytes, as binary files do), or holds no text at all.
    """
    data = read_regular_file(path, limit)
    if b"\0" in data:
        raise FileRefused("is a binary file, not text")
    text = decode_text(data)
    if not text.strip():
        raise FileRefused("holds no text")
    return text


def decode_text(data: bytes) -> str:
    """`data` as UTF-8 text, a byte order mark dropped (it is not part of a message).

    Raises:
        FileRefused: it is not UTF-8 (the message names the first bad byte).
    """
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise FileRefused(f"is not UTF-8 text (byte {error.start})") from None

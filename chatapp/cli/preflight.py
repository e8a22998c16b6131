"""What `main` checks before any model loads or the TUI starts, each refusal one line.

- the standard streams: a closed fd 0, 1 or 2 is reopened onto the null device, so that no file
  opened later lands on it and `print` has somewhere to go;
- the messages of `chatapp ask`: PROMPT `-` is read from stdin, `@FILE` from FILE, `@@TEXT` is
  the literal `@TEXT`; at most `MAX_MESSAGE_BYTES` of UTF-8 from a regular file or a stream;
- the `--model` spec, cheaply (`chatapp.loading.model_specs.check_model_spec`: no torch,
  nothing converted or downloaded), with the messages `chatapp.loading.models` would give;
- the terminal the TUI draws on.

Nothing here imports torch or Textual.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import BinaryIO, Sequence

from chatapp.support.bounded_read import MAX_MESSAGE_BYTES, FileRefused, decode_text, read_regular_file

STDIN_PROMPT = "-"
"""The PROMPT that reads its message from stdin."""
FILE_PREFIX = "@"
"""Starts a PROMPT that names the file holding the message; doubled, it stands for itself."""
EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE
"""Exit code when stdout's reader has gone (141), as shells report a process SIGPIPE ended."""


class InputError(ValueError):
    """A message could not be read; the text is one line for the user."""


def reopen_closed_std_fds() -> None:
    """Put the null device behind any of fds 0, 1 and 2 that is closed, and give Python a
    stream object for it (with a closed fd, `sys.stdout` and friends are None)."""
    for fd, name, flags in ((0, "stdin", os.O_RDONLY), (1, "stdout", os.O_WRONLY), (2, "stderr", os.O_WRONLY)):
        try:
            os.fstat(fd)
            continue
        except OSError:
            pass
        opened = os.open(os.devnull, flags)  # the lowest free fd: `fd` itself, the lower ones being open
        if opened != fd:
            os.dup2(opened, fd)
            os.close(opened)
        if getattr(sys, name) is None:
            setattr(sys, name, open(fd, "r" if fd == 0 else "w", encoding="utf-8", closefd=False))


def silence_stdout() -> None:
    """After stdout's reader has gone: point fd 1 at the null device, so that nothing written
    later, nor the interpreter's final flush, raises `BrokenPipeError` again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.close(devnull)


def read_prompts(prompts: Sequence[str], stdin: BinaryIO | None = None) -> list[str]:
    """The messages the PROMPT arguments stand for (`-`, `@FILE`, `@@TEXT`, or the text itself).

    Raises:
        InputError: a file or stdin cannot be read, is not a regular file or stream, is over
            `MAX_MESSAGE_BYTES`, is not UTF-8 or holds only whitespace; `-` given twice.
    """
    if list(prompts).count(STDIN_PROMPT) > 1:
        raise InputError(f"PROMPT {STDIN_PROMPT!r} may be given once (stdin holds one message)")
    return [_message(prompt, stdin) for prompt in prompts]


def _message(prompt: str, stdin: BinaryIO | None) -> str:
    if prompt == STDIN_PROMPT:
        stream = stdin if stdin is not None else sys.stdin.buffer
        return _decoded(_read_stream(stream, "stdin"), "stdin")
    if prompt.startswith(FILE_PREFIX * 2):
        return prompt[1:]
    if prompt.startswith(FILE_PREFIX):
        name = prompt[1:]
        if not name:
            raise InputError(f"PROMPT {FILE_PREFIX!r} names no file ({FILE_PREFIX * 2} sends a literal {FILE_PREFIX})")
        return _decoded(_read_file(name), prompt)
    return prompt


def _read_stream(stream: BinaryIO, label: str) -> bytes:
    """At most `MAX_MESSAGE_BYTES` + 1 bytes, so a stream without end (/dev/zero) stops."""
    try:
        data = stream.read(MAX_MESSAGE_BYTES + 1)
    except OSError as error:
        raise InputError(f"cannot read {label}: {error.strerror or error}") from None
    if len(data) > MAX_MESSAGE_BYTES:
        raise InputError(f"{label} holds more than {MAX_MESSAGE_BYTES} bytes, the longest message chatapp takes")
    return data


def _read_file(name: str) -> bytes:
    """A regular file's bytes; anything else is refused without reading (or blocking on) it."""
    label = f"{FILE_PREFIX}{name}"
    try:
        return read_regular_file(name, MAX_MESSAGE_BYTES)
    except FileRefused as error:
        missing = isinstance(error.__cause__, FileNotFoundError)
        hint = f" ({FILE_PREFIX * 2} sends a literal {FILE_PREFIX})" if missing else ""
        raise InputError(f"cannot read {label}: {error}{hint}") from None


def _decoded(data: bytes, label: str) -> str:
    try:
        text = decode_text(data)
    except FileRefused as error:
        raise InputError(f"{label} {error}") from None
    if not text.strip():
        raise InputError(f"{label} holds no message (it is empty)")
    return text


def terminal_problem() -> str | None:
    """Why the TUI cannot run here (Textual reads stdin and draws on stderr), or None."""
    for fd, name in ((0, "stdin"), (2, "stderr")):
        if not os.isatty(fd):
            return f"the chat needs a terminal, and {name} is not one: use `chatapp ask PROMPT` to answer without it"
    return None

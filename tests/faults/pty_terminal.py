"""A pseudo-terminal that a test drives as a terminal emulator would: the app reads keys from it
and draws on it; closing it is the terminal window going away."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
"""The repository root, where `python -m tests...` runs."""
COLUMNS, ROWS = 140, 40
"""The terminal's size."""


class PtyTerminal:
    """A child process on its own pseudo-terminal (stdin, stdout and stderr), not its controlling
    terminal unless `controlling` (then closing it also sends SIGHUP, as a terminal window does)."""

    def __init__(self, args: list[str], *, controlling: bool = False, env: dict | None = None) -> None:
        self.master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLUMNS, 0, 0))
        self.output = bytearray()

        def child_setup() -> None:
            if controlling:
                fcntl.ioctl(0, termios.TIOCSCTTY, 0)

        self.process = subprocess.Popen(
            args, cwd=ROOT, stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
            preexec_fn=child_setup, env={**os.environ, "TERM": "xterm-256color", **(env or {})},
        )
        os.close(slave)

    def read_for(self, seconds: float) -> None:
        """Collect what the app draws for `seconds` (a terminal must be read, or the app blocks)."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            ready, _, _ = select.select([self.master], [], [], min(left, 0.05))
            if ready:
                try:
                    self.output += os.read(self.master, 65536)
                except OSError:
                    return

    def wait_for_output(self, text: bytes, timeout: float) -> bool:
        """Read until `text` has been drawn (True) or `timeout` passes."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if text in self.output:
                return True
            self.read_for(0.05)
        return text in self.output

    def type(self, data: str, chunk: int = 4096) -> None:
        """Send `data` as a terminal without bracketed paste sends a paste: raw bytes, newlines as
        the Enter key's carriage returns, reading the app's output meanwhile."""
        raw = data.replace("\n", "\r").encode()
        for start in range(0, len(raw), chunk):
            block = raw[start:start + chunk]
            while block:
                _, ready, _ = select.select([], [self.master], [], 0.05)
                if ready:
                    written = os.write(self.master, block)
                    block = block[written:]
                self.read_for(0)

    def close(self) -> None:
        """The terminal goes away."""
        if self.master >= 0:
            os.close(self.master)
            self.master = -1

    def exited_within(self, seconds: float) -> bool:
        """Whether the app has ended within `seconds`."""
        try:
            self.process.wait(timeout=seconds)
            return True
        except subprocess.TimeoutExpired:
            return False

    def kill(self) -> None:
        """Stop the app whatever state it is in (test clean-up)."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.close()


def terminal_app(store: Path, **options) -> PtyTerminal:
    """The chat app on a scripted engine in its own pseudo-terminal."""
    return PtyTerminal([sys.executable, "-m", "tests.faults.terminal_app", str(store)], **options)

"""The terminal driver: Textual's own, plus two things a chat in a terminal must do that it does not.

- **The terminal going away ends the app.** A read of the terminal that returns nothing or fails
  means there is no terminal any more (a closed window, a dropped ssh connection). Textual's
  driver keeps polling it, at full speed, for ever; this one raises SIGHUP in its own process, as
  the kernel does when a controlling terminal hangs up, so the app leaves by the signals' path
  (`chatapp.tui.exit_deadline`): saved, and gone within its deadline.
- **A paste from a terminal without bracketed paste arrives as a flood of keystrokes.** Textual
  turns every character into a key event, and each one re-wraps the whole prompt: 20 KB took
  50 s of a full core, and each newline sent a message. Here a read that holds several plain
  characters at once (no human types that fast) becomes one `Paste` event, its carriage returns
  newlines: one edit per read, so absorbing a flood takes time proportional to its size. A short
  read that ends in Enter (a word typed ahead, or `tmux send-keys 'hi' Enter`) still sends.

Anything with an escape sequence in it (keys such as arrows, mouse reports, a bracketed paste)
goes to Textual's parser unchanged.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import termios
import time
from codecs import getincrementaldecoder
from typing import Callable, Iterable

from textual import events
from textual._xterm_parser import XTermParser
from textual.drivers.linux_driver import LinuxDriver
from textual.message import Message

READ_BYTES = 4096
"""Bytes read from the terminal at a time (Textual's own read size)."""
POLL_SECONDS = 0.1
"""How often the input thread checks whether the app is closing."""
PASTE_MIN_CHARS = 3
"""A read of at least this many plain characters is a paste, not typing."""
PASTE_GAP_SECONDS = 0.1
"""Reads this soon after a paste's read continue it (its last short piece included)."""
BRACKETED_PASTE_START = "\x1b[200~"
"""What a terminal with bracketed paste sends before a paste."""
BRACKETED_PASTE_END = "\x1b[201~"
"""... and after it."""
ENTER = "\r"
"""What the Enter key sends in raw mode."""
PLAIN_CONTROLS = frozenset("\r\n\t")
"""Control characters a paste may hold (anything else is a key for the parser)."""


class UnbracketedPaste:
    """Turns reads of plain text into `Paste` events; everything else goes to `feed`."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        """A detector reading time from `clock`."""
        self._clock = clock
        self._last_paste = float("-inf")
        self._bracketed = False  # inside a bracketed paste: the parser collects it

    def events(self, text: str, feed: Callable[[str], Iterable[Message]]) -> Iterable[Message]:
        """The events for `text`, one decoded read of the terminal."""
        if "\x1b" in text or self._bracketed:
            starts, ends = text.rfind(BRACKETED_PASTE_START), text.rfind(BRACKETED_PASTE_END)
            if starts != ends:  # the later marker of the two says where this read leaves us
                self._bracketed = starts > ends
            yield from feed(text)
            return
        now = self._clock()
        continuing = now - self._last_paste < PASTE_GAP_SECONDS
        plain = all(c.isprintable() or c in PLAIN_CONTROLS for c in text)
        if not plain or not (continuing or len(text) >= PASTE_MIN_CHARS):
            yield from feed(text)
            return
        self._last_paste = now
        # One line typed ahead and its Enter: send it, as the keys would have.
        typed_ahead = not continuing and text.endswith(ENTER) and text.count(ENTER) == 1
        body = text[:-1] if typed_ahead else text
        if body:
            yield events.Paste(body.replace("\r\n", "\n").replace("\r", "\n"))
        if typed_ahead:
            yield from feed(ENTER)


TERMINAL_RESET = "\x1b[?1049l\x1b[?25h\x1b[?1000l\x1b[?1003l\x1b[?1015l\x1b[?1006l\x1b[?2004l\x1b[?1004l"
"""Leave the alternate screen, show the cursor, stop mouse, paste and focus reports."""


class ChatDriver(LinuxDriver):
    """Textual's Linux driver whose input thread notices a vanished terminal and floods of text."""

    def restore_terminal(self) -> None:
        """Put the terminal back as found, from any thread, for a process about to end without
        Textual's own shutdown (`chatapp.tui.exit_deadline`); best effort."""
        with contextlib.suppress(OSError):
            os.write(self._file.fileno(), TERMINAL_RESET.encode())
        if self.attrs_before is not None:
            with contextlib.suppress(Exception):
                termios.tcsetattr(self.fileno, termios.TCSANOW, self.attrs_before)

    def run_input_thread(self) -> None:
        """Read the terminal and post its events until the app closes or the terminal goes."""
        parser = XTermParser(self._debug)
        decode = getincrementaldecoder("utf-8")(errors="replace").decode
        pastes = UnbracketedPaste()
        selector = selectors.SelectSelector()
        selector.register(self.fileno, selectors.EVENT_READ)
        try:
            while not self.exit_event.is_set():
                for _key, _mask in selector.select(POLL_SECONDS):
                    try:
                        data = os.read(self.fileno, READ_BYTES)
                    except OSError:  # EIO: the other end of the terminal is closed
                        data = b""
                    if not data:
                        hang_up()
                        return
                    for event in pastes.events(decode(data), parser.feed):
                        self.process_message(event)
                for event in parser.tick():
                    self.process_message(event)
        finally:
            selector.close()


def hang_up() -> None:
    """Tell this process that its terminal is gone, as the kernel tells a controlling terminal's."""
    os.kill(os.getpid(), getattr(signal, "SIGHUP", signal.SIGTERM))

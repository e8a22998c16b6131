"""Leaving on a signal within a deadline, whatever the UI thread is busy with.

SIGTERM and SIGHUP (which `chatapp.tui.terminal` also raises when the terminal goes away) ask
the app to save and quit, and it does so on its event loop (`ChatApp.exit_on_signal`). A loop
with a long queue, or an exit waiting for the engine thread to finish a long prefill, may take
longer than a closing terminal or a shutting-down system will wait. So each signal also arms an
`ExitDeadline`: if the process is still there `GRACE_SECONDS` later, a watchdog thread saves a
snapshot of the chat itself, puts the terminal back as far as it can, and ends the process with
the signal's exit code. A process that exits in time never notices it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from typing import Callable

log = logging.getLogger(__name__)

GRACE_SECONDS = 1.2
"""How long the app has to leave by itself after a signal."""
LAST_WORDS_SECONDS = 0.6
"""How long the watchdog's own save and terminal reset may take before the process ends anyway
(together with the grace: within the 2 s a closing terminal is promised)."""


class ExitDeadline:
    """A watchdog that ends the process if it outlives a signal by `GRACE_SECONDS`."""

    def __init__(self, last_words: Callable[[], None]) -> None:
        """Start the (sleeping) watchdog; `last_words` runs on it before a forced exit: it must
        be safe on any thread (save a snapshot through its own connection, reset the terminal)."""
        self._last_words = last_words
        self._armed = threading.Event()
        self._code: int | None = None  # None: released without a signal
        threading.Thread(target=self._watch, name="chatapp-exit-deadline", daemon=True).start()

    def arm(self, code: int) -> None:
        """Start the countdown (a second signal keeps the first's code and deadline).

        Safe in a signal handler: it only sets an event."""
        if not self._armed.is_set():
            self._code = code
            self._armed.set()

    def release(self) -> None:
        """The app has ended without a signal: stop the watchdog (a countdown already running
        goes on, as the process may still hang on its way out)."""
        self._armed.set()

    def _watch(self) -> None:
        self._armed.wait()
        if self._code is None:
            return
        time.sleep(GRACE_SECONDS)  # a process that left in time has taken this thread with it
        helper = threading.Thread(target=self._say_last_words, name="chatapp-last-words", daemon=True)
        helper.start()
        helper.join(LAST_WORDS_SECONDS)
        os._exit(self._code)

    def _say_last_words(self) -> None:
        with contextlib.suppress(Exception):
            log.warning("the app did not leave within %.1f s of a signal: saved and ended it", GRACE_SECONDS)
            self._last_words()


"""chatapp's log file: what its own loggers (`chatapp.*`, e.g. loading, the int4 kernel, its cache,
the exit watchdog) report at INFO level and above, appended one line per record (time, logger,
level, message; a traceback follows its record's line), so events the TUI does not show can
still be read afterwards.

`--log-file PATH` chooses the file, `--log-file none` turns it off (a file named "none" is
`./none`), and by default it is `chatapp.log` in the user log folder (`default_path`). The file
and its folder are created by the first record: a run that logs nothing leaves nothing behind.
A file that cannot be opened or written costs one warning line on stderr (in the TUI, Textual
keeps stderr off the screen) and ends logging to it; nothing else changes. Setting it up opens
no file and imports nothing beyond `logging` and `platformdirs`, so it costs the TUI's start
microseconds.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from pathlib import Path
from typing import Iterator

from platformdirs import user_log_dir

LOGGER_NAME = "chatapp"
"""The logger above all of chatapp's module loggers: the records the file receives."""
LEVEL = logging.INFO
"""The least severe records written."""
OFF = "none"
"""The `--log-file` value that turns the log file off."""
FILE_NAME = "chatapp.log"
"""The log file's name in the user log folder."""
RECORD_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"
"""One record: local time (to the millisecond), logger, level and message."""


def default_path() -> Path:
    """Where the log file is by default: `chatapp.log` in the user log folder."""
    return Path(user_log_dir("chatapp", appauthor=False)) / FILE_NAME


def chosen_path(value: str | None) -> Path | None:
    """The log file `--log-file VALUE` names (absolute); `default_path()` for None, None for `OFF`."""
    if value is None:
        return default_path()
    if value == OFF:
        return None
    return Path(value).expanduser().absolute()


class _OneLineFormatter(logging.Formatter):
    """`RECORD_FORMAT`, with the message's own line breaks and runs of spaces made one space."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802, D102 - logging hook
        record.message = " ".join(record.message.split())
        return super().formatMessage(record)


class LazyFileHandler(logging.Handler):
    """Appends records to a file that it (and its folder) creates at the first record.

    When the file cannot be opened or written, it says so once on stderr and drops every record
    from then on: a log never stops the program.
    """

    def __init__(self, path: Path) -> None:
        """Write to `path` (nothing is opened yet)."""
        super().__init__(LEVEL)
        self.path = path
        """The log file."""
        self.setFormatter(_OneLineFormatter(RECORD_FORMAT))
        self._stream = None
        self._broken = False

    def emit(self, record: logging.LogRecord) -> None:  # noqa: D102 - logging hook, called under self.lock
        if self._broken:
            return
        try:
            line = self.format(record) + "\n"
        except Exception:  # a record that cannot be formatted: logging's own report, as any handler's
            self.handleError(record)
            return
        try:
            if self._stream is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._stream = open(self.path, "a", encoding="utf-8", errors="backslashreplace")
            self._stream.write(line)
            self._stream.flush()
        except OSError as error:
            self._give_up(error)

    def _give_up(self, error: OSError) -> None:
        """Stop writing, after one warning line on stderr (looked up now: tests replace it)."""
        self._broken = True
        self._close_stream()
        reason = error.strerror or type(error).__name__
        with contextlib.suppress(Exception):
            sys.stderr.write(f"chatapp: warning: cannot write the log file {self.path}: {reason}; not logging to it\n")
            sys.stderr.flush()

    def _close_stream(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()

    def close(self) -> None:
        """Close the file, if it was opened."""
        with self.lock:
            self._close_stream()
        super().close()


@contextlib.contextmanager
def logging_to(value: str | None) -> Iterator[Path | None]:
    """While the block runs, append chatapp's records to the log file `--log-file VALUE` names
    (`chosen_path`); yields that path, or None when it is off.

    chatapp's logger passes INFO records on meanwhile (other handlers keep their own levels:
    stderr still shows warnings only); its level and handlers are restored afterwards.
    """
    path = chosen_path(value)
    if path is None:
        yield None
        return
    logger = logging.getLogger(LOGGER_NAME)
    handler = LazyFileHandler(path)
    level = logger.level
    logger.addHandler(handler)
    if logger.getEffectiveLevel() > LEVEL:
        logger.setLevel(LEVEL)
    try:
        yield path
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        handler.close()

"""The log file (`--log-file`): chatapp's own records at INFO and above, appended, created by the
first record, never fatal; the flag on the main parser and on `ask` and `bench`."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from chatapp.cli import log_file
from chatapp.cli import main as cli
from chatapp.cli.parser import build_parser

RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (?P<logger>\S+) (?P<level>[A-Z]+) (?P<message>.*)$")
"""One line of the log file: local time to the millisecond, logger, level, message."""
KERNEL_LOGGER = "chatapp.runtime.int4_kernel"
"""One of chatapp's module loggers."""


def records(path: Path) -> list[tuple[str, str, str]]:
    """The log file's lines as (logger, level, message); every line must be a record."""
    lines = path.read_text(encoding="utf-8").splitlines()
    matches = [RECORD.match(line) for line in lines]
    assert all(matches), lines
    return [(m["logger"], m["level"], m["message"]) for m in matches]


def test_the_flag_names_the_file_or_none_and_defaults_to_the_user_log_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    assert log_file.default_path() == tmp_path / "state" / "chatapp" / "log" / "chatapp.log"
    assert log_file.chosen_path(None) == log_file.default_path()
    assert log_file.chosen_path("none") is None
    monkeypatch.chdir(tmp_path)
    assert log_file.chosen_path("run.log") == tmp_path / "run.log"
    assert log_file.chosen_path("./none") == tmp_path / "none"


@pytest.mark.parametrize("argv, expected", [
    ([], None),
    (["--log-file", "a.log"], "a.log"),
    (["--log-file", "a.log", "ask", "hi"], "a.log"),
    (["ask", "--log-file", "b.log", "hi"], "b.log"),
    (["--log-file", "a.log", "ask", "--log-file", "b.log", "hi"], "b.log"),  # after the subcommand wins
    (["bench", "--log-file", "none"], "none"),
    (["--log-file", "a.log", "export", "some-id"], "a.log"),
])
def test_the_flag_is_shared_like_the_other_flags(argv, expected):
    assert build_parser().parse_args(argv).log_file == expected


def test_records_are_appended_from_the_first_one_on(tmp_path):
    path = tmp_path / "new folder" / "chatapp.log"
    with log_file.logging_to(str(path)) as chosen:
        assert chosen == path
        assert not path.parent.exists(), "nothing is created before something is logged"
        logging.getLogger(KERNEL_LOGGER).debug("not at INFO")
        logging.getLogger("textual").warning("not chatapp's")
        assert not path.parent.exists()
        logging.getLogger(KERNEL_LOGGER).info("int4 kernel not available: %s", "a reason")
        logging.getLogger("chatapp.loading.models").warning("a warning\n  on two lines")
    with log_file.logging_to(str(path)):
        logging.getLogger("chatapp.runtime.kernel_switch").error("a second run")
    logging.getLogger(KERNEL_LOGGER).warning("after the block")
    assert records(path) == [
        (KERNEL_LOGGER, "INFO", "int4 kernel not available: a reason"),
        ("chatapp.loading.models", "WARNING", "a warning on two lines"),
        ("chatapp.runtime.kernel_switch", "ERROR", "a second run"),
    ]


def test_a_traceback_follows_its_records_line(tmp_path):
    path = tmp_path / "chatapp.log"
    with log_file.logging_to(str(path)):
        try:
            raise ValueError("a cause")
        except ValueError:
            logging.getLogger("chatapp.runtime.kernel_switch").exception("laying out failed")
    first, *traceback = path.read_text(encoding="utf-8").splitlines()
    assert RECORD.match(first)["message"] == "laying out failed"
    assert traceback[0] == "Traceback (most recent call last):" and traceback[-1] == "ValueError: a cause"


def test_the_logger_is_left_as_it_was(tmp_path):
    logger = logging.getLogger(log_file.LOGGER_NAME)
    handlers, level = list(logger.handlers), logger.level
    with log_file.logging_to(str(tmp_path / "chatapp.log")):
        assert logger.getEffectiveLevel() == logging.INFO
    assert logger.handlers == handlers and logger.level == level
    with log_file.logging_to("none") as chosen:
        assert chosen is None and logger.handlers == handlers and logger.level == level


def test_stderr_still_shows_only_warnings(tmp_path, capsys):
    path = tmp_path / "chatapp.log"
    with log_file.logging_to(str(path)), cli._logs_on_stderr(True):
        logging.getLogger(KERNEL_LOGGER).info("for the file only")
        logging.getLogger(KERNEL_LOGGER).warning("for both")
    assert capsys.readouterr().err == "chatapp: warning: for both\n"
    assert [message for _, _, message in records(path)] == ["for the file only", "for both"]


def test_a_file_that_cannot_be_written_costs_one_warning_line(tmp_path, capsys):
    blocker = tmp_path / "a file"
    blocker.write_text("")
    path = blocker / "chatapp.log"  # its folder would be a regular file: it cannot be created
    with log_file.logging_to(str(path)):
        logging.getLogger(KERNEL_LOGGER).info("first")
        logging.getLogger(KERNEL_LOGGER).warning("second")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"chatapp: warning: cannot write the log file {path}: "), lines


@pytest.mark.model
def test_ask_writes_the_kernel_events_to_the_log_file(tmp_path):
    from platformdirs import user_cache_dir

    from chatapp.runtime import int4_kernel

    if not int4_kernel.cpu_supported():
        pytest.skip("without AVX512-VNNI the kernel is never tried, so nothing is logged")
    # The converted default model from the real cache, but no kernel and a compiler that fails:
    # the kernel thread logs (INFO) that the kernel is not available, well within the 16 steps.
    cache = tmp_path / "cache"
    (cache / "chatapp").mkdir(parents=True)
    (cache / "chatapp" / "models").symlink_to(Path(user_cache_dir("chatapp")) / "models")
    path = tmp_path / "logs" / "chatapp.log"
    env = {**os.environ, "XDG_CACHE_HOME": str(cache), "CXX": "false"}
    command = [sys.executable, "-m", "chatapp", "--log-file", str(path), "ask", "--temperature", "0",
               "--max-new-tokens", "16", "Say hello."]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", "INFO records go to the file, not to stderr"
    logged = records(path)
    assert any(record[:2] == (KERNEL_LOGGER, "INFO") and record[2].startswith(
        "int4 kernel not available: compiling the int4 kernel failed") for record in logged), logged

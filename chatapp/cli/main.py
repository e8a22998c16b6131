"""Command line: `chatapp` opens the TUI; `chatapp ask` answers prompts headless.

Every bad flag value, unreadable message and model that cannot be found ends with exit code 2
and one line on stderr, before any model loads; so does the TUI without a terminal. Flags given
before a subcommand count for it; given again after it, the later one wins.

Exit codes: 0 done; 1 a reply failed (`ask`); 2 usage, model or terminal; 130 Ctrl+C; 141 the
reader of stdout went away (`| head`).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from dataclasses import replace
from typing import Iterator, Sequence

from chatapp.chat.settings import SETTING_NAMES, SamplingSettings, SettingError
from chatapp.cli import log_file
from chatapp.cli.config import MAX_TOP_N, Config, config_path, load_config
from chatapp.cli.parser import EXIT_USAGE, MAX_BENCH_RUNS, MAX_BENCH_TOKENS, MAX_WATCH, build_parser
from chatapp.cli.preflight import (
    EXIT_BROKEN_PIPE,
    InputError,
    read_prompts,
    reopen_closed_std_fds,
    silence_stdout,
    terminal_problem,
)
from chatapp.loading.model_specs import check_model_spec
from chatapp.support.errors import ModelLoadError
from chatapp.support.openmp import shorten_idle_spin

EXIT_INTERRUPTED = 130
"""Exit code after Ctrl+C, as shells report SIGINT."""
MIN_CONTEXT = 64
"""Smallest `--ctx`: room for a chat template, a short message and a reply."""



def settings_from_args(args: argparse.Namespace, base: SamplingSettings | None = None) -> SamplingSettings:
    """Sampling settings: `base` (the config file's) with the flags given on top, validated."""
    given = {name: getattr(args, name) for name in SETTING_NAMES if getattr(args, name, None) is not None}
    return replace(base or SamplingSettings(), **given).validated()


def apply_config(args: argparse.Namespace, config: Config) -> None:
    """Fill the model flags the user did not give from the config file."""
    args.model = args.model if args.model is not None else config.model
    args.device = args.device if args.device is not None else config.device
    args.dtype = args.dtype if args.dtype is not None else config.dtype
    if hasattr(args, "top"):
        args.top = args.top if args.top is not None else config.top


def _fail(message: str, code: int = EXIT_USAGE) -> int:
    print(f"chatapp: error: {message}", file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `chatapp` console script.

    Refusals come in this order, each one line on stderr and exit code 2, before any model
    loads and before Textual is imported: the flags, the config file's sampling values, the
    device, the model spec, the messages (`ask`), and for the TUI a saved chat's id, then the
    terminal.
    """
    reopen_closed_std_fds()  # before anything opens a file that could land on fd 0, 1 or 2
    shorten_idle_spin()  # before torch loads OpenMP: a drawing UI gets its core sooner
    args = build_parser().parse_args(argv)
    try:
        # chatapp's events go to the log file in every mode; their warnings also to stderr, but
        # not behind the full-screen TUI.
        with log_file.logging_to(args.log_file), _logs_on_stderr(args.command is not None):
            return _run(args)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


def _run(args: argparse.Namespace) -> int:
    if args.command in ("config", "export", "list"):
        try:
            if args.command == "config":
                print(config_path(), flush=True)
                return 0
            return _export(args) if args.command == "export" else _list(args)
        except BrokenPipeError:  # stdout's reader has gone (`| head`): end quietly
            silence_stdout()
            return EXIT_BROKEN_PIPE
    model_given = args.model is not None  # before the config file's model fills it in
    config, warnings = load_config()
    if args.command is not None:  # behind the full-screen TUI they would go unseen: it shows them itself
        for warning in warnings:
            print(f"chatapp: warning: {warning}", file=sys.stderr)
    apply_config(args, config)
    if args.command == "bench":
        return _bench(args)
    try:
        settings = settings_from_args(args, config.sampling)
        if not 1 <= args.top <= MAX_TOP_N:
            raise SettingError(f"--top must be from 1 to {MAX_TOP_N}, got {args.top}")
        if args.system is not None and not args.system.strip():
            raise SettingError("--system is empty")
        if args.ctx is not None and args.ctx < MIN_CONTEXT:
            raise SettingError(f"--ctx must be at least {MIN_CONTEXT} tokens, got {args.ctx}")
    except SettingError as error:
        message = str(error)
        if error.setting:  # name the flag the user typed, not the field
            message = message.replace(error.setting, "--" + error.setting.replace("_", "-"), 1)
        return _fail(message)
    from chatapp.loading.models import parse_max_memory, pick_device

    try:
        if args.device:  # a bad --device fails here, in one line; the automatic choice is made
            pick_device(args.device)  # while loading, so torch is not imported before the TUI shows
        args.max_memory = parse_max_memory(args.max_memory) if args.max_memory else None
        if args.max_memory and not args.device_map:
            raise ModelLoadError("--max-memory needs --device-map auto")
        check_model_spec(args.model)
    except ModelLoadError as error:
        return _fail(str(error))
    if args.command == "ask":
        try:
            args.prompts = read_prompts(args.prompts)
        except InputError as error:
            return _fail(str(error))
        if args.raw and (len(args.prompts) != 1 or args.system is not None):
            return _fail("--raw continues one text: give one PROMPT and no --system")
        if args.watch and not args.json:
            return _fail("--watch needs --json: its numbers go in each token's JSON line")
        if args.lens and not args.json:
            return _fail("--lens needs --json: its layers go in each token's JSON line")
        if args.watch and len(args.watch) > MAX_WATCH:
            return _fail(f"--watch: at most {MAX_WATCH} tokens, got {len(args.watch)}")
        from chatapp.cli.ask import run_ask

        return run_ask(args, settings)
    return _tui(args, settings, config.theme, warnings, config.model_folders, follow_model=not model_given)


def _tui(args: argparse.Namespace, settings: SamplingSettings, theme: str, notices: list[str],
         model_folders: tuple[str, ...], follow_model: bool = True) -> int:
    from chatapp.storage.chat_file import ChatFileError

    try:
        chat, left_with = _reopened_chat(args)
    except ChatFileError as error:
        return _fail(" ".join(str(error).split()))
    if left_with is not None:  # the chat's own settings, with the flags given now on top
        with contextlib.suppress(SettingError):
            settings = settings_from_args(args, left_with)
    if args.raw and args.system is not None:
        return _fail("--raw continues plain text, which has no system prompt: give no --system")
    problem = terminal_problem()  # without one, Textual would spin on an endless end of input
    if problem:
        return _fail(problem)
    from chatapp.tui.app import run_tui

    return run_tui(settings=settings, load_engine=_engine_loader(args), top_n=args.top, chat=chat,
                   system=args.system, theme=theme, notices=notices, open_model=_model_opener(args),
                   model_folders=model_folders, follow_model_at_start=follow_model)


class _OneLineLogHandler(logging.Handler):
    """Writes chatapp's log records on stderr as `chatapp: LEVEL: MESSAGE`, one line each.

    stderr is looked up for every record, not kept: tests and `reopen_closed_std_fds` replace it.
    """

    def emit(self, record: logging.LogRecord) -> None:  # noqa: D102 - logging hook
        try:
            message = " ".join(record.getMessage().split())
            sys.stderr.write(f"chatapp: {record.levelname.lower()}: {message}\n")
            sys.stderr.flush()
        except Exception:  # logging must never end the program
            self.handleError(record)


@contextlib.contextmanager
def _logs_on_stderr(enabled: bool) -> Iterator[None]:
    """While the block runs, show chatapp's warnings and errors on stderr (when `enabled`)."""
    logger = logging.getLogger(log_file.LOGGER_NAME)
    handler = _OneLineLogHandler(logging.WARNING)
    if enabled:
        logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)


def _reopened_chat(args: argparse.Namespace):
    """The saved chat `--resume` or `--chat ID` names and the sampling settings it was left with,
    or (None, None); `ChatFileError` when there is no such chat.

    `--resume` reopens the chat that was on screen at the last quit, with its settings
    (`chatapp.storage.open_chats.last_open`), or else the most recently saved one; a reopened chat
    otherwise goes on with its own settings (`SavedChat.going_on_with`).
    """
    if not args.resume and args.chat is None:
        return None, None
    from chatapp.storage import open_chats
    from chatapp.storage.chat_file import ChatFileError
    from chatapp.storage.store import ChatStore, StoreError

    with ChatStore() as store:
        remembered = open_chats.last_open(store.path) if args.resume else None
        chat = None
        if remembered is not None:
            with contextlib.suppress(StoreError):  # deleted since, or damaged: the latest instead
                chat = store.load(remembered[0])
        if chat is None:
            remembered = None
            chat = store.last() if args.resume else store.load(store.resolve(args.chat))
        if chat is None:
            store.check_integrity()
            raise ChatFileError("--resume: no saved chat yet" + (
                f" (the chat history {store.path} was an empty file: truncated?)" if store.found_empty else ""))
    return chat, _settings_of(chat, remembered[1] if remembered else None)


def _settings_of(chat, remembered: dict | None) -> SamplingSettings | None:
    """The settings a reopened chat continues with: those remembered at quit, else its own,
    else its latest reply's; None when none is there or valid."""
    try:
        if remembered is not None:
            return SamplingSettings(**remembered).validated()
    except (TypeError, SettingError):
        pass
    return chat.going_on_with()


def _export(args: argparse.Namespace) -> int:
    from chatapp.storage.chat_file import ChatFileError
    from chatapp.storage.export import export_chat, render
    from chatapp.storage.store import ChatStore

    try:
        with ChatStore() as store:
            chat = store.load(store.resolve(args.chat_id))
        if args.output:
            export_chat(chat, args.output, args.format)
        else:
            sys.stdout.write(render(chat, args.format))
    except (ChatFileError, OSError, ValueError) as error:
        return _fail(" ".join(str(error).split()))
    return 0


def _list(args: argparse.Namespace) -> int:
    """Print the saved chats, most recently saved first (`chatapp list`)."""
    from chatapp.storage.chat_file import ChatFileError
    from chatapp.storage.history_listing import listing_lines
    from chatapp.storage.store import ChatStore

    try:
        with ChatStore() as store:
            chats = store.list_chats()
    except ChatFileError as error:
        return _fail(" ".join(str(error).split()))
    for line in listing_lines(chats, as_json=args.json):
        print(line)
    sys.stdout.flush()
    return 0


def _bench(args: argparse.Namespace) -> int:
    if not 2 <= args.tokens <= MAX_BENCH_TOKENS:
        return _fail(f"--tokens must be from 2 to {MAX_BENCH_TOKENS}, got {args.tokens}")
    if not 1 <= args.runs <= MAX_BENCH_RUNS:
        return _fail(f"--runs must be from 1 to {MAX_BENCH_RUNS}, got {args.runs}")
    try:
        check_model_spec(args.model)
    except ModelLoadError as error:
        return _fail(str(error))
    from chatapp.bench.runner import main_bench

    return main_bench(args)


def _model_opener(args: argparse.Namespace):
    """A function that loads the engine of a model spec with the other flags of `args` (device,
    dtype, quantization, context, candidates), reporting progress; the TUI runs it on its engine
    thread, for `--model` and for `/model`."""

    def open_model(spec, progress):
        from chatapp.engine.loader import load_engine

        return load_engine(spec, args.device, args.dtype, progress=progress, device_map=args.device_map,
                           max_memory=args.max_memory, quantize=args.quantize, top_n=args.top, context=args.ctx,
                           mode="completion" if args.raw else "auto")

    return open_model


def _engine_loader(args: argparse.Namespace):
    """A function that loads the engine of `--model`, reporting progress."""
    open_model = _model_opener(args)
    return lambda progress: open_model(args.model, progress)


if __name__ == "__main__":
    sys.exit(main())

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

from chatapp.config import MAX_TOP_N, Config, config_path, load_config
from chatapp.errors import ModelLoadError
from chatapp.loading import DTYPES, QUANTIZE_CHOICES
from chatapp.preflight import (
    EXIT_BROKEN_PIPE,
    MAX_MESSAGE_BYTES,
    InputError,
    check_model_spec,
    read_prompts,
    reopen_closed_std_fds,
    silence_stdout,
    terminal_problem,
)
from chatapp.settings import (
    DEFAULT_MAX_NEW_TOKENS,
    DEFAULT_TEMPERATURE,
    DEFAULT_TOP_K,
    DEFAULT_TOP_N,
    SETTING_NAMES,
    SamplingSettings,
    SettingError,
)

EXIT_USAGE = 2
"""Exit code for bad flags and for a model that cannot be loaded."""
EXIT_INTERRUPTED = 130
"""Exit code after Ctrl+C, as shells report SIGINT."""
LOGGER_NAME = "chatapp"
"""The logger above all of chatapp's module loggers."""
MAX_BENCH_TOKENS = 4096
"""Longest benchmark run."""
MAX_BENCH_RUNS = 50
"""Most runs per benchmark configuration."""


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are a single line on stderr, exit code 2."""

    def error(self, message: str):  # noqa: D102 - argparse hook
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


class _FlagGroup:
    """Adds flags to one argument group of a parser.

    A subcommand's copy of the main parser's flags (`inherited`) has no default of its own
    (`argparse.SUPPRESS`): given before the subcommand, a flag keeps the main parser's value;
    given after it, it wins.
    """

    def __init__(self, parser: argparse.ArgumentParser, title: str, inherited: bool) -> None:
        self.group = parser.add_argument_group(title)
        self.inherited = inherited

    def add(self, *names: str, **options) -> None:
        """`add_argument`, with the default suppressed in an inherited copy."""
        if self.inherited:
            options["default"] = argparse.SUPPRESS
        self.group.add_argument(*names, **options)


def _add_model_flags(parser: argparse.ArgumentParser, inherited: bool = False) -> None:
    group = _FlagGroup(parser, "model", inherited)
    group.add(
        "--model",
        default=None,
        help="'default' (SmolLM2-135M-Instruct, bundled), a model folder, a .gguf file, or ORG/NAME "
        "from the local Hugging Face cache (never downloaded)",
    )
    group.add("--device", default=None, help="cpu, cuda, cuda:N or mps (default: Accelerate's choice)")
    group.add("--dtype", default=None, choices=DTYPES, help="weight dtype (default: auto)")
    group.add(
        "--quantize",
        default="auto",
        choices=QUANTIZE_CHOICES,
        help="int4 packs the transformer weights to 4 bits on CPU, and the LM head's first pass (its best "
        "logits are recomputed exactly): faster, changes outputs slightly; "
        "auto does so only for 4-bit GGUF weights, e.g. the default model, on a CPU with native "
        "bfloat16, keeping the file's own 4-bit codes; where the CPU has AVX512-VNNI and a C++ compiler "
        "is found, decode steps then run on chatapp's own int4 kernel, built once in the background "
        "(CHATAPP_INT4_KERNEL=0 turns it off) (default: auto)",
    )
    group.add(
        "--device-map",
        default=None,
        choices=("auto",),
        help="'auto' spreads a model too large for one device over GPUs, CPU memory and disk (Accelerate)",
    )
    group.add(
        "--max-memory",
        default=None,
        metavar="LIMITS",
        help="per-device limits for --device-map, e.g. 0=10GiB,cpu=30GiB",
    )


def _add_sampling_flags(parser: argparse.ArgumentParser, inherited: bool = False) -> None:
    group = _FlagGroup(parser, "sampling", inherited)
    group.add("--temperature", type=float, default=None, help=f"0 = greedy (default: {DEFAULT_TEMPERATURE})")
    group.add("--top-k", type=int, default=None, help=f"0 = no cut (default: {DEFAULT_TOP_K})")
    group.add("--top-p", type=float, default=None, help="nucleus sampling in (0, 1] (default: off)")
    group.add("--min-p", type=float, default=None, help="min-p filter in [0, 1] (default: off)")
    group.add("--repetition-penalty", type=float, default=None, help="> 0, 1 = none (default: off)")
    group.add("--seed", type=int, default=None, help="seed for reproducible sampling (default: random)")
    group.add("--max-new-tokens", type=int, default=None, help=f"longest reply (default: {DEFAULT_MAX_NEW_TOKENS})")
    group.add("--system", default=None, help="system message that starts the conversation")
    group.add("--top", type=int, default=None, metavar="N", help=f"candidates shown per step (default: {DEFAULT_TOP_N})")


def build_parser() -> argparse.ArgumentParser:
    """The `chatapp` argument parser with its subcommands."""
    parser = OneLineParser(
        prog="chatapp",
        description="Chat with a local language model and watch how it chooses every token. "
        "With no command, opens the chat TUI.",
    )
    _add_model_flags(parser)
    _add_sampling_flags(parser)
    history = parser.add_argument_group("history").add_mutually_exclusive_group()
    history.add_argument("--resume", action="store_true", help="reopen the most recently saved chat")
    history.add_argument("--chat", default=None, metavar="ID", help="reopen the saved chat with this id (a unique prefix will do)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    ask = commands.add_parser("ask", help="answer prompts without the TUI, streaming text or JSON Lines")
    _add_model_flags(ask, inherited=True)
    _add_sampling_flags(ask, inherited=True)
    ask.add_argument("--json", action="store_true", help="print JSON Lines: model, one line per token, one per turn")
    ask.add_argument(
        "prompts", nargs="+", metavar="PROMPT",
        help="user turns of one conversation, answered in order; '-' reads one from stdin, @FILE reads one "
        f"from FILE (UTF-8, at most {MAX_MESSAGE_BYTES >> 20} MiB), @@TEXT sends @TEXT",
    )
    export = commands.add_parser("export", help="write a saved chat as Markdown or JSON")
    export.add_argument("chat_id", metavar="ID", help="chat id (or a unique prefix), as the history screen shows it")
    export.add_argument("--format", choices=("md", "json"), default="md", help="output format (default: md)")
    export.add_argument("-o", "--output", default=None, metavar="PATH", help="write to PATH instead of stdout")
    config = commands.add_parser("config", help="about the config file")
    config.add_argument("--path", action="store_true", required=True, help="print where config.toml is read from")
    bench = commands.add_parser("bench", help="measure speed and memory against model.generate, as ratios")
    _add_model_flags(bench, inherited=True)
    bench_format = bench.add_mutually_exclusive_group()
    bench_format.add_argument("--json", action="store_true", help="print the report as one JSON object")
    bench_format.add_argument("--markdown", action="store_true", help="print the README's performance table")
    bench.add_argument("--tokens", type=int, default=128, help="new tokens per run (default: %(default)s)")
    bench.add_argument("--runs", type=int, default=3, help="runs per configuration; medians reported (default: %(default)s)")
    return parser


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
    args = build_parser().parse_args(argv)
    try:
        with _logs_on_stderr(args.command is not None):  # the TUI shows them itself
            return _run(args)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


def _run(args: argparse.Namespace) -> int:
    if args.command in ("config", "export"):
        try:
            if args.command == "config":
                print(config_path(), flush=True)
                return 0
            return _export(args)
        except BrokenPipeError:  # stdout's reader has gone (`| head`): end quietly
            silence_stdout()
            return EXIT_BROKEN_PIPE
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
    except SettingError as error:
        message = str(error)
        if error.setting:  # name the flag the user typed, not the field
            message = message.replace(error.setting, "--" + error.setting.replace("_", "-"), 1)
        return _fail(message)
    from chatapp.loading import parse_max_memory, pick_device

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
        from chatapp.ask import run_ask

        return run_ask(args, settings)
    return _tui(args, settings, config.theme, warnings)


def _tui(args: argparse.Namespace, settings: SamplingSettings, theme: str, notices: list[str]) -> int:
    from chatapp.chat_file import ChatFileError

    try:
        chat, left_with = _reopened_chat(args)
    except ChatFileError as error:
        return _fail(" ".join(str(error).split()))
    if left_with is not None:  # the chat's own settings, with the flags given now on top
        with contextlib.suppress(SettingError):
            settings = settings_from_args(args, left_with)
    problem = terminal_problem()  # without one, Textual would spin on an endless end of input
    if problem:
        return _fail(problem)
    from chatapp.tui.app import run_tui

    return run_tui(settings=settings, load_engine=_engine_loader(args), top_n=args.top, chat=chat,
                   system=args.system, theme=theme, notices=notices)


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
    logger = logging.getLogger(LOGGER_NAME)
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
    (`chatapp.open_chats.last_open`), or else the most recently saved one; a reopened chat
    otherwise gets the settings of its latest reply.
    """
    if not args.resume and args.chat is None:
        return None, None
    from chatapp import open_chats
    from chatapp.chat_file import ChatFileError
    from chatapp.store import ChatStore, StoreError

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
    """The settings a reopened chat continues with: those remembered at quit, else its latest
    reply's; None when neither is there or valid."""
    latest = [e.reply.settings for e in chat.conversation.exchanges if e.reply is not None]
    try:
        if remembered is not None:
            return SamplingSettings(**remembered).validated()
    except (TypeError, SettingError):
        pass
    return latest[-1] if latest else None


def _export(args: argparse.Namespace) -> int:
    from chatapp.chat_file import ChatFileError
    from chatapp.export import export_chat, render
    from chatapp.store import ChatStore

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


def _bench(args: argparse.Namespace) -> int:
    if not 2 <= args.tokens <= MAX_BENCH_TOKENS:
        return _fail(f"--tokens must be from 2 to {MAX_BENCH_TOKENS}, got {args.tokens}")
    if not 1 <= args.runs <= MAX_BENCH_RUNS:
        return _fail(f"--runs must be from 1 to {MAX_BENCH_RUNS}, got {args.runs}")
    try:
        check_model_spec(args.model)
    except ModelLoadError as error:
        return _fail(str(error))
    from chatapp.bench import main_bench

    return main_bench(args)


def _engine_loader(args: argparse.Namespace):
    """A function that loads the engine for `args`, reporting progress (the TUI runs it on its
    engine thread)."""

    def load_engine(progress):
        from chatapp.engine_loader import load_engine

        return load_engine(args.model, args.device, args.dtype, progress=progress, device_map=args.device_map,
                           max_memory=args.max_memory, quantize=args.quantize, top_n=args.top)

    return load_engine


if __name__ == "__main__":
    sys.exit(main())

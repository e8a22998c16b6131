"""The `chatapp` argument parser: the TUI's flags, and the subcommands `ask`, `export`, `config`
and `bench`.

The model, sampling and log flags are on the main parser and again on `ask` and `bench`, whose copies
default to "not given" (`argparse.SUPPRESS`): a flag before the subcommand counts, and the same
flag after it wins.
"""

from __future__ import annotations

import argparse

from chatapp import __version__
from chatapp.chat.settings import DEFAULT_MAX_NEW_TOKENS, DEFAULT_TEMPERATURE, DEFAULT_TOP_K, DEFAULT_TOP_N
from chatapp.cli import log_file
from chatapp.cli.preflight import MAX_MESSAGE_BYTES
from chatapp.loading.models import DTYPES, QUANTIZE_CHOICES

EXIT_USAGE = 2
"""Exit code for bad flags and for a model that cannot be loaded."""
MAX_BENCH_TOKENS = 4096
"""Longest benchmark run."""
MAX_BENCH_RUNS = 50
"""Most runs per benchmark configuration."""
MAX_WATCH = 8
"""Most tokens `ask --watch` follows."""


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
        "(CHATAPP_INT4_KERNEL=0 turns it off); gguf keeps a GGUF file's own blocks (Q4_0, Q4_1, Q5_0, "
        "Q5_1, Q8_0, Q4_K, Q5_K, Q6_K) in memory and computes from them in float32 on chatapp's block "
        "kernel (AVX512, AVX2 or plain C++, built once with a C++ compiler; plain torch without one): "
        "the model's own numbers at about the file's size, which auto picks on CPU for every GGUF file "
        "int4 does not take; none converts a GGUF file to float once and loads that (default: auto)",
    )
    group.add(
        "--device-map",
        default=None,
        choices=("auto",),
        help="'auto' spreads a model too large for one device over GPUs, CPU memory and disk (Accelerate)",
    )
    group.add("--ctx", type=int, default=None, metavar="N",
              help="context window in tokens, at most the model's own (default: the model's)")
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
    group.add("--seed", type=int, default=None, help="seed for reproducible sampling; each turn draws from its own "
              "stream derived from it (default: random)")
    group.add("--max-new-tokens", type=int, default=None, help=f"longest reply (default: {DEFAULT_MAX_NEW_TOKENS})")
    group.add("--stop", action="append", default=None, metavar="TEXT",
              help="end a reply where TEXT appears, its text stopping before it; repeat for several (default: none)")
    group.add("--system", default=None, help="system message that starts the conversation")
    group.add("--top", type=int, default=None, metavar="N", help=f"candidates shown per step (default: {DEFAULT_TOP_N})")


def _add_log_flags(parser: argparse.ArgumentParser, inherited: bool = False) -> None:
    group = _FlagGroup(parser, "log", inherited)
    group.add(
        "--log-file",
        default=None,
        metavar="PATH",
        help="append chatapp's loading and kernel events (INFO and above) to PATH, created when the first "
        f"one comes; '{log_file.OFF}' turns it off (default: {log_file.default_path()})",
    )


def build_parser() -> argparse.ArgumentParser:
    """The `chatapp` argument parser with its subcommands."""
    parser = OneLineParser(
        prog="chatapp",
        description="Chat with a local language model and watch how it chooses every token. "
        "With no command, opens the chat TUI.",
    )
    parser.add_argument("--version", action="version", version=f"chatapp {__version__}")
    _add_model_flags(parser)
    parser.add_argument("--raw", action="store_true",
                        help="completion mode: the model continues plain text, without the chat template (a model "
                        "without a chat template, such as a base model, always opens this way)")
    _add_sampling_flags(parser)
    _add_log_flags(parser)
    history = parser.add_argument_group("history").add_mutually_exclusive_group()
    history.add_argument("--resume", action="store_true", help="reopen the chat open at the last quit, with its settings "
                         "(flags given now on top), or else the most recently saved one")
    history.add_argument("--chat", default=None, metavar="ID", help="reopen the saved chat with this id (a unique prefix will do)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    ask = commands.add_parser("ask", help="answer prompts without the TUI, streaming text or JSON Lines")
    _add_model_flags(ask, inherited=True)
    _add_sampling_flags(ask, inherited=True)
    _add_log_flags(ask, inherited=True)
    ask.add_argument("--json", action="store_true", help="print JSON Lines: model, one line per token, one per turn")
    ask.add_argument("--raw", action="store_true", default=argparse.SUPPRESS,
                     help="continue PROMPT as plain text, without the chat template (one PROMPT; a model without "
                     "a chat template, such as a base model, works too)")
    ask.add_argument("--watch", action="append", default=None, metavar="TEXT",
                     help="with --json, add this token's probabilities and rank at every step, wherever it ranks "
                     f"(TEXT must be one token, e.g. ' Paris' with its space); repeat for several (at most {MAX_WATCH})")
    ask.add_argument("--lens", action="store_true",
                     help="with --json, add the logit lens to every step: each layer's top token and its raw "
                     "probability, read by the LM head through the final norm (the last layer is the step's own)")
    ask.add_argument(
        "prompts", nargs="+", metavar="PROMPT",
        help="user turns of one conversation, answered in order; '-' reads one from stdin, @FILE reads one "
        f"from FILE (UTF-8, at most {MAX_MESSAGE_BYTES >> 20} MiB), @@TEXT sends @TEXT",
    )
    export = commands.add_parser("export", help="write a saved chat as Markdown or JSON")
    export.add_argument("chat_id", metavar="ID", help="chat id (or a unique prefix), as the history screen shows it")
    export.add_argument("--format", choices=("md", "json"), default="md", help="output format (default: md)")
    export.add_argument("-o", "--output", default=None, metavar="PATH", help="write to PATH instead of stdout")
    listing = commands.add_parser("list", help="print the saved chats: id, last saved, turns, model, title")
    listing.add_argument("--json", action="store_true", help="print JSON Lines, one object per chat")
    config = commands.add_parser("config", help="about the config file")
    config.add_argument("--path", action="store_true", required=True, help="print where config.toml is read from")
    bench = commands.add_parser("bench", help="measure speed and memory against model.generate, as ratios")
    _add_model_flags(bench, inherited=True)
    _add_log_flags(bench, inherited=True)
    bench_format = bench.add_mutually_exclusive_group()
    bench_format.add_argument("--json", action="store_true", help="print the report as one JSON object")
    bench_format.add_argument("--markdown", action="store_true", help="print the README's performance table")
    bench.add_argument("--tokens", type=int, default=128, help="new tokens per run (default: %(default)s)")
    bench.add_argument("--runs", type=int, default=3, help="runs per configuration; medians reported (default: %(default)s)")
    return parser

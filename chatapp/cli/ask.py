"""`chatapp ask`: answer prompts headless, as streamed text or JSON Lines.

Each PROMPT is the next user turn of one conversation (`chatapp.chat.conversation`, the model the
TUI keeps too), answered in order by one engine, so later turns reuse the KV cache of earlier ones. When stdout's reader goes away (`| head`), the
turn is cancelled and the command ends quietly with `EXIT_BROKEN_PIPE`.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Callable, TextIO

from chatapp.chat.confidence import reply_confidence
from chatapp.chat.conversation import Conversation, Exchange, ReplyVersion
from chatapp.chat.settings import SamplingSettings
from chatapp.cli.preflight import EXIT_BROKEN_PIPE, silence_stdout

EXIT_MODEL = 2
"""Exit code when the model cannot be loaded."""
EXIT_GENERATION = 1
"""Exit code when a reply fails (e.g. NaN logits, prompt too long)."""
EXIT_USAGE = 2
"""Exit code when a flag's value cannot be used with the loaded model (e.g. `--watch`)."""


class StopHoldBack:
    """Streamed text, held back while it could still turn out to hold a stop sequence, so the
    printed reply, like the turn's text, stops before one.

    The engine looks for stop sequences in a step's text only when it is asked for the next
    step; so the newest step's text is never printed yet, nor the `longest - 1` characters
    before it, which a stop sequence completed by a later step could begin in."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        """Hold back for `stops` (none: print each step's text at once)."""
        self._stops = bool(stops)
        self._hold = max((len(stop) for stop in stops), default=1) - 1
        self._text = ""
        self._written = 0

    def more(self, delta: str) -> str:
        """What may be printed now that a step brought `delta`."""
        if not self._stops:
            return delta
        safe = max(self._written, len(self._text) - self._hold)  # the text before `delta` was checked
        self._text += delta
        out, self._written = self._text[self._written:safe], safe
        return out

    def rest(self, final: str) -> str:
        """What is left to print of the turn's `final` text (it ends before any stop sequence)."""
        return final[self._written:] if self._stops else ""


def watch_ids(engine, texts: list[str]) -> tuple[int, ...]:
    """The token each of `texts` (`--watch`) is; ValueError (one line) when one is not one token."""
    try:
        return tuple(engine.token_of(text) for text in texts)
    except ValueError as error:
        raise ValueError(f"--watch {error}") from None


def _json_line(out: TextIO, record: dict) -> None:
    out.write(json.dumps(record, ensure_ascii=False) + "\n")
    out.flush()


def _say_slow_steps(message: str) -> None:
    """Loading progress on stderr, but only the one-time conversion (half a minute of silence
    would look like a hang); stdout stays the answer alone."""
    if message.startswith("converting"):
        print(f"chatapp: {message}", file=sys.stderr, flush=True)


def run_ask(args: argparse.Namespace, settings: SamplingSettings, out: TextIO | None = None) -> int:
    """Load the model and answer `args.prompts` (the messages themselves); return the exit code."""
    from chatapp.engine.loader import load_engine
    from chatapp.loading.models import ModelLoadError

    out = out or sys.stdout
    try:
        engine = load_engine(args.model, args.device, args.dtype, progress=_say_slow_steps,
                             device_map=args.device_map, max_memory=args.max_memory, quantize=args.quantize,
                             top_n=args.top, context=getattr(args, "ctx", None),
                             mode="completion" if getattr(args, "raw", False) else "chat")
    except ModelLoadError as error:
        print(f"chatapp: error: {error}", file=sys.stderr)
        return EXIT_MODEL
    try:
        return _answer(engine, args, settings, out)
    except BrokenPipeError:  # the reader is gone: nobody wants the rest
        silence_stdout()
        return EXIT_BROKEN_PIPE


def _answer(engine, args: argparse.Namespace, settings: SamplingSettings, out: TextIO) -> int:
    """Answer every prompt in turn on `out` (with `--raw`, continue the one PROMPT as plain
    text, as one turn); `BrokenPipeError` when `out` has lost its reader."""
    try:
        engine.watch(watch_ids(engine, getattr(args, "watch", None) or []))
        engine.lens = getattr(args, "lens", False)
    except ValueError as error:
        print(f"chatapp: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    if args.json:
        _json_line(out, engine.info.to_json())
    if getattr(args, "raw", False):
        version = ReplyVersion(settings=settings)
        code = _write_turn(lambda: engine.start_completion(args.prompts[0], settings), 1, version, args, out)
        return EXIT_GENERATION if code is None else code
    conversation = Conversation(system=args.system or None)
    for number, prompt in enumerate(args.prompts, start=1):
        conversation.exchanges.append(Exchange(prompt))
        index = len(conversation.exchanges) - 1
        version = conversation.exchanges[index].add_version(ReplyVersion(settings=settings))
        code = _write_turn(lambda: engine.start_turn(conversation.messages_before(index), settings), number,
                           version, args, out)
        if code != 0:
            return EXIT_GENERATION if code is None else code
    return 0


def _write_turn(start: Callable[[], object], number: int, version: ReplyVersion, args: argparse.Namespace,
                out: TextIO) -> int | None:
    """Run the turn `start()` makes as turn `number`, writing it on `out` and into `version`: 0
    when it ended, 130 when interrupted, None when it failed (said on stderr)."""
    from chatapp.chat.prompt import ContextOverflowError
    from chatapp.lm_head import NonFiniteLogitsError

    turn = None
    written = StopHoldBack(version.settings.stop)
    try:
        turn = start()
        for step in turn:
            version.add_steps([step])
            if args.json:
                _json_line(out, {"type": "token", "turn": number, **step.to_json()})
            else:
                out.write(written.more(step.text))
                out.flush()
    except (ContextOverflowError, NonFiniteLogitsError) as error:
        print(f"\nchatapp: error: turn {number}: {error}", file=sys.stderr)
        return None
    except KeyboardInterrupt:
        if turn is not None:
            turn.cancel()
        print("\nchatapp: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        if turn is not None:
            turn.cancel()
        raise
    stats = turn.stats
    if args.json:
        confidence = reply_confidence(version.steps)
        _json_line(out, {"type": "turn", "turn": number, **stats.to_json(),
                         "confidence": confidence.to_json() if confidence else None})
    else:
        out.write(written.rest(stats.text))
        out.write("\n" if number == len(args.prompts) else "\n\n")
        out.flush()
    version.finish(stats)
    return 0

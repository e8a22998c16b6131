"""A scripted engine behind the real `Engine`'s interface, for Pilot and snapshot tests.

Each reply is a list of token texts; every step lists the chosen token and a few scripted
alternatives with fixed probabilities, so tests (and snapshots) are deterministic.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from chatapp.chat.records import Candidate, LensEntry, ModelInfo, Step, TurnStats, WatchedToken, WhatIf

STOP_ID = 0
"""The fake end-of-turn token."""
FAKE_INFO = ModelInfo(name="FakeLM-1", device="cpu", dtype="float32", context_length=2048, vocab_size=1000)
"""What the fake model reports."""
ALTERNATIVES = (" the", " a", "[bold]", "\n", "\ufffd")
"""Scripted runner-up tokens: a space, markup-like text, a newline, a partial character."""
CHOSEN_PROB = 0.6
"""Sampled probability of each scripted token."""
ALT_PROBS = (0.2, 0.1, 0.05, 0.03, 0.00002)
"""Sampled probabilities of the alternatives, best first."""
FAKE_TOK_PER_S = 42.0
FAKE_TTFT_MS = 2500.0
"""The time to the first token every fake turn reports."""
"""Speed the fake reports."""


class Vocab:
    """Token text <-> id, assigned on first sight (id 0 is the stop token)."""

    def __init__(self) -> None:
        self.ids: dict[str, int] = {"<|im_end|>": STOP_ID}
        self.texts: dict[int, str] = {STOP_ID: ""}

    def id(self, text: str) -> int:
        if text not in self.ids:
            self.ids[text] = len(self.ids)
            self.texts[self.ids[text]] = text
        return self.ids[text]


@dataclass
class Call:
    """One `start_turn` call, for assertions."""

    messages: list[dict]
    settings: object
    prefix_ids: list[int]


@dataclass
class FakeEngine:
    """Replies with `replies[i]` to the i-th turn (the last one repeats)."""

    replies: list[list[str]] = field(default_factory=lambda: [["Hello", ",", " world", "!"]])
    delay: float = 0.0
    """Seconds between steps."""
    gate: threading.Event | None = None
    """When set, each step after the first `gate_after` waits for this event."""
    gate_after: int = 1
    fail_at: int | None = None
    """Raise at this step index, to test error handling."""
    dropped_turns: int = 0
    """Old turns each turn reports as left out to fit the context window."""
    turns: list = field(default_factory=list)
    """Every `FakeTurn` started, in order."""
    top_n: int = 6
    info: ModelInfo = FAKE_INFO
    calls: list[Call] = field(default_factory=list)
    resets: int = 0
    vocab: Vocab = field(default_factory=Vocab)
    stop_ids: frozenset[int] = frozenset({STOP_ID})
    activity: str | None = None
    """What the runtime is doing (the real engine reports a kernel compiling)."""
    lookups: list = field(default_factory=list)
    """(prefix ids, token id) of every `odds_at` asked."""
    probes: list = field(default_factory=list)
    """(kind, prefix ids, settings tried) of every `lens_at` and `what_if_at` asked."""
    prompt_pieces: int = 0
    """Pieces a long prompt is read in before the first step, each reported through the turn's
    `on_prefill` and each waiting for `gate` when one is set (0: a short prompt, no reports)."""

    def reset(self) -> None:
        self.resets += 1

    def token_of(self, text: str) -> int:
        if len(text.split()) != 1:
            raise ValueError(f"{text!r} is {len(text.split())} tokens, not one")
        return self.vocab.id(text)

    def odds_at(self, messages, prefix_ids, settings, token_id) -> WatchedToken:
        """Scripted numbers that say where they were asked for: the rank is the step's index + 2."""
        self.lookups.append((list(prefix_ids), token_id))
        return WatchedToken(token_id, self.vocab.texts[token_id], 0.0, 0.0123, len(prefix_ids) + 2)

    def lens_at(self, messages, prefix_ids, settings) -> tuple[LensEntry, ...]:
        """Three scripted layers; the last names the token the reply chose there, as the real lens
        names the step's own top candidate."""
        self.probes.append(("lens", list(prefix_ids), settings))
        step = len(prefix_ids)
        return (LensEntry(0, self.vocab.id(" the"), " the", 0.01), LensEntry(1, self.vocab.id(f" L1#{step}"),
                f" L1#{step}", 0.2), LensEntry(2, self.vocab.id("?"), "?", CHOSEN_PROB * 0.9))

    def what_if_at(self, messages, prefix_ids, settings, other, chosen_id) -> WhatIf:
        """Scripted: the chosen token's probability is divided by the temperature tried, one
        alternative drops out and one enters."""
        self.probes.append(("what_if", list(prefix_ids), other))
        text = self.vocab.texts[chosen_id]
        chosen = Candidate(chosen_id, text, CHOSEN_PROB / other.temperature, CHOSEN_PROB * 0.9, text.encode())
        entered = Candidate(self.vocab.id(" new"), " new", 0.07, 0.01, b" new")
        dropped = Candidate(self.vocab.id(" the"), " the", 0.2, 0.18, b" the")
        return WhatIf(chosen=chosen, chosen_before=CHOSEN_PROB, top=(chosen, entered), kept_before=6, kept_after=2,
                      entered=(entered,), dropped=(dropped,), entered_count=1, dropped_count=5)

    def start_turn(self, messages, settings, reply_prefix_ids=(), stop=None) -> "FakeTurn":
        self.calls.append(Call([dict(m) for m in messages], settings, list(reply_prefix_ids)))
        tokens = self.replies[min(len(self.calls) - 1, len(self.replies) - 1)]
        self.turns.append(FakeTurn(self, tokens, list(reply_prefix_ids), messages, settings.max_new_tokens, stop))
        return self.turns[-1]

    def step(self, index: int, text: str) -> Step:
        """The scripted record for token `text` at `index`."""
        chosen = self.vocab.id(text) if text else STOP_ID
        top = [Candidate(chosen, text or "<|im_end|>", CHOSEN_PROB, CHOSEN_PROB * 0.9, (text or "<|im_end|>").encode())]
        for alt, prob in zip(ALTERNATIVES, ALT_PROBS):
            piece = b"\xe2\x80" if alt == "\ufffd" else alt.encode()
            top.append(Candidate(self.vocab.id(f"{alt}#{index}") if alt != text else chosen, alt, prob, prob * 1.1, piece))
        return Step(step=index, token_id=chosen, text=text, prob=CHOSEN_PROB, raw_prob=CHOSEN_PROB * 0.9, rank=1,
                    entropy=1.5, top=tuple(top[: self.top_n]), is_stop=not text, piece=(text or "<|im_end|>").encode())


class FakeTurn:
    """Iterates scripted steps; honours `cancel()` like the real `Turn`."""

    def __init__(self, engine: FakeEngine, tokens: list[str], prefix_ids: list[int], messages,
                 max_new_tokens: int, stop: threading.Event | None = None) -> None:
        self.engine = engine
        self.tokens = tokens + [""]  # "" is the stop token
        self.max_new_tokens = max_new_tokens
        self.prefix_len = len(prefix_ids)
        self.prefix_text = "".join(engine.vocab.texts.get(i, "").split("#")[0] for i in prefix_ids)
        prompt = sum(len(m["content"].split()) + 4 for m in messages)
        self.stats = TurnStats(prompt_tokens=prompt, cached_tokens=prompt // 2, prefill_tokens=prompt - prompt // 2,
                               dropped_turns=engine.dropped_turns)
        self._cancelled = stop if stop is not None else threading.Event()
        self.on_prefill = None
        self.spare_core = None
        """Asked before each step after the first, as the real turn asks it (what it answered: `spare_answers`)."""
        self.spare_answers: list[bool] = []
        self.ui_thread = None
        """The UI's thread, as the real turn is given it."""
        self.cores_back = 0
        """How many times the UI said it drew (`core_back`), as the real turn is told."""

    def cancel(self) -> None:
        self._cancelled.set()

    def core_back(self) -> None:
        self.cores_back += 1

    def _read_prompt(self) -> None:
        engine, total = self.engine, 1000 * self.engine.prompt_pieces
        for piece in range(engine.prompt_pieces + 1):
            if piece and engine.gate is not None:
                engine.gate.wait(timeout=10)
            if self.on_prefill is not None:
                self.on_prefill(1000 * piece, total)
            if self._cancelled.is_set():
                return

    def __iter__(self):
        engine, stats = self.engine, self.stats
        if engine.prompt_pieces:
            self._read_prompt()
        start = self.prefix_len
        texts: list[str] = []
        stats.finish_reason = "length"
        for index in range(start, min(max(start, len(self.tokens)), start + self.max_new_tokens)):
            if self._cancelled.is_set():
                stats.finish_reason = "cancelled"
                break
            if engine.gate is not None and index - start >= engine.gate_after:
                engine.gate.wait(timeout=10)
            if engine.fail_at == index:
                stats.finish_reason = "error"
                raise RuntimeError("logits became NaN at [bold]step[/bold]")
            if engine.delay:
                time.sleep(engine.delay)
            step = engine.step(index, self.tokens[index])
            texts.append(step.text)
            stats.tokens += 1
            stats.ttft_ms = stats.ttft_ms or FAKE_TTFT_MS
            yield step
            if step.is_stop:
                stats.finish_reason = "stop"
                break
            if self.spare_core is not None:
                self.spare_answers.append(self.spare_core())
        stats.text = self.prefix_text + "".join(texts)
        stats.tok_per_s = FAKE_TOK_PER_S

"""Plain records that the engine yields and the UI shows.

Nothing here imports torch or Textual: these dataclasses are the contract between the
engine (which fills them) and every view of a reply (the TUI, `chatapp ask --json`, saved chats).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

FinishReason = Literal["stop", "length", "cancelled", "error"]
"""Why a turn ended: an end-of-turn token, `max_new_tokens`, a cancel, or an error."""


@dataclass(frozen=True)
class Candidate:
    """One candidate token the LM head weighed at a step."""

    token_id: int
    """Vocabulary id of the candidate."""
    text: str
    """The candidate decoded on its own (may hold U+FFFD when it is part of a character)."""
    prob: float
    """Probability in the distribution actually sampled from (0 when filtered out)."""
    raw_prob: float
    """Probability at temperature 1 before any filter: the model's own belief."""
    piece: bytes = b""
    """The raw bytes this token contributes, for showing partial characters."""


@dataclass(frozen=True)
class WatchedToken:
    """A token the user asked to follow (`ask --watch`), as the model saw it at one step."""

    token_id: int
    """The watched token."""
    text: str
    """Its text."""
    prob: float
    """Its probability in the distribution sampled from (0 when the filters cut it)."""
    raw_prob: float
    """Its probability at temperature 1 before any filter."""
    rank: int
    """Its 1-based rank in the raw distribution."""


@dataclass(frozen=True)
class LensEntry:
    """The logit lens at one layer: the LM head applied to that layer's output (through the final
    norm, as the head sees the last layer's), at one step."""

    layer: int
    """1-based decoder layer; the last one is the step's own distribution."""
    token_id: int
    """The token the head ranks first from this layer."""
    text: str
    """Its text."""
    prob: float
    """Its probability at temperature 1, before any filter."""


@dataclass(frozen=True)
class Step:
    """One generated token and everything the LM head knew when choosing it."""

    step: int
    """0-based index of this token within the reply."""
    token_id: int
    """The chosen token."""
    text: str
    """Text this step adds to the reply: stream-safe, so joined deltas equal the decoded reply."""
    prob: float
    """Probability of the chosen token in the sampled distribution."""
    raw_prob: float
    """Probability of the chosen token at temperature 1 before any filter."""
    rank: int
    """1-based rank of the chosen token in the raw distribution (1 = most likely)."""
    entropy: float
    """Entropy of the model's raw distribution at this step, in bits."""
    top: tuple[Candidate, ...]
    """The best candidates, sorted by `prob` then `raw_prob`, best first."""
    is_stop: bool = False
    """True when the chosen token ends the turn (it adds no text)."""
    forced: bool = False
    """True when the token was imposed (branching) rather than sampled."""
    piece: bytes = b""
    """Raw bytes of the chosen token."""
    watched: tuple[WatchedToken, ...] = ()
    """The watched tokens' numbers at this step (`ask --watch`; not saved with chats)."""
    lens: tuple[LensEntry, ...] = ()
    """The logit lens at this step, one entry per layer (`ask --lens`; not saved with chats)."""

    def to_json(self) -> dict:
        """The step as a JSON-ready dict (the `token` line of `chatapp ask --json`); its `step`
        counts from 1, as the candidates panel numbers steps ("step 1" is the first token)."""
        return {
            "step": self.step + 1,
            "token_id": self.token_id,
            "text": self.text,
            "prob": self.prob,
            "raw_prob": self.raw_prob,
            "rank": self.rank,
            "entropy": self.entropy,
            "top": [
                {"token_id": c.token_id, "text": c.text, "prob": c.prob, "raw_prob": c.raw_prob}
                for c in self.top
            ],
            **({"watch": [asdict(w) for w in self.watched]} if self.watched else {}),
            **({"lens": [asdict(entry) for entry in self.lens]} if self.lens else {}),
        }


@dataclass(frozen=True)
class WhatIf:
    """One step's distribution recomputed with other sampling settings (the reply unchanged)."""

    chosen: Candidate
    """The reply's token at that step, with its probability under the new settings."""
    chosen_before: float
    """Its probability under the reply's own settings."""
    top: tuple[Candidate, ...]
    """The best candidates under the new settings, best first."""
    kept_before: int
    """How many tokens the reply's settings could sample."""
    kept_after: int
    """How many the new settings could."""
    entered: tuple[Candidate, ...]
    """The likeliest of the tokens only the new settings keep (their new probabilities)."""
    dropped: tuple[Candidate, ...]
    """The likeliest of the tokens only the reply's settings kept (their old probabilities)."""
    entered_count: int = 0
    """How many tokens only the new settings keep."""
    dropped_count: int = 0
    """How many only the reply's settings kept."""


@dataclass
class TurnStats:
    """What one turn cost and how it ended."""

    text: str = ""
    """The full reply text."""
    tokens: int = 0
    """Generated tokens, counting a stop token."""
    prompt_tokens: int = 0
    """Length of the templated conversation for this turn."""
    cached_tokens: int = 0
    """How many prompt tokens the KV cache already held."""
    prefill_tokens: int = 0
    """How many prompt tokens were run before the first new token."""
    dropped_turns: int = 0
    """Oldest conversation turns dropped to fit the context window."""
    ttft_ms: float = 0.0
    """Time to the first new token, in milliseconds."""
    tok_per_s: float = 0.0
    """Decode speed after the first token."""
    finish_reason: FinishReason = "stop"
    """Why the turn ended."""
    error: str = ""
    """A one-line message when `finish_reason` is "error"."""

    def to_json(self) -> dict:
        """The stats as a JSON-ready dict (the `turn` line of `chatapp ask --json`)."""
        data = asdict(self)
        data.pop("error")
        return data


@dataclass(frozen=True)
class ModelInfo:
    """What the UI shows about the loaded model."""

    name: str
    """Human name, e.g. SmolLM2-135M-Instruct."""
    device: str
    """Device the weights live on, e.g. cpu or cuda:0."""
    dtype: str
    """Weight dtype, e.g. float32."""
    context_length: int
    """Maximum tokens the model attends to."""
    vocab_size: int
    """Number of tokens in the LM head's output."""
    notes: tuple[str, ...] = field(default_factory=tuple)
    """Quality-relevant facts, e.g. "weights dequantized from Q4_1"."""
    quantization: str = ""
    """How the weights are held when not plainly in `dtype`: "int4" (repacked, changes outputs
    slightly) or "gguf" (the GGUF file's own blocks, exact); empty when none."""
    completion: bool = False
    """Completion mode: the model continues plain text (the conversation's pieces one after
    another, no chat template): `--raw`, or a model without a chat template."""
    can_chat: bool = True
    """Whether the model has a chat template (without one, it can only continue text)."""
    spec: str = ""
    """The `--model` spec it was loaded from, a file or folder as an absolute path ("" when
    unknown): what `/model` takes to load it again."""

    def to_json(self) -> dict:
        """The `model` line of `chatapp ask --json`."""
        return {
            "type": "model",
            "name": self.name,
            "device": self.device,
            "dtype": self.dtype,
            "context_length": self.context_length,
            "vocab_size": self.vocab_size,
            "mode": "completion" if self.completion else "chat",
            "weights": self.quantization or self.dtype,
            "notes": list(self.notes),
        }

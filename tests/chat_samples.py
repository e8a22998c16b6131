"""Fake saved chats built straight from the dataclasses (no model), for the persistence tests.

Deterministic: the same arguments always give equal chats, so a child process and the test
that kills it agree on what a complete save must hold.
"""

from __future__ import annotations

from datetime import datetime, timezone

from chatapp.chat.conversation import Conversation, Exchange, ReplyVersion, branch_version
from chatapp.chat.records import Candidate, Step, TurnStats
from chatapp.chat.settings import SamplingSettings
from chatapp.storage.chat_file import SavedChat

WORDS = ("Hello", " world", " 你好", " [bold]", " café", "\n", " 🙂", " [/INST]", " the", " end")
"""Token texts: multi-byte characters and markup-like text that must survive literally."""


def candidate(seed: int, rank: int) -> Candidate:
    """A candidate with awkward floats and bytes (a partial UTF-8 character every few)."""
    word = WORDS[(seed + rank) % len(WORDS)]
    partial = (seed + rank) % 7 == 0
    return Candidate(
        token_id=(seed * 31 + rank * 7) % 49152,
        text="\ufffd" if partial else word,
        prob=0.0 if rank > 7 else 1 / (rank + 2 + seed % 3),
        raw_prob=1 / (rank + 3) ** 1.7 + 1e-300 * (seed % 2),
        piece=word.encode()[-1:] if partial else word.encode(),
    )


def step(index: int, seed: int, top: int = 10, *, stop: bool = False) -> Step:
    """One generated token with `top` candidates."""
    cands = tuple(candidate(seed + index, r) for r in range(top))
    chosen = cands[index % min(top, 3)] if top else candidate(seed, 0)
    return Step(
        step=index,
        token_id=chosen.token_id,
        text="" if stop else chosen.text.replace("\ufffd", ""),
        prob=chosen.prob,
        raw_prob=chosen.raw_prob,
        rank=1 + index % 3,
        entropy=3.25 / (index + 1),
        top=cands,
        is_stop=stop,
        piece=chosen.piece,
    )


def reply(seed: int, tokens: int, top: int = 10, *, status: str = "done",
          settings: SamplingSettings | None = None) -> ReplyVersion:
    """A reply version of `tokens` steps; a finished one ends with a stop token and has stats."""
    version = ReplyVersion(settings=settings or SamplingSettings())
    done = status not in ("streaming", "stopped")
    version.add_steps(step(i, seed, top, stop=done and i == tokens - 1) for i in range(tokens))
    if status == "streaming":
        return version
    reason = {"stopped": "cancelled", "error": "error"}.get(status, "stop")
    version.finish(TurnStats(text=version.text, tokens=tokens, prompt_tokens=17 + seed, cached_tokens=5,
                             prefill_tokens=12, ttft_ms=41.5 + seed / 7, tok_per_s=88.125,
                             finish_reason=reason, error="boom" if status == "error" else ""))
    if status == "error":
        version.fail("boom: out of memory")
    return version


def big_chat(turns: int, tokens: int = 100, top: int = 10, *, chat_id: str = "big") -> SavedChat:
    """A long chat: `turns` exchanges with one finished reply each."""
    exchanges = [Exchange(user=f"question {t}: {WORDS[t % len(WORDS)]}") for t in range(turns)]
    for t, exchange in enumerate(exchanges):
        exchange.add_version(reply(t, tokens, top))
    return SavedChat(Conversation(system="Be brief.", exchanges=exchanges), id=chat_id, model="tiny-llama",
                     created=datetime(2025, 1, 2, 3, 4, 5, 678901, tzinfo=timezone.utc))


def rich_chat() -> SavedChat:
    """Every case at once: branches (one with an exchange put away after it), regenerations, all
    statuses, odd settings, no-reply exchange."""
    odd = SamplingSettings(temperature=0.0, top_k=0, top_p=0.9, min_p=0.05, repetition_penalty=1.1,
                           seed=2**63 - 1, max_new_tokens=7)
    first = Exchange(user="Hi [b]there[/b]\nsecond line")
    first.add_version(reply(1, 12))
    first.add_version(reply(2, 9, status="stopped", settings=odd))
    branch, _ = branch_version(first.versions[0], 4, first.versions[0].steps[4].top[5], odd)
    branch.add_steps(step(i, 9) for i in range(5, 8))
    branch.status = "done"
    first.add_version(branch)
    first.current = 1
    put_away = Exchange(user="And on the first branch?")
    put_away.add_version(reply(6, 4))
    put_away.add_version(reply(7, 3)).status = "stopped"
    put_away.versions[0].later = [Exchange(user="deeper")]  # a branch inside a put-away branch
    first.versions[0].later = [put_away]
    second = Exchange(user="Why?")
    second.add_version(reply(3, 5, status="error"))
    second.add_version(reply(4, 0, top=0))
    third = Exchange(user="日本語で")
    third.add_version(reply(5, 6, top=3))
    fourth = Exchange(user="(no reply yet)")
    conversation = Conversation(system=None, exchanges=[first, second, third, fourth])
    return SavedChat(conversation, id="rich", title="A rich chat", model="SmolLM2-135M-Instruct")


GROW_BASE = 20
"""Exchanges of the chat that `grow` continues (a `big_chat(GROW_BASE)`)."""
GROW_LENGTH = 100
"""Tokens of each reply `grow` writes."""


def grow(chat: SavedChat, turn: int, tokens: int) -> None:
    """Continue a `big_chat(GROW_BASE)` to follow-up `turn` with `tokens` tokens of its reply.

    Deterministic however it is reached, so a test can rebuild what a killed writer had.
    The reply is "streaming" until it has `GROW_LENGTH` tokens, then finished.
    """
    exchanges = chat.conversation.exchanges
    index = GROW_BASE + turn
    if len(exchanges) == index:
        exchanges.append(Exchange(user=f"follow-up {turn}"))
        exchanges[index].add_version(ReplyVersion(settings=SamplingSettings()))
    version = exchanges[index].reply
    seed = 1000 + turn
    version.add_steps(step(i, seed, stop=i == GROW_LENGTH - 1) for i in range(len(version.steps), tokens))
    if tokens == GROW_LENGTH:
        version.finish(TurnStats(text=version.text, tokens=GROW_LENGTH))

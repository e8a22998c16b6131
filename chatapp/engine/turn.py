"""One turn: the prefill of its prompt, then one token at a time through the LM head.

`Turn` is what `Engine.start_turn` (and `start_completion`) return: iterating it runs the model
and yields one `Step` per generated token, each chosen by `chatapp.lm_head.choose_token` (on a GPU
through `chatapp.engine.device_steps`, reading back to the host once a step); when
iteration ends, `stats` holds the turn's `TurnStats`. `cancel()` (or the stop event it was given)
ends it before its next step, or between the pieces of a long prompt.
"""

from __future__ import annotations

import random
import threading
import time
from typing import TYPE_CHECKING, Callable, Iterator

import torch

from chatapp.chat.records import Step, TurnStats, WatchedToken
from chatapp.chat.settings import SamplingSettings
from chatapp.engine.core_lending import CoreLending
from chatapp.engine.detokenizer import ReplyDetokenizer
from chatapp.engine.device_steps import choose_on_device
from chatapp.lm_head import Choice, choice_from, choose_token, native_choice_settings

if TYPE_CHECKING:
    from chatapp.engine.engine import Engine

PREFILL_CHUNK = 512
"""Most prompt tokens run in one prefill call: a longer prompt reports its progress, and can
be stopped, between pieces of this size (each piece still reads the weights once for hundreds
of tokens)."""
MAX_SEED_DRAW = 2**31 - 1
"""Range of the fresh seed drawn for a turn when the user set none."""


def find_stop(text: str, stops: tuple[str, ...], added: int) -> int | None:
    """Where the earliest of `stops` begins in `text`, among those the last `added` characters
    completed (earlier ones were looked for before), or None."""
    found = [text.find(stop, max(0, len(text) - added - len(stop) + 1)) for stop in stops]
    found = [at for at in found if at >= 0]
    return min(found) if found else None


class Turn:
    """One assistant reply in the making: iterate it for `Step`s, then read `stats`."""

    def __init__(
        self,
        engine: Engine,
        prompt_ids: list[int],
        prompt_text: str,
        settings: SamplingSettings,
        dropped_turns: int,
        prefix_len: int,
        seed: int | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        """Created by `Engine.start_turn`; `seed` is this turn's (`turn_seed`), None to draw one;
        `stop` is the event that stops it."""
        self.engine = engine
        self.prompt_ids = prompt_ids
        self.prompt_text = prompt_text
        self.settings = settings
        self.prefix_len = prefix_len
        self.seed = seed if seed is not None else random.randint(0, MAX_SEED_DRAW)
        """The seed this turn samples with: derived from the settings' seed and the turn's
        index (`turn_seed`), or drawn fresh when the settings have none."""
        prompt_len = len(prompt_ids) - prefix_len
        self.stats = TurnStats(prompt_tokens=prompt_len, dropped_turns=dropped_turns)
        self.generated_ids: list[int] = []
        """Tokens chosen by this turn (after any forced prefix)."""
        self._cancelled = stop if stop is not None else threading.Event()
        self._torch_generator: torch.Generator | None = None
        self.on_prefill: Callable[[int, int], None] | None = None
        """Called with (tokens prefilled, tokens to prefill) as a long prompt is read (set it
        before iterating; it runs on the iterating thread)."""
        self.spare_core: Callable[[], bool] | None = None
        """Asked before each decode step, if set: while it answers True (a UI is drawing what the
        turn reported), the step's loops on chatapp's kernels leave that UI a core
        (`chatapp.engine.core_lending`)."""
        self.ui_thread: int | None = None
        """Linux id of the UI's thread, if set: for the length of the iteration, bound to the CPU
        the lending steps leave it (`CoreLending`)."""
        self._lending: CoreLending | None = None
        """What the running iteration lends (`core_back` reaches it from the UI's thread)."""
        self.context_vector: torch.Tensor | None = None
        """`(d_model,)` the final block's output from which the latest step was chosen."""

    def core_back(self) -> None:
        """(any thread) The UI has drawn: the step running now takes back the core it left it
        from its next loop on, not from the next step (`CoreLending.reclaim`)."""
        lending = self._lending
        if lending is not None:
            lending.reclaim()

    def _generator(self, device: torch.device) -> torch.Generator:
        """The turn's generator, seeded with `seed`, made on the device the LM head's output
        lands on at its first draw."""
        if self._torch_generator is None:
            self._torch_generator = torch.Generator(device=device).manual_seed(self.seed)
        return self._torch_generator

    def _prefill(self, decoder, todo: list[int]) -> torch.Tensor:
        """Run `todo` through the model after what the cache holds, in pieces of at most
        `PREFILL_CHUNK` tokens; the last position's hidden state `(d_model,)`. A cancel between
        pieces leaves the rest unread (the turn then ends before its first step)."""
        if len(todo) <= PREFILL_CHUNK:
            return decoder.prefill(todo)
        report = self.on_prefill or (lambda done, total: None)
        report(0, len(todo))
        for at in range(0, len(todo), PREFILL_CHUNK):
            hidden = decoder.prefill(todo[at : at + PREFILL_CHUNK])
            report(min(at + PREFILL_CHUNK, len(todo)), len(todo))
            if self._cancelled.is_set():
                break
        return hidden

    def _read_prompt(self, decoder, todo: list[int], lens: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The prompt's last context vector, and with `lens` every layer's `(layers, d_model)`
        (its last token then runs on its own, keeping each layer's output)."""
        if not lens:
            return self._prefill(decoder, todo), None
        if len(todo) > 1:
            self._prefill(decoder, todo[:-1])
        layers = decoder.decode_one_layers(todo[-1])
        return layers[-1], layers

    def _choose(self, hidden: torch.Tensor, penalty_ids: torch.Tensor | None, watch_ids: tuple[int, ...],
                watch_index: torch.Tensor | None) -> tuple[Choice, torch.Tensor | None]:
        """The next token's choice from `hidden` through the LM head, and on a GPU the drawn
        token `(1,)` still on the device (`chatapp.engine.device_steps`: the step's one read back
        to the host is `choice_from`'s copy); None for it elsewhere. `watch_ids` are the turn's
        watched tokens, `watch_index` the same on the device (on a GPU)."""
        engine = self.engine
        if engine.steps_on_device:
            numbers, token = choose_on_device(engine.model, hidden, self.settings, self._generator, engine.top_n,
                                              penalty_ids, watch_index)
            return choice_from(numbers, watch_ids), token
        return choose_token(engine.model, hidden, self.settings, self._generator, engine.top_n, penalty_ids,
                            watch_ids), None

    def _decode(self, decoder, token_id: int, penalty_ids: torch.Tensor | None) -> tuple[torch.Tensor, Choice | None]:
        """Run `token_id` (with no watched tokens, as one native call that chooses the next token
        too, where the decoder has one: `decode_choosing`); the context vector and that choice,
        or the context vector and None (choose it with `choose_token`)."""
        engine = self.engine
        if not engine.watch_ids:
            head = engine.model.get_output_embeddings()
            choice_settings = native_choice_settings(self.settings, self._generator(decoder.device), engine.top_n,
                                                     penalty_ids)
            answer = decoder.decode_choosing(token_id, head, choice_settings)
            if answer is not None:
                numbers, _, _, hidden = answer
                return hidden, choice_from(numbers)
        return decoder.decode_one(token_id), None

    def cancel(self) -> None:
        """Stop before the next step (safe from any thread)."""
        self._cancelled.set()

    def __iter__(self) -> Iterator[Step]:
        engine = self.engine
        with engine._lock, torch.inference_mode():
            yield from self._run(engine)

    def _run(self, engine: Engine) -> Iterator[Step]:
        decoder, settings, stats = engine.decoder, self.settings, self.stats
        start = time.perf_counter()
        ids = self.prompt_ids
        # Keep at least one token to run: its hidden state is where the reply starts.
        cached = min(decoder.common_prefix(ids), len(ids) - 1)
        decoder.keep(cached)
        stats.cached_tokens = min(cached, stats.prompt_tokens)
        stats.prefill_tokens = len(ids) - cached
        room = engine.info.context_length - len(ids)
        budget = max(0, min(settings.max_new_tokens, room))
        detok = ReplyDetokenizer(engine.tokenizer)
        for forced in ids[len(ids) - self.prefix_len :]:
            detok.step(forced)  # the reply's forced start is part of its text
        penalty_ids = torch.tensor(ids, dtype=torch.long, device=decoder.device) if settings.repetition_penalty else None
        watch_ids = engine.watch_ids  # this turn's, whatever changes them meanwhile
        watch_index = (torch.tensor(watch_ids, dtype=torch.long, device=decoder.device)
                       if engine.steps_on_device and watch_ids else None)
        stats.finish_reason = "length"
        first_token_at = None
        stop_at = None  # where a stop sequence begins in the reply's text, once one appears
        lending = None
        try:
            lending = self._lending = CoreLending(decoder.device, self.ui_thread)
            hidden, layers = self._read_prompt(decoder, ids[cached:], engine.lens)  # (d_model,), (L, d_model)
            choice = None  # the next step's, where the decoder chose it with its decode step
            token = None  # on a GPU, the drawn token on the device
            for index in range(budget):
                if self._cancelled.is_set():
                    stats.finish_reason = "cancelled"
                    break
                self.context_vector = hidden
                engine.take_up_kernels()
                if choice is None:
                    choice, token = self._choose(hidden, penalty_ids, watch_ids, watch_index)
                token_id = choice.token_id
                self.generated_ids.append(token_id)
                is_stop = token_id in engine.stop_ids
                delta = "" if is_stop else detok.step(token_id)
                if first_token_at is None:
                    first_token_at = time.perf_counter()
                    stats.ttft_ms = (first_token_at - start) * 1000.0
                stats.tokens += 1
                yield Step(
                    step=self.prefix_len + index,
                    token_id=token_id,
                    text=delta,
                    prob=choice.prob,
                    raw_prob=choice.raw_prob,
                    rank=choice.rank,
                    entropy=choice.entropy,
                    top=engine.candidates(choice.top_ids, choice.top_probs, choice.top_raw_probs),
                    is_stop=is_stop,
                    piece=engine.token_texts.piece(token_id),
                    watched=tuple(WatchedToken(i, engine.token_texts.text(i), p, r, k) for i, p, r, k in choice.watched),
                    lens=engine.lens_entries(layers) if layers is not None else (),
                )
                if is_stop:
                    stats.finish_reason = "stop"
                    break
                if settings.stop:
                    stop_at = find_stop(detok.text, settings.stop, len(delta))
                    if stop_at is not None:  # the text ends before it; its tokens stay recorded
                        stats.finish_reason = "stop"
                        break
                if index + 1 < budget:
                    if penalty_ids is not None:
                        newest = token.to(penalty_ids.device) if token is not None else penalty_ids.new_tensor([token_id])
                        penalty_ids = torch.cat([penalty_ids, newest])
                    lending.bind()
                    if self.spare_core is not None and self.spare_core():
                        lending.lend()
                    else:
                        lending.reclaim()
                    if token is not None and layers is None:
                        hidden, choice = decoder.decode_one(token_id, token), None
                    elif layers is None:
                        hidden, choice = self._decode(decoder, token_id, penalty_ids)
                    else:
                        layers, choice = decoder.decode_one_layers(token_id), None
                        hidden = layers[-1]
        except GeneratorExit:
            stats.finish_reason = "cancelled"
            raise
        except Exception:
            # The cache may hold a half-run step: start clean next time, keep nothing unsure.
            decoder.reset()
            engine._remember("", [])
            stats.finish_reason = "error"
            raise
        finally:
            if lending is not None:
                lending.end()
            end = time.perf_counter()
            if first_token_at is not None and stats.tokens > 1:
                stats.tok_per_s = (stats.tokens - 1) / max(end - first_token_at, 1e-9)
            stats.text = detok.text if stop_at is None else detok.text[:stop_at]
            if stats.finish_reason != "error":
                engine._remember(
                    self.prompt_text + engine.tokenizer.decode(self.generated_ids, skip_special_tokens=False),
                    ids + self.generated_ids,
                )

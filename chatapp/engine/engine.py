"""The chat engine: a conversation in, a stream of `Step` records out.

Contract: `Engine.start_turn(messages, settings)` returns a `Turn` (`chatapp.engine.turn`);
iterating the turn runs the model and yields one `Step` per generated token, as soon as it is
chosen. Nothing is shown here: the caller (TUI worker, `chatapp ask`, a test) decides what to do
with each step. When the iteration ends, `turn.stats` holds the turn's `TurnStats`;
`turn.cancel()` (from any thread) ends it before the next step with finish_reason "cancelled".
A prompt longer than `turn.PREFILL_CHUNK` tokens is run in pieces of that size:
`turn.on_prefill(done, total)`, when set, hears of each (first with 0 done), and a cancel takes
effect between them.

One KV cache serves the whole conversation. For each turn, the engine prefills only the tokens
the cache does not already hold (the previous reply included), and a regenerate or a branch
crops the cache back to the shared prefix. Message content is tokenized as text: a special
token string typed in a message is never a control token (`chatapp.chat.prompt.encode_prompt`).
This module imports no UI code.

Seeds: with `settings.seed` set, each turn samples from its own stream, derived from the seed
and the turn's index (the assistant messages before it; `turn_seed`), so turn 2 does not
replay turn 1, and the same seed over the same conversation gives the same replies.
Regenerating a turn (same messages before it, same seed) therefore gives the same reply again;
a branch continues the same stream from its forced prefix.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import replace

import torch

from chatapp.chat.prompt import ContextOverflowError, Message, encode_prompt, fit_to_context
from chatapp.chat.records import Candidate, LensEntry, ModelInfo, WatchedToken, WhatIf
from chatapp.chat.settings import DEFAULT_TOP_N, SamplingSettings
from chatapp.engine.detokenizer import TokenTexts, vocabulary_ids
from chatapp.engine.device_steps import steps_on_device
from chatapp.engine.step_probes import logit_lens, what_if
from chatapp.engine.turn import Turn
from chatapp.lm_head import output_logits, use_kernels
from chatapp.loading.models import LoadedModel
from chatapp.runtime import block_kernel
from chatapp.runtime.decoder_choice import open_decoder

END_OF_TURN_MARKERS = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "<|endoftext|>")
"""Common end-of-turn tokens, used when present in the vocabulary besides the model's EOS."""
TURN_SEED_BYTES = 7
"""Size of a derived turn seed: 56 bits, inside torch.Generator's (and the settings') range."""


def turn_seed(seed: int, turn_index: int) -> int:
    """The seed turn `turn_index` (0 for the first reply) of a conversation seeded `seed`
    samples with: `seed` itself for the first turn (a one-turn chat is as before), then a
    BLAKE2 hash of both, so every turn draws its own reproducible stream."""
    if turn_index == 0:
        return seed
    digest = hashlib.blake2b(f"{seed}:{turn_index}".encode(), digest_size=TURN_SEED_BYTES).digest()
    return int.from_bytes(digest, "big")


def turn_index(messages: list[Message]) -> int:
    """Which reply of the conversation answers `messages`: the assistant messages before it."""
    return sum(1 for message in messages if message["role"] == "assistant")


def stop_token_ids(loaded: LoadedModel) -> frozenset[int]:
    """Tokens that end an assistant turn for this model."""
    ids: set[int] = set()
    eos = getattr(getattr(loaded.model, "generation_config", None), "eos_token_id", None)
    ids.update(eos if isinstance(eos, (list, tuple)) else [eos] if eos is not None else [])
    if loaded.tokenizer.eos_token_id is not None:
        ids.add(loaded.tokenizer.eos_token_id)
    ids.update(token for token in vocabulary_ids(loaded.tokenizer, END_OF_TURN_MARKERS) if token is not None)
    return frozenset(ids)


class Engine:
    """Generates chat replies through our LM head, one step at a time, with a KV cache."""

    def __init__(self, loaded: LoadedModel, top_n: int = DEFAULT_TOP_N) -> None:
        """Wrap a loaded model.

        Args:
            loaded: model, tokenizer and info from `chatapp.loading.models.load_model`.
            top_n: candidates reported per step.
        """
        self.loaded = loaded
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.info: ModelInfo = loaded.info
        self.top_n = top_n
        self.stop_ids = stop_token_ids(loaded)
        self.token_texts = TokenTexts(self.tokenizer)
        self.decoder = open_decoder(self.model)
        """The conversation's KV cache and the decoder that fills it."""
        self.steps_on_device = steps_on_device(self.decoder.device)
        """Whether each step's choice stays on the model's device until one copy to the host
        (`chatapp.engine.device_steps`): on a GPU. On a CPU, `choose_token` and the kernels'
        whole steps."""
        head_note = getattr(self.model.get_output_embeddings(), "note", None)  # a head the decoder took up
        if head_note:
            self.info = replace(self.info, notes=(*self.info.notes, head_note))
        self._step_kernels = False
        use_kernels()  # torch's top-k until `take_up_kernels` finds the block kernel
        self.take_up_kernels()
        self.watch_ids: tuple[int, ...] = ()
        """Tokens whose numbers every step also reports (`ask --watch`), wherever they rank."""
        self.lens = False
        """Whether every step also reports its logit lens (`ask --lens`): the layers then run one
        at a time, keeping each one's output."""
        # The logical transcript: what the cache holds plus tokens chosen but not yet run.
        self._transcript_text = ""
        self._transcript_ids: list[int] = []
        self._lock = threading.Lock()

    def take_up_kernels(self) -> None:
        """Run the LM head's top-k, kept ids and raw numbers on the block kernel once this process
        has loaded it (a model in GGUF blocks loads it; for an int4 model, the int4 kernel's thread
        loads it when it was built before). Called before each step: never compiles anything."""
        if not self._step_kernels and (steps := block_kernel.lm_head_steps()) is not None:
            use_kernels(*steps)
            self._step_kernels = True

    def watch(self, ids: tuple[int, ...]) -> None:
        """Report the numbers of these tokens at every step too (`Step.watched`); an int4 LM head
        computes their logits in float32, as it does its best ones."""
        self.watch_ids = tuple(ids)
        head = self.model.get_output_embeddings()
        if hasattr(head, "always_exact"):
            head.always_exact = torch.tensor(self.watch_ids, dtype=torch.long) if ids else None

    @property
    def activity(self) -> str | None:
        """What the runtime is busy with beside answering (compiling its kernel), or None."""
        return getattr(self.decoder, "activity", None)

    def start_turn(
        self,
        messages: list[Message],
        settings: SamplingSettings,
        reply_prefix_ids: list[int] | tuple[int, ...] = (),
        stop: threading.Event | None = None,
        plain: bool | None = None,
    ) -> "Turn":
        """Prepare the assistant's reply to `messages` (whose last message is the user's); in
        completion mode, the continuation of their contents as one plain text.

        Args:
            messages: the conversation so far.
            settings: validated sampling settings.
            reply_prefix_ids: tokens the reply must start with (branching); generation continues
                after them.
            stop: the event that stops the turn (`Turn.cancel` sets it): the caller's own, so
                that setting it from any thread stops the turn, even before it starts or while
                it reads a long prompt; None for a new one.
            plain: render `messages` as plain text (`chatapp.chat.prompt.render_plain`) instead of
                with the chat template; None: as the model was loaded (`ModelInfo.completion`).

        Raises:
            ContextOverflowError: the last message alone does not fit the context window.
        """
        plain = self.info.completion if plain is None else plain
        fitted = fit_to_context(self.tokenizer, messages, self.info.context_length, settings.max_new_tokens, plain)
        prefix = list(reply_prefix_ids)
        text = fitted.text + self.tokenizer.decode(prefix, skip_special_tokens=False) if prefix else fitted.text
        if self._transcript_text and fitted.text.startswith(self._transcript_text):
            # Extend the exact ids of the previous turns so the cache matches token for token.
            start = len(self._transcript_text)
            prompt_ids = self._transcript_ids + encode_prompt(self.tokenizer, fitted.text, fitted.content_spans, start)
        else:
            prompt_ids = list(fitted.ids)
        prompt_ids = prompt_ids + prefix
        seed = None if settings.seed is None else turn_seed(settings.seed, turn_index(messages))
        return Turn(self, prompt_ids, text, settings, fitted.dropped_turns, len(prefix), seed, stop)

    def token_of(self, text: str) -> int:
        """The one token `text` is; ValueError (one line, naming its pieces) when it is not one."""
        found = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(found) != 1:
            pieces = "|".join(self.token_texts.text(i) for i in found) or "nothing"
            raise ValueError(f"{text!r} is {len(found)} tokens ({pieces}), not one: look up a single token, "
                             "e.g. its first piece")
        return found[0]

    def odds_at(self, messages: list[Message], prefix_ids: list[int], settings: SamplingSettings,
                token_id: int) -> WatchedToken:
        """The numbers of `token_id` at the step after `prefix_ids` of the reply to `messages`,
        computed by the model at that step: the cache is cropped to the shared prefix and that one
        step is run again (nothing is kept of it but the cache). With the reply's `settings`, its
        sampled probability is the one that step had."""
        watching = self.watch_ids
        self.watch((token_id,))
        try:
            step_settings = replace(settings, max_new_tokens=1, stop=())
            [step] = list(self.start_turn(messages, step_settings, reply_prefix_ids=prefix_ids))
        finally:
            self.watch(watching)
        return step.watched[0]

    def lens_at(self, messages: list[Message], prefix_ids: list[int], settings: SamplingSettings
                ) -> tuple[LensEntry, ...]:
        """The logit lens at the step after `prefix_ids` of the reply to `messages`: that step run
        again from the cache, its layers one at a time (`Step.lens`)."""
        lens, self.lens = self.lens, True
        try:
            [step] = list(self.start_turn(messages, replace(settings, max_new_tokens=1, stop=()),
                                          reply_prefix_ids=prefix_ids))
        finally:
            self.lens = lens
        return step.lens

    def what_if_at(self, messages: list[Message], prefix_ids: list[int], settings: SamplingSettings,
                   other: SamplingSettings, chosen_id: int) -> WhatIf:
        """The step after `prefix_ids` of the reply to `messages` (sampled with `settings`, where
        `chosen_id` was chosen) as `other` settings would have sampled it: the step is run again
        from the cache and both distributions come from its logits."""
        turn = self.start_turn(messages, replace(settings, max_new_tokens=1, stop=()), reply_prefix_ids=prefix_ids)
        list(turn)
        with self._lock, torch.inference_mode():
            logits = output_logits(self.model, turn.context_vector)  # (V,)
            previous = torch.tensor(turn.prompt_ids, dtype=torch.long, device=logits.device)
            numbers = what_if(logits, previous, settings, other, chosen_id, self.top_n)
        listed = self.listed
        return WhatIf(
            chosen=listed([numbers.chosen])[0],
            chosen_before=numbers.chosen_before,
            top=listed(numbers.top),
            kept_before=numbers.kept_before,
            kept_after=numbers.kept_after,
            entered=listed(numbers.entered),
            dropped=listed(numbers.dropped),
            entered_count=numbers.entered_count,
            dropped_count=numbers.dropped_count,
        )

    def lens_entries(self, layer_states: torch.Tensor) -> tuple[LensEntry, ...]:
        """The logit lens of one step from its layers' context vectors `(layers, d_model)`."""
        texts = self.token_texts
        return tuple(LensEntry(layer + 1, token, texts.text(token), prob)
                     for layer, (token, prob) in enumerate(logit_lens(self.model, layer_states)))

    def start_completion(self, text: str, settings: SamplingSettings, stop: threading.Event | None = None) -> "Turn":
        """Prepare the continuation of plain `text`, without a chat template (`ask --raw`): the
        model writes on from its last token, through the same LM head, until its end-of-text
        token or `settings.max_new_tokens`.

        Raises:
            ContextOverflowError: `text` is empty, or fills the context window.
        """
        if not text:
            raise ContextOverflowError("the text is empty")
        return self.start_turn([{"role": "user", "content": text}], settings, stop=stop, plain=True)

    def reset(self) -> None:
        """Forget the cache and transcript (new chat)."""
        with self._lock:
            self.decoder.reset()
            self._transcript_text = ""
            self._transcript_ids = []

    def _remember(self, text: str, ids: list[int]) -> None:
        self._transcript_text = text
        self._transcript_ids = ids

    def listed(self, rows: list[tuple[int, float, float]]) -> tuple[Candidate, ...]:
        """Candidate records for (id, probability, raw probability) rows."""
        return self.candidates([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows])

    def candidates(self, top_ids: list[int], probs: list[float], raws: list[float]) -> tuple[Candidate, ...]:
        """Candidate records for token ids with their probabilities."""
        texts = self.token_texts
        return tuple(
            Candidate(token_id=i, text=texts.text(i), prob=p, raw_prob=r, piece=texts.piece(i))
            for i, p, r in zip(top_ids, probs, raws)
        )

"""End to end: the real TUI on the real default model (SmolLM2-135M-Instruct)."""

from __future__ import annotations

import pytest

from chatapp.chat.settings import SamplingSettings
from chatapp.engine.engine import Engine
from chatapp.loading.models import load_model
from chatapp.tui.app import make_app
from chatapp.tui.formatting import format_percent
from chatapp.tui.widgets.status_bar import StatusBar
from chatapp.tui.widgets.topk_panel import TopKPanel
from tests.tui.conftest import send, wait_until

pytestmark = [pytest.mark.model, pytest.mark.anyio]

MODEL_TIMEOUT = 120.0
"""Seconds allowed for loading (a first run converts the GGUF) and for a reply."""
REPLY_TOKENS = 24
"""Reply length for the end-to-end turn."""


class RecordingEngine:
    """The real engine, keeping every `Step` its turns yield."""

    def __init__(self, engine: Engine) -> None:
        self.engine, self.info, self.top_n, self.stop_ids = engine, engine.info, engine.top_n, engine.stop_ids
        self.steps = []
        self.turns = []

    def reset(self) -> None:
        self.engine.reset()

    def start_turn(self, messages, settings, reply_prefix_ids=(), stop=None):
        turn = self.engine.start_turn(messages, settings, reply_prefix_ids, stop)
        self.turns.append(turn)
        recorder = self

        class Recorded:
            """The turn itself (every attribute read and set through), its steps recorded."""

            def __getattr__(self, name):
                return getattr(turn, name)

            def __setattr__(self, name, value):
                setattr(turn, name, value)

            def __iter__(self):
                for step in turn:
                    recorder.steps.append(step)
                    yield step

        return Recorded()


@pytest.fixture(scope="module")
def recording():
    progress: list[str] = []
    engine = RecordingEngine(Engine(load_model(progress=progress.append), top_n=10))
    engine.progress = progress
    return engine


def panel_text(app) -> str:
    return app.chat.query_one(TopKPanel).render().plain


async def test_reply_arrives_and_the_panel_matches_the_engine(recording):
    recording.steps.clear()
    settings = SamplingSettings(seed=7, max_new_tokens=REPLY_TOKENS)
    app = make_app(settings=settings, load_engine=lambda progress: recording)
    async with app.run_test(size=(120, 36)) as pilot:
        await wait_until(pilot, lambda: app.chat.engine is not None, MODEL_TIMEOUT)
        await send(pilot, "Name three colours.", wait=False)
        await wait_until(pilot, lambda: not app.chat.generating, MODEL_TIMEOUT)
        reply = app.chat.conversation.last.reply
        assert reply.status == "done" and reply.text.strip()
        assert reply.steps == recording.steps and reply.text == recording.turns[-1].stats.text
        assert "SmolLM2-135M-Instruct" in str(app.chat.query_one(StatusBar).render())
        # The panel shows the last step; the inspector shows any other, with the engine's numbers.
        assert app.chat.query_one(TopKPanel).view.step == recording.steps[-1]
        await pilot.press("ctrl+t", "home")
        for index in (0, 1, 2):
            step = recording.steps[index]
            assert app.chat.query_one(TopKPanel).view.step == step
            text = panel_text(app)
            for candidate in step.top:
                assert format_percent(candidate.prob) in text and format_percent(candidate.raw_prob) in text
            await pilot.press("right")


async def test_branching_on_the_real_model_reuses_the_cache(recording):
    settings = SamplingSettings(seed=3, max_new_tokens=12)
    app = make_app(settings=settings, load_engine=lambda progress: recording)
    async with app.run_test(size=(120, 36)) as pilot:
        await wait_until(pilot, lambda: app.chat.engine is not None, MODEL_TIMEOUT)
        await send(pilot, "Say hello.", wait=False)
        await wait_until(pilot, lambda: not app.chat.generating, MODEL_TIMEOUT)
        old = app.chat.conversation.last.reply
        await pilot.press("ctrl+t", "home", "right", "down", "down", "enter")
        await wait_until(pilot, lambda: len(app.chat.conversation.last.versions) == 2 and not app.chat.generating,
                         MODEL_TIMEOUT)
        new = app.chat.conversation.last.reply
        assert new.steps[0].token_id == old.steps[0].token_id and new.steps[1].forced
        # ↓↓ moves two rows down from the sampled row (which need not be the first).
        ids = [c.token_id for c in old.steps[1].top]
        sampled_row = ids.index(old.steps[1].token_id) if old.steps[1].token_id in ids else -1
        row = min(sampled_row + 2, len(ids) - 1)
        assert new.steps[1].token_id == ids[row] != old.steps[1].token_id
        stats = recording.turns[-1].stats
        assert stats.cached_tokens == stats.prompt_tokens  # the prompt came from the cache
        assert new.text.startswith(old.steps[0].text)

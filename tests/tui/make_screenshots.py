"""Write the README's screenshots: the real app on the default model, saved by the app itself.

Run: `.venv/bin/python -m tests.tui.make_screenshots` (loads SmolLM2-135M-Instruct; ~1 minute);
`... make_screenshots completion` writes only the completion view's.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

from chatapp.chat.settings import SamplingSettings
from chatapp.engine.loader import load_engine
from chatapp.tui.app import make_app
from chatapp.tui.widgets.prompt_input import PromptInput
from chatapp.tui.widgets.topk_panel import TopKPanel
from tests.tui.conftest import send, wait_until

ASSETS = Path(__file__).resolve().parents[2] / "assets"
"""Where the screenshots go."""
SIZE = (132, 38)
"""Terminal size of the screenshots."""
MODEL_TIMEOUT = 300.0
"""Seconds allowed for loading and for each reply."""


def _app(settings: SamplingSettings, mode: str = "chat"):
    """The app on the default model (`mode` as `load_engine` takes it), its history in a scratch
    folder, never the user's own."""
    scratch = tempfile.mkdtemp(prefix="chatapp-screenshots-")
    return make_app(settings=settings, store_path=Path(scratch) / "chats.sqlite3",
                    load_engine=lambda progress: load_engine(progress=progress, mode=mode))


async def _ready(pilot, app) -> None:
    """A steady cursor (no blink in the pictures), and the model loaded."""
    prompt = app.chat.query_one(PromptInput)
    prompt.blinks = prompt.cursor_blink = False
    await wait_until(pilot, lambda: app.chat.engine is not None, MODEL_TIMEOUT)


async def main() -> None:
    app = _app(SamplingSettings(seed=42, max_new_tokens=60))
    async with app.run_test(size=SIZE) as pilot:
        await _ready(pilot, app)
        for text in ("What is the capital of France?", "Give me three tips for learning French, as a list."):
            await send(pilot, text, wait=False)
            await wait_until(pilot, lambda: not app.chat.generating, MODEL_TIMEOUT)
        app.clear_notifications()
        await pilot.pause(0.5)
        app.save_screenshot("chat.svg", str(ASSETS))
        await pilot.press("ctrl+t", "home", "right", "right", "down", "down")
        await pilot.pause(0.5)
        app.save_screenshot("inspector.svg", str(ASSETS))
        await pilot.press("enter")
        await wait_until(pilot, lambda: not app.chat.generating and len(app.chat.conversation.last.versions) == 2,
                         MODEL_TIMEOUT)
        await pilot.press("escape", "ctrl+o")
        app.clear_notifications()
        await pilot.pause(0.5)
        app.save_screenshot("branch-heatmap.svg", str(ASSETS))
        # A branch in the first reply: the exchange after it stays with the old version.
        await pilot.press("ctrl+o", "ctrl+t", "pageup", "home", "right", "down", "enter")
        first = app.chat.conversation.exchanges[0]
        await wait_until(pilot, lambda: not app.chat.generating and len(first.versions) == 2, MODEL_TIMEOUT)
        app.clear_notifications()
        await pilot.pause(0.5)
        app.save_screenshot("branch-tree.svg", str(ASSETS))
        # What-if at the same step, then its logit lens.
        panel = app.chat.query_one(TopKPanel)
        await pilot.press("s")
        app.screen.query_one("Input").value = "temp=1.3 topk=8 minp=0.02"
        await pilot.press("enter")
        await wait_until(pilot, lambda: panel.view.label == "what-if", MODEL_TIMEOUT)
        await pilot.pause(0.5)
        app.save_screenshot("what-if.svg", str(ASSETS))
        await pilot.press("l")
        await wait_until(pilot, lambda: panel.view.lens, MODEL_TIMEOUT)
        await pilot.pause(0.5)
        app.save_screenshot("lens.svg", str(ASSETS))
        # Step mode: the user takes the model's draw, then its second candidate, then sees the third step.
        await pilot.press("escape", "f5")
        await send(pilot, "Name a fruit.", wait=False)
        for step, key in ((0, "enter"), (1, "2")):
            await wait_until(pilot, lambda: app.chat.proposal is not None and app.chat.proposal.step == step,
                             MODEL_TIMEOUT)
            await pilot.press(key)
        await wait_until(pilot, lambda: app.chat.proposal is not None and app.chat.proposal.step == 2, MODEL_TIMEOUT)
        app.clear_notifications()
        await pilot.pause(0.5)
        app.save_screenshot("step-mode.svg", str(ASSETS))
        await pilot.press("f5")
        await wait_until(pilot, lambda: not app.chat.generating, MODEL_TIMEOUT)


async def completion() -> None:
    """Completion mode (`chatapp --raw`): the model continues a text, a piece added, the
    inspector on a token of the second continuation."""
    app = _app(SamplingSettings(seed=7, max_new_tokens=40), mode="completion")
    async with app.run_test(size=SIZE) as pilot:
        await _ready(pilot, app)
        for text in ("The lighthouse keeper opened the door and", "\n\nThe next morning,"):
            await send(pilot, text, wait=False)
            await wait_until(pilot, lambda: not app.chat.generating, MODEL_TIMEOUT)
        await pilot.press("ctrl+t", "home", "right", "right", "right")
        app.clear_notifications()
        await pilot.pause(0.5)
        app.save_screenshot("completion.svg", str(ASSETS))


if __name__ == "__main__":
    asyncio.run(completion() if sys.argv[1:] == ["completion"] else main())

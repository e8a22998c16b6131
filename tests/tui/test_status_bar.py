"""The status line fits its width: whole fields are left out in `DROP_ORDER`, model, context
and activity are kept, and a line that still does not fit ends in an ellipsis."""

from __future__ import annotations

import threading

import pytest
from textual.app import App, ComposeResult

from chatapp.chat.records import ModelInfo
from chatapp.tui.widgets.status_bar import SEPARATOR, StatusBar, StatusData, fitted_line, status_fields
from tests.tui.conftest import app_with, ready, send, wait_until
from tests.tui.fakes import FakeEngine

pytestmark = pytest.mark.anyio

INFO = ModelInfo(name="Qwen2.5-0.5B-Instruct", device="cuda", dtype="bfloat16", context_length=32768,
                 vocab_size=151936, quantization="int4")
"""A model with every device field set."""
BUSY = StatusData(info=INFO, activity="writing… 12 tokens", tok_per_s=87.3, context_used=1234, cached=900,
                  prompt=1000, settings="T=0.7 k=50 p=0.9 seed=7 max=512")
"""A turn being written, every field shown: 150 cells in all."""
FULL_LINE = ("Qwen2.5-0.5B-Instruct │ cuda bfloat16 int4 weights │ 87.3 tok/s │ ctx 1234/32768 │ "
             "cache 900/1000 (90%) │ writing… 12 tokens │ T=0.7 k=50 p=0.9 seed=7 max=512")
"""`BUSY` with nothing left out."""


class StatusApp(App):
    """A status line alone, showing `data`."""

    def __init__(self, data: StatusData) -> None:
        super().__init__()
        self.data = data

    def compose(self) -> ComposeResult:
        yield StatusBar()

    def on_mount(self) -> None:
        self.query_one(StatusBar).data = self.data


def whole_fields(line: str, data: StatusData) -> bool:
    """Every field of `line` is one of `data`'s fields whole, but the last may end in "…"."""
    known = [content.plain for _, content in status_fields(data)]
    *fields, last = line.split(SEPARATOR)
    return all(field in known for field in fields) and (
        last in known or (last.endswith("…") and any(field.startswith(last[:-1]) for field in known)))


async def rendered(data: StatusData, width: int) -> str:
    app = StatusApp(data)
    async with app.run_test(size=(width, 24)) as pilot:
        await pilot.pause()
        return app.query_one(StatusBar).render().plain


async def test_at_140_columns_only_the_cache_is_left_out():
    line = await rendered(BUSY, 140)
    assert line == FULL_LINE.replace(" │ cache 900/1000 (90%)", "") and len(line) <= 140


async def test_at_80_columns_model_context_and_activity_stay_and_the_line_fits():
    line = await rendered(BUSY, 80)
    assert line == "Qwen2.5-0.5B-Instruct │ 87.3 tok/s │ ctx 1234/32768 │ writing… 12 tokens"
    assert len(line) <= 80 and whole_fields(line, BUSY)


async def test_a_long_activity_ends_in_an_ellipsis_rather_than_being_clipped():
    data = StatusData(info=INFO, activity="compiling the int4 kernel: replies speed up when it is ready",
                      context_used=5, settings="T=0.7 k=50 max=512", warning="not saved")
    line = await rendered(data, 80)
    assert line.startswith("⚠ not saved │ Qwen2.5-0.5B-Instruct │ ctx 5/32768 │ compiling the int4 kernel")
    assert len(line) == 80 and line.endswith("…") and whole_fields(line, data)


async def test_the_line_follows_a_resize():
    app = StatusApp(BUSY)
    async with app.run_test(size=(160, 24)) as pilot:
        await pilot.pause()
        assert app.query_one(StatusBar).render_line(0).text.rstrip() == FULL_LINE
        await pilot.resize_terminal(80, 24)
        await pilot.pause()
        bar = app.query_one(StatusBar)
        assert "cache" not in bar.render().plain
        assert bar.render_line(0).text.rstrip() == bar.render().plain  # what is on screen, drawn again


def test_fields_are_left_out_in_the_drop_order_and_the_warning_never():
    data = StatusData(info=INFO, activity="writing…", tok_per_s=87.3, context_used=1234, cached=900, prompt=1000,
                      settings="T=0.7 k=50 max=512", warning="not saved")
    fields = status_fields(data)
    assert fitted_line(fields, 0).plain == SEPARATOR.join(content.plain for _, content in fields)  # before layout
    lines = [fitted_line(fields, width).plain for width in range(120, 20, -1)]
    assert all(line.startswith("⚠ not saved") for line in lines)
    gone = []
    for line in lines:
        gone += [name for name in ("cache 900", "cuda", "T=0.7", "tok/s") if name not in line and name not in gone]
    assert gone == ["cache 900", "cuda", "T=0.7", "tok/s"]
    assert all(len(line) <= width for line, width in zip(lines, range(120, 20, -1)))


def test_while_loading_the_settings_go_before_the_activity():
    data = StatusData(activity="loading SmolLM2-135M-Instruct…", settings="T=0.7 k=50 max=512")
    assert fitted_line(status_fields(data), 40).plain == "loading SmolLM2-135M-Instruct…"


async def test_the_app_at_80x24_shows_keys_and_a_status_line_that_fit():
    gate = threading.Event()
    app = app_with(FakeEngine(gate=gate, gate_after=2))
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot)
        await send(pilot, "hi", wait=False)
        status = app.chat.query_one(StatusBar)
        await wait_until(pilot, lambda: "writing…" in status.render().plain, what="the reply being written")
        line = status.render().plain
        assert len(line) <= status.size.width and line.startswith("FakeLM-1 │") and "ctx " in line
        assert whole_fields(line, status.data)
        gate.set()
        await wait_until(pilot, lambda: not app.chat.generating, what="reply finished")
        line = status.render().plain
        assert len(line) <= status.size.width and "FakeLM-1" in line and "ctx " in line and "cache" not in line
        assert whole_fields(line, status.data)
        keys = app.chat.query_one("KeyBar").render().plain
        assert len(keys) <= 80 and "f1 Help" in keys and "^q Quit" in keys and "^p palette" in keys

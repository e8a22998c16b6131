"""Plain-Python parts of the TUI: formatting, slash commands, conversation state, batching."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chatapp.chat import commands
from chatapp.chat.conversation import Conversation, Exchange, ReplyVersion, branch_version
from chatapp.chat.settings import SamplingSettings
from chatapp.session.reply_stream import (
    MAX_BATCH_SECONDS,
    MAX_DRAW_SECONDS,
    MIN_BATCH_SECONDS,
    PANEL_BATCHES,
    UI_CPU_BUDGET,
    StreamPacing,
    TokensGenerated,
    TurnFailed,
    TurnFinished,
    stream_turn,
)
from chatapp.tui.formatting import PERCENT_CHARS, format_percent, literal_text, prob_bar, token_label, visible_token
from tests.tui.fakes import FakeEngine


@given(st.floats(min_value=0, max_value=1, allow_nan=False))
def test_percent_is_never_a_rounded_zero(p):
    text = format_percent(p)
    assert text.endswith("%")
    if p > 0:
        assert float(text.rstrip("%")) > 0, text


@given(st.floats(min_value=0, max_value=1, allow_nan=False))
def test_percent_fits_the_panel_column(p):
    assert len(format_percent(p)) <= PERCENT_CHARS


def test_percent_examples():
    assert format_percent(0.875) == "87.5%"
    assert format_percent(0.0035) == "0.35%"
    assert format_percent(2.1e-7) == "2.1e-05%"
    assert format_percent(4.3e-6) == "0.00043%"
    assert format_percent(1.2e-300) == "1e-298%"
    assert format_percent(0.0) == "0%"


def test_whitespace_and_controls_are_visible():
    assert visible_token(" a\n\t") == "␣a↵⇥"
    assert visible_token("\x1b[31m") == "␛[31m"
    assert literal_text("a\nb\x1b[0m") == "a\nb␛[0m"


def test_partial_character_shows_its_bytes():
    assert token_label("\ufffd", b"\xe2\x80") == "<e2 80>"
    assert token_label(" the", b" the") == "␣the"


def test_bar_fills_in_eighths():
    assert prob_bar(1.0, 4) == "████"
    assert prob_bar(0.0, 4) == "    "
    assert len(prob_bar(0.37, 8)) == 8


@pytest.mark.parametrize(
    ("text", "field", "value"),
    [
        ("/temp 0.3", "temperature", 0.3),
        ("/topk 7", "top_k", 7),
        ("/topp 0.9", "top_p", 0.9),
        ("/topp off", "top_p", None),
        ("/minp 0.05", "min_p", 0.05),
        ("/rep 1.1", "repetition_penalty", 1.1),
        ("/max 64", "max_new_tokens", 64),
        ("/seed 7", "seed", 7),
    ],
)
def test_setting_commands(text, field, value):
    command = commands.parse_command(text, SamplingSettings())
    assert isinstance(command, commands.ApplySettings)
    assert getattr(command.settings, field) == value


def test_set_applies_several_at_once_or_none():
    command = commands.parse_command("/set temp=0.5 topk=40 seed=3", SamplingSettings())
    assert (command.settings.temperature, command.settings.top_k, command.settings.seed) == (0.5, 40, 3)
    with pytest.raises(commands.CommandError, match="top_k"):
        commands.parse_command("/set temp=0.5 topk=x", SamplingSettings())


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("/temp", "takes one value"),
        ("/temp abc", "temperature must be a number"),
        ("/temp -1", "temperature must be between"),
        ("/topk -3", "top_k"),
        ("/topp 2", "top_p"),
        ("/bogus 1", "unknown command '/bogus'"),
        ("/set temp", "name=value"),
        ("/set colour=red", "unknown setting"),
    ],
)
def test_bad_commands_give_one_line(text, message):
    with pytest.raises(commands.CommandError, match=message) as error:
        commands.parse_command(text, SamplingSettings())
    assert "\n" not in str(error.value)


def test_other_commands_and_literal_slash():
    settings = SamplingSettings()
    assert commands.parse_command("/system Be brief.", settings) == commands.SetSystem("Be brief.")
    assert commands.parse_command("/system", settings) == commands.SetSystem(None)
    assert commands.parse_command("/clear", settings) == commands.ClearChat()
    assert commands.parse_command("/help", settings) == commands.ShowHelp()
    assert not commands.is_command("//etc/hosts") and commands.message_text("//etc/hosts") == "/etc/hosts"


def test_messages_use_the_shown_versions_and_the_system_prompt():
    settings = SamplingSettings()
    first = Exchange("hi")
    first.add_version(ReplyVersion(settings, text="v1"))
    first.add_version(ReplyVersion(settings, text="v2"))
    first.switch(-1)
    conversation = Conversation("sys", [first, Exchange("again")])
    assert conversation.messages_before(1) == [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "v1"},
        {"role": "user", "content": "again"},
    ]


def test_branch_keeps_the_prefix_and_forces_the_candidate():
    engine = FakeEngine()
    old = ReplyVersion(SamplingSettings())
    old.add_steps(engine.step(i, t) for i, t in enumerate(["Hello", ",", " world"]))
    candidate = old.steps[1].top[1]
    version, prefix = branch_version(old, 1, candidate, SamplingSettings())
    assert prefix == [old.steps[0].token_id, candidate.token_id]
    assert [s.forced for s in version.steps] == [False, True]
    assert version.steps[1].token_id == candidate.token_id and version.steps[1].top == old.steps[1].top
    assert version.text == "Hello the" and version.branched_at == 1


class Ticks:
    """A clock that advances by `dt` each call."""

    def __init__(self, dt: float) -> None:
        self.t, self.dt = 0.0, dt

    def __call__(self) -> float:
        self.t += self.dt
        return self.t


def test_stream_turn_batches_text_and_posts_every_panel_update():
    engine = FakeEngine(replies=[list("abcdefghij")])
    posted = []
    stream_turn(engine.start_turn([{"role": "user", "content": "x"}], SamplingSettings()), 1, posted.append,
                lambda: False, clock=Ticks(0.02))
    batches = [m for m in posted if isinstance(m, TokensGenerated)]
    assert all(b.candidates == b.steps[-1] for b in batches) and len(batches) < 11  # each batch: its last step
    assert "".join(s.text for b in batches for s in b.steps) == "abcdefghij"
    assert isinstance(posted[-1], TurnFinished) and posted[-1].stats.finish_reason == "stop"


@pytest.mark.parametrize("dt", [0.02, 0.13, 0.21, 0.45])
def test_the_last_step_always_reaches_the_panel(dt):
    # Whatever the timing, the batch that ends the turn may have gone out before the panel was
    # due again: the panel must still end on the last step.
    for reply in (list("ab"), list("abcdefghij")):
        posted = []
        stream_turn(FakeEngine(replies=[reply]).start_turn([{"role": "user", "content": "x"}], SamplingSettings()), 1,
                    posted.append, lambda: False, clock=Ticks(dt))
        steps = [s for m in posted if isinstance(m, TokensGenerated) for s in m.steps]
        panels = [m.candidates for m in posted if isinstance(m, TokensGenerated) and m.candidates is not None]
        assert panels[-1] == steps[-1] and steps[-1].is_stop


def test_pacing_keeps_the_ui_within_its_budget_between_its_bounds():
    pacing = StreamPacing()
    cheap, costly, middle = 0.001, 10.0, (MIN_BATCH_SECONDS + MAX_BATCH_SECONDS) / 2 * UI_CPU_BUDGET
    for _ in range(30):
        pacing.observe(cheap)
    assert pacing.batch_seconds == pytest.approx(MIN_BATCH_SECONDS)
    pacing.observe(costly)  # one costly update moves the pace, not all the way
    assert MIN_BATCH_SECONDS < pacing.batch_seconds < MAX_BATCH_SECONDS
    for _ in range(30):
        pacing.observe(costly)
    assert pacing.batch_seconds == pytest.approx(MAX_BATCH_SECONDS)
    for _ in range(30):
        pacing.observe(middle)  # within the bounds: the update's cost is the budgeted share of the interval
    assert middle / pacing.batch_seconds == pytest.approx(UI_CPU_BUDGET)
    assert pacing.panel_seconds == pytest.approx(PANEL_BATCHES * pacing.batch_seconds)


def test_stream_turn_follows_a_pace_changed_while_it_runs():
    # The clock moves 0.1 s per reading: the first step goes out at once, then at the fastest pace
    # a batch every 4-5 steps; once the UI slows the pace to 1 s (mid-turn, as from the UI thread),
    # a batch every 10.
    pacing = StreamPacing()
    engine = FakeEngine(replies=[list("abcdefghijklmnopqrstuvwxyz0123456789")])
    posted = []

    def post(message):
        posted.append(message)
        if len([m for m in posted if isinstance(m, TokensGenerated)]) == 3:
            pacing.batch_seconds = 1.0

    stream_turn(engine.start_turn([{"role": "user", "content": "x"}], SamplingSettings()), 1, post,
                lambda: False, clock=Ticks(0.1), pacing=pacing)
    sizes = [len(m.steps) for m in posted if isinstance(m, TokensGenerated)]
    assert sizes[0] == 1 and max(sizes[1:3]) <= 5 and sizes[3:-1] == [10, 10]
    panels = [m for m in posted if isinstance(m, TokensGenerated) and m.candidates is not None]
    assert len(panels) < len(sizes)  # the panel at half the pace of the text


def test_the_steps_after_a_batch_leave_the_ui_a_core_until_it_says_it_drew_it(monkeypatch):
    # The turn asks `spare_core` before each step after the first; a UI that never says it drew
    # what was posted gets a core for every step after a post (the longest draw made long here,
    # so a slow machine's pause does not end it), one that draws each batch at once gets none,
    # and a caller whose UI never says so lends nothing.
    monkeypatch.setattr("chatapp.session.reply_stream.MAX_DRAW_SECONDS", 60.0)
    for says_drawn, draws, lends in ((True, False, True), (True, True, False), (False, False, None)):
        pacing = StreamPacing(ui_says_drawn=says_drawn)
        turn = FakeEngine(replies=[list("abcdefghij")]).start_turn([{"role": "user", "content": "x"}], SamplingSettings())

        batches = []

        def post(message):
            if isinstance(message, TokensGenerated):
                batches.append(message)
                if draws:
                    pacing.drawn()

        stream_turn(turn, 1, post, lambda: False, clock=Ticks(0.13), pacing=pacing)
        assert turn.spare_answers == ([] if lends is None else [lends] * 10)
        assert turn.cores_back == (len(batches) if draws else 0)  # each drawn batch: the core back at once


def test_the_ui_drawing_ends_when_it_says_so_or_after_the_longest_draw():
    pacing = StreamPacing()
    assert not pacing.ui_drawing()
    pacing.drawing()
    since = pacing.drawing_since
    assert pacing.ui_drawing() and pacing.ui_drawing(since + MAX_DRAW_SECONDS * 0.9)
    assert not pacing.ui_drawing(since + MAX_DRAW_SECONDS * 1.1)  # a UI that never said it drew the batch
    pacing.drawn()
    assert not pacing.ui_drawing() and not pacing.ui_drawing(since)


def test_stream_turn_reports_errors_as_one_line():
    engine = FakeEngine(fail_at=2)
    posted = []
    stream_turn(engine.start_turn([{"role": "user", "content": "x"}], SamplingSettings()), 1, posted.append, lambda: False)
    assert isinstance(posted[-1], TurnFailed) and "NaN" in posted[-1].error


def test_stream_turn_cancels_the_turn_when_the_worker_is_cancelled():
    engine = FakeEngine(replies=[list("abcdefghij")])
    turn = engine.start_turn([{"role": "user", "content": "x"}], SamplingSettings())
    posted = []
    stream_turn(turn, 1, posted.append, lambda: True)
    assert turn.stats.finish_reason == "cancelled" and turn.stats.tokens == 1

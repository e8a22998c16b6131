"""Property-based tests: any text typed as a setting or slash command is accepted or refused
with one short line, and a refusal changes nothing."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from chatapp.chat.commands import (
    SETTING_ALIASES,
    ApplySettings,
    CommandError,
    is_command,
    parse_command,
)
from chatapp.chat.settings import SETTING_NAMES, SamplingSettings, SettingError

MAX_MESSAGE_LENGTH = 300
"""A one-line message must stay readable in a notification."""

BASE = SamplingSettings(temperature=0.5, top_k=20, top_p=0.9, seed=3)

values = st.one_of(
    st.text(max_size=40),
    st.from_regex(r"-?\d{1,25}(\.\d{0,8})?(e-?\d{1,4})?", fullmatch=True),
    st.sampled_from(["nan", "inf", "-inf", "off", "none", "1_000", "0x10", "", " ", "1e400", "9" * 5000]),
)


def _is_one_short_line(message: str) -> bool:
    return "\n" not in message and "\r" not in message and 0 < len(message) <= MAX_MESSAGE_LENGTH


@hypothesis_settings(max_examples=400, deadline=None)
@given(name=st.sampled_from(SETTING_NAMES), text=values)
def test_setting_text_is_valid_or_one_line_error(name, text):
    try:
        changed = BASE.with_value(name, text)
    except SettingError as error:
        assert _is_one_short_line(str(error)), str(error)
        return
    assert changed.validated() is changed
    value = getattr(changed, name)
    assert value is None or (not isinstance(value, float) or math.isfinite(value))
    for other in SETTING_NAMES:  # nothing else moved
        if other != name:
            assert getattr(changed, other) == getattr(BASE, other)


@hypothesis_settings(max_examples=400, deadline=None)
@given(alias=st.sampled_from(sorted(SETTING_ALIASES)), text=values)
def test_setting_commands(alias, text):
    command = f"/{alias} {text}"
    try:
        result = parse_command(command, BASE)
    except CommandError as error:
        assert _is_one_short_line(str(error)), str(error)
        return
    assert isinstance(result, ApplySettings)
    assert result.settings.validated() is result.settings


@hypothesis_settings(max_examples=500, deadline=None)
@given(text=st.text(max_size=200).map(lambda t: "/" + t))
def test_any_slash_text_parses_or_fails_cleanly(text):
    if not is_command(text):
        return
    try:
        parse_command(text, BASE)
    except CommandError as error:
        assert _is_one_short_line(str(error)), str(error)


@hypothesis_settings(max_examples=200, deadline=None)
@given(pairs=st.lists(st.tuples(st.sampled_from(sorted(SETTING_ALIASES) + ["bogus"]), values), min_size=1, max_size=4))
def test_set_is_all_or_nothing(pairs):
    text = "/set " + " ".join(f"{k}={v}" for k, v in pairs)
    try:
        result = parse_command(text, BASE)
    except CommandError as error:
        assert _is_one_short_line(str(error)), str(error)
        return
    assert isinstance(result, ApplySettings)
    assert result.settings.validated() is result.settings


def test_a_huge_paste_as_a_value_gives_a_short_message():
    try:
        parse_command("/temp " + "x" * 100_000, BASE)
    except CommandError as error:
        assert _is_one_short_line(str(error))
    else:
        raise AssertionError("a 100 KB value must be refused")

"""Stop sequences (`--stop`, `/stop`): a reply ends where one first appears, its text before it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from chatapp.chat.commands import ApplySettings, parse_command
from chatapp.chat.settings import SamplingSettings, SettingError
from chatapp.cli.ask import StopHoldBack
from chatapp.cli.main import build_parser, settings_from_args
from chatapp.engine.turn import find_stop
from chatapp.storage.chat_file import chat_from_dict, chat_to_dict
from tests.tui.test_persistence import saved_chat

COUNT = "Count from 1 to 10, separated by commas."
"""A prompt the default model answers, greedily, with "1, 2, 3, 4, 5, 6, 7, 8, 9, 10"."""


def test_find_stop_looks_only_where_the_newest_text_could_complete_one():
    assert find_stop("abc User:", ("User:",), 5) == 4
    assert find_stop("abc Use", ("User:",), 2) is None
    assert find_stop("1, 2, 3", ("2", ", 3"), 1) == 4  # "2" was there before the last character
    assert find_stop("xx\n\nUser", ("\n\nUser", "xx"), 4) == 2


def test_stop_settings_parse_validate_and_survive_a_save():
    assert SamplingSettings().with_value("stop", "\\n\\nUser:").stop == ("\n\nUser:",)
    assert SamplingSettings(stop=("a",)).with_value("stop", "off").stop == ()
    assert SamplingSettings(stop=["x", "y"]).validated().stop == ("x", "y")  # from JSON or TOML
    for bad in (("",), ("x" * 101,), tuple("abcdefghi")):
        with pytest.raises(SettingError, match="stop"):
            SamplingSettings(stop=bad).validated()
    command = parse_command("/stop END", SamplingSettings())
    assert isinstance(command, ApplySettings) and command.settings.stop == ("END",)
    assert "stop=END" in command.settings.describe()
    args = build_parser().parse_args(["--stop", "A", "ask", "--stop", "B", "hi"])
    assert settings_from_args(args).stop == ("B",)  # given after the subcommand, it wins
    assert settings_from_args(build_parser().parse_args(["--stop", "A", "--stop", "B"])).stop == ("A", "B")
    chat = saved_chat("hi", ["x"])
    chat.conversation.exchanges[0].versions[0].settings = SamplingSettings(stop=("END", "\n"))
    again = chat_from_dict(json.loads(json.dumps(chat_to_dict(chat))))
    assert again.conversation.exchanges[0].reply.settings.stop == ("END", "\n")


def test_printed_text_is_held_back_until_no_stop_sequence_can_begin_in_it():
    held = StopHoldBack(("END",))
    printed = held.more("ab") + held.more("cE") + held.more("N")
    assert printed == "ab"  # "cE" could still begin "END", and "N" is not checked yet
    assert printed + held.rest("abc") == "abc"  # the turn's text, which stops before "END"
    assert StopHoldBack(()).more("xyz") == "xyz"  # no stop sequences: nothing held


@pytest.mark.model
def test_a_reply_stops_before_its_stop_sequence_printed_and_in_json():
    base = [sys.executable, "-m", "chatapp", "ask", "--temperature", "0", "--max-new-tokens", "40"]
    plain = subprocess.run([*base, "--stop", "5", COUNT], capture_output=True, text=True, timeout=300)
    assert plain.returncode == 0 and plain.stdout.rstrip("\n").rstrip() == "1, 2, 3, 4,", plain.stdout
    done = subprocess.run([*base, "--json", "--stop", "5", "--stop", "3", COUNT], capture_output=True, text=True,
                          timeout=300)
    turn = json.loads(done.stdout.splitlines()[-1])
    assert turn["text"] == "1, 2, " and turn["finish_reason"] == "stop"
    without = subprocess.run([*base, COUNT], capture_output=True, text=True, timeout=300)
    assert "5, 6" in without.stdout  # the model does write past it

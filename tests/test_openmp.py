"""chatapp's processes shorten OpenMP's idle spin before torch loads it, unless the user set one;
a peer measured beside chatapp gets the user's environment."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from chatapp.support import openmp


@pytest.fixture
def fresh(monkeypatch):
    """No spin count in the environment, none set by chatapp yet (both restored after)."""
    monkeypatch.delenv(openmp.VARIABLE, raising=False)
    monkeypatch.setattr(openmp._Set, "by_chatapp", False)


def test_chatapp_s_spin_count_is_set_and_kept_from_a_peer(fresh):
    openmp.shorten_idle_spin()
    assert os.environ[openmp.VARIABLE] == openmp.SPIN_COUNT
    assert openmp.VARIABLE not in openmp.peer_environment()
    assert openmp.peer_environment()["PATH"] == os.environ["PATH"]


def test_the_user_s_spin_count_wins_and_reaches_the_peer(fresh, monkeypatch):
    monkeypatch.setenv(openmp.VARIABLE, "7")
    openmp.shorten_idle_spin()
    assert os.environ[openmp.VARIABLE] == "7"
    assert openmp.peer_environment()[openmp.VARIABLE] == "7"


def test_the_command_line_sets_it_before_torch_is_imported():
    code = (
        "import json, os, sys\n"
        "from chatapp.cli.main import main\n"
        "main(['config', '--path'])\n"
        "print(json.dumps([os.environ.get('GOMP_SPINCOUNT'), 'torch' in sys.modules]))\n"
    )
    environment = {key: value for key, value in os.environ.items() if key != openmp.VARIABLE}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environment, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == [openmp.SPIN_COUNT, False]

"""Exits (issue #20): `chatapp ask` ends with its own exit code however early a turn ends, and
leaves no thread or compiler running behind it.

The int4 kernel loads on a thread of its own; a process that ended while that thread ran native
code aborted ("terminate called without an active exception", exit 134) two or three times in
three. Each case therefore runs several times.
"""

from __future__ import annotations

import pytest

from chatapp.runtime import int4_kernel
from tests.faults.test_caches import ask, processes_running, real_cache, stand_in_compiler, temp_cache  # noqa: F401 - a fixture

pytestmark = [
    pytest.mark.model,
    pytest.mark.skipif(int4_kernel.wanted() is not None, reason="the int4 kernel is not used on this machine"),
]

RUNS = 3
"""Times each exit is tried (the abort came in two or three runs of three)."""
ABORT = "terminate called"
"""What the C++ runtime writes as it aborts the process."""
LONG_MESSAGE = "hello " * 9000
"""A first message longer than the default model's 8192-token context."""


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A copy of the warm user cache (converted model, int4 copy, built kernel)."""
    root = tmp_path_factory.mktemp("cache")
    temp_cache(root, real_cache())
    return root


@pytest.mark.parametrize("run", range(RUNS))
def test_a_one_token_answer_exits_with_0(cache, run):
    done = ask(cache, "--max-new-tokens", "1", "Hi")
    assert ABORT not in done.stderr, done.stderr
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip()


@pytest.mark.parametrize("run", range(RUNS))
def test_a_context_overflow_on_the_first_turn_exits_with_1_and_one_line(cache, run):
    done = ask(cache, "--max-new-tokens", "4", LONG_MESSAGE)
    assert ABORT not in done.stderr, done.stderr
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "too long" in lines[0], done.stderr


def test_a_compile_in_progress_at_exit_is_stopped(tmp_path, stand_in_compiler):
    """No kernel built yet: the first `ask` starts its compile (here a stand-in that would take
    five minutes) and ends before it is done. The compiler is killed, its folder removed."""
    temp_cache(tmp_path, real_cache(), kernel=False)
    compiler = stand_in_compiler
    done = ask(tmp_path, "--max-new-tokens", "1", "Hi", env={"CXX": str(compiler)})
    assert ABORT not in done.stderr, done.stderr
    assert done.returncode == 0, done.stderr
    assert not processes_running(str(compiler)), "the compiler outlived chatapp"
    kernels = tmp_path / "chatapp" / "kernels"
    assert not list(kernels.iterdir()), "the unfinished build left files behind"

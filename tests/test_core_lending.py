"""A turn's decode steps leave a drawing UI a core: chatapp's kernel loops on one thread fewer
while it draws, on all of torch's threads again after, and the same numbers either way; for the
length of the turn the decoder's threads are bound to a CPU each and the UI's thread to the one
a lent loop leaves out."""

from __future__ import annotations

import os
import threading

import pytest
import torch

from chatapp.chat.settings import SamplingSettings
from chatapp.engine import core_lending
from chatapp.engine.core_lending import CoreLending
from chatapp.engine.engine import Engine
from chatapp.runtime import block_kernel, int4_kernel

MESSAGES = [{"role": "user", "content": "Write a long story about a lighthouse keeper."}]


@pytest.fixture
def two_threads(monkeypatch):
    """torch at two threads on a two-CPU process for the test (whatever this machine has),
    restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    monkeypatch.setattr(core_lending, "usable_cpus", lambda: 2)
    yield
    int4_kernel.lend_threads(0)  # a test that failed while lent leaves nothing lent
    block_kernel.lend_threads(0)
    core_lending.free_threads()  # nor any thread bound (lendings these tests never end)
    torch.set_num_threads(before)


def row_threads() -> dict[str, int]:
    """How many threads each loaded kernel's loops run on now (the team one of its loops had)."""
    counts = {}
    if int4_kernel.load():
        counts["int4"] = torch.ops.chatapp.row_threads()
    if block_kernel.ops() is not None:
        counts["blocks"] = block_kernel.ops().row_threads()
    return counts


def test_lending_runs_the_kernels_loops_on_one_thread_fewer_and_gives_it_back(two_threads):
    counts = row_threads()
    if not counts:
        pytest.skip("no kernel can be built here")
    assert set(counts.values()) == {2}
    lending = CoreLending(torch.device("cpu"))
    lending.lend()
    assert set(row_threads().values()) == {1} and lending.lent
    assert torch.get_num_threads() == 2  # torch's own operations keep their threads
    lending.reclaim()
    assert set(row_threads().values()) == {2} and not lending.lent


def test_nothing_is_lent_off_the_cpu_on_one_thread_or_where_a_cpu_is_free(two_threads, monkeypatch):
    assert not CoreLending(torch.device("cuda")).can_lend  # a GPU's steps need no CPU cores lent
    monkeypatch.setattr(core_lending, "usable_cpus", lambda: 4)
    assert not CoreLending(torch.device("cpu")).can_lend  # two threads on four CPUs: the UI has one
    monkeypatch.setattr(core_lending, "usable_cpus", lambda: 1)
    torch.set_num_threads(1)
    single = CoreLending(torch.device("cpu"))
    single.lend()
    assert not single.lent


def _steps(engine, settings, spare_core=None):
    """Every step's token and numbers, and the kernels' and torch's thread counts each
    `spare_core` question found."""
    engine.reset()
    turn = engine.start_turn(MESSAGES, settings)
    found, answers = [], iter(spare_core or ())
    if spare_core is not None:
        turn.spare_core = lambda: found.append((row_threads(), torch.get_num_threads())) or next(answers)
    steps = [(s.token_id, s.prob, s.raw_prob, s.entropy, tuple((c.token_id, c.prob, c.raw_prob) for c in s.top))
             for s in turn]
    return steps, found


def test_a_model_on_torch_s_operations_keeps_its_threads_and_numbers(tiny_loaded, two_threads):
    engine = Engine(tiny_loaded)
    settings = SamplingSettings(seed=3, max_new_tokens=12)
    reference, _ = _steps(engine, settings)
    lent, found = _steps(engine, settings, [True] * 12)
    assert lent == reference and {torch_threads for _, torch_threads in found} == {2}


@pytest.mark.model
@pytest.mark.parametrize("quantize", ["auto", "gguf"])
def test_the_default_model_s_steps_lend_a_core_and_give_the_same_numbers(quantize, two_threads):
    """The default configuration (the int4 kernel's one call a step) and the file read natively
    (the block kernel's layers, the head's 4-bit copy): a step lent away gives the same token and
    numbers, past 128 positions too (where the attention's heads are shared between the threads);
    the turn gives the core back when it ends, or is stopped, lent."""
    from chatapp.engine.loader import load_engine

    engine = load_engine("default", "cpu", quantize=quantize)
    settings = SamplingSettings(seed=11, max_new_tokens=120)
    answers = [index % 3 != 2 for index in range(120)]
    reference, _ = _steps(engine, settings)
    lent, found = _steps(engine, settings, answers)
    assert lent == reference and len(reference) > 100
    kernel_threads = [set(counts.values()) for counts, _ in found]
    assert kernel_threads == [{2}] + [{1} if answer else {2} for answer in answers[:len(found) - 1]]  # as asked
    assert set(row_threads().values()) == {2}
    engine.reset()
    turn = engine.start_turn(MESSAGES, settings)
    turn.spare_core = lambda: True
    steps = iter(turn)
    next(steps), next(steps), next(steps)
    assert set(row_threads().values()) == {1}
    drawn = threading.Thread(target=turn.core_back)  # the UI has drawn, in the middle of a step
    drawn.start()
    drawn.join()
    assert set(row_threads().values()) == {2}  # back before the next step
    next(steps)  # the next step, asked again, lends again
    assert set(row_threads().values()) == {1}
    steps.close()  # a reply stopped while lent
    assert set(row_threads().values()) == {2}


def test_a_new_turn_takes_back_what_a_dropped_turn_lent(two_threads):
    if not row_threads():
        pytest.skip("no kernel can be built here")
    dropped = CoreLending(torch.device("cpu"))
    dropped.lend()  # its turn is never closed: it never reclaims
    assert set(row_threads().values()) == {1}
    CoreLending(torch.device("cpu"))
    assert set(row_threads().values()) == {2}


class WaitingThread:
    """A thread that only waits (standing in for the UI's), and its Linux id."""

    def __enter__(self) -> int:
        self._done = threading.Event()
        started = threading.Event()
        self._thread = threading.Thread(target=lambda: started.set() or self._done.wait())
        self._thread.start()
        started.wait()
        return self._thread.native_id

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join()


def bound_threads() -> dict[int, set[int]]:
    """The CPUs each thread of this process may run on now, by Linux id."""
    return {int(tid): os.sched_getaffinity(int(tid)) for tid in os.listdir("/proc/self/task")}


@pytest.fixture
def two_cpus(two_threads):
    """The two threads of `two_threads`, and at least two CPUs to bind them to."""
    cpus = core_lending.process_cpus()
    if len(cpus) < 2:
        pytest.skip("binding threads needs two CPUs")
    if not row_threads():
        pytest.skip("no kernel can be built here")
    return cpus


def test_a_turn_s_lending_binds_the_decoder_s_threads_and_the_ui_s_until_it_ends(two_cpus, monkeypatch):
    for name in core_lending.USER_BINDING:
        monkeypatch.delenv(name, raising=False)
    everywhere = set(two_cpus)
    with WaitingThread() as ui:
        lending = CoreLending(torch.device("cpu"), ui_thread=ui)
        assert lending.bound
        assert os.sched_getaffinity(0) == {two_cpus[0]}  # the decoder's own thread
        assert os.sched_getaffinity(ui) == {two_cpus[1]}  # the UI: where the thread a lent loop leaves out runs
        assert {two_cpus[1]} in [cpus for tid, cpus in bound_threads().items() if tid != ui]  # the other decoder thread
        lending.lend()
        assert set(row_threads().values()) == {1}
        with WaitingThread() as started_meanwhile:  # by a bound thread: it inherits that thread's CPU
            assert os.sched_getaffinity(started_meanwhile) == {two_cpus[0]}
            lending.end()
            assert not lending.bound and not lending.lent
            assert all(cpus == everywhere for cpus in bound_threads().values())  # every thread anywhere again


def test_after_a_lent_loop_the_team_is_bound_again_and_a_dropped_turn_frees_nothing_later(two_cpus, monkeypatch):
    # A smaller team may end the pool's spare threads, and a full team then starts new ones on
    # the decoder's CPU (with three threads or more): the step after a lent loop binds them again.
    for name in core_lending.USER_BINDING:
        monkeypatch.delenv(name, raising=False)
    calls = []
    real = int4_kernel.bind_threads
    monkeypatch.setattr(int4_kernel, "bind_threads", lambda cpus: calls.append(list(cpus)) or real(cpus))
    monkeypatch.setattr(block_kernel, "bind_threads", lambda cpus: None)
    dropped = CoreLending(torch.device("cpu"))
    lending = CoreLending(torch.device("cpu"))  # the next turn binds; the dropped one is not ended
    assert len(calls) == 2 and lending.bound
    lending.bind()
    assert len(calls) == 2  # bound already, nothing lent since
    lending.lend()
    lending.bind()
    assert len(calls) == 2  # not while lent
    lending.reclaim()
    lending.bind()
    assert calls[-1] == list(two_cpus) and len(calls) == 3
    dropped.end()  # the dropped turn finalized now: the running turn's threads stay bound
    assert os.sched_getaffinity(0) == {two_cpus[0]}
    lending.end()
    assert os.sched_getaffinity(0) == set(two_cpus)


def test_nothing_is_bound_with_more_threads_than_cpus(two_cpus, monkeypatch):
    # Three threads on two CPUs: the UI's CPU would be one a decoder thread is bound to.
    monkeypatch.setattr(core_lending, "process_cpus", lambda: two_cpus[:2])
    torch.set_num_threads(3)
    lending = CoreLending(torch.device("cpu"), ui_thread=threading.get_native_id())
    assert lending.can_lend and not lending.bound
    assert len(os.sched_getaffinity(0)) > 1  # this thread, the UI's here, stays free


def test_nothing_is_bound_where_the_user_binds_threads_or_off_the_cpu(two_cpus, monkeypatch):
    monkeypatch.setenv("OMP_PROC_BIND", "false")
    with WaitingThread() as ui:
        lending = CoreLending(torch.device("cpu"), ui_thread=ui)
        assert lending.can_lend and not lending.bound
        assert os.sched_getaffinity(0) == os.sched_getaffinity(ui) == set(two_cpus)
        lending.end()
    monkeypatch.delenv("OMP_PROC_BIND")
    assert not CoreLending(torch.device("cuda")).bound


@pytest.mark.model
def test_a_default_model_turn_binds_its_threads_only_while_it_runs(two_cpus, monkeypatch):
    """A real turn with a UI thread: bound from its first step to its end (stopped or not), with
    the same numbers as a turn that binds nothing."""
    from chatapp.engine.loader import load_engine

    engine = load_engine("default", "cpu")
    settings = SamplingSettings(seed=5, max_new_tokens=24)
    everywhere = set(two_cpus)
    monkeypatch.setenv("OMP_PROC_BIND", "false")  # the user binds: chatapp binds nothing
    reference, _ = _steps(engine, settings)
    for name in core_lending.USER_BINDING:
        monkeypatch.delenv(name, raising=False)
    with WaitingThread() as ui:
        engine.reset()
        turn = engine.start_turn(MESSAGES, settings)
        turn.ui_thread = ui
        seen = []
        steps = []
        for step in turn:
            seen.append((os.sched_getaffinity(0), os.sched_getaffinity(ui)))
            steps.append(step)
        assert set(map(lambda s: (frozenset(s[0]), frozenset(s[1])), seen)) == {
            (frozenset({two_cpus[0]}), frozenset({two_cpus[1]}))}
        assert [(s.token_id, s.prob, s.raw_prob, s.entropy) for s in steps] == [r[:4] for r in reference]
        assert os.sched_getaffinity(0) == os.sched_getaffinity(ui) == everywhere  # free again at its end
        engine.reset()
        stopped = engine.start_turn(MESSAGES, settings)
        stopped.ui_thread = ui
        running = iter(stopped)
        next(running), next(running)
        assert os.sched_getaffinity(ui) == {two_cpus[1]}
        running.close()  # a reply stopped in the middle
        assert os.sched_getaffinity(0) == os.sched_getaffinity(ui) == everywhere

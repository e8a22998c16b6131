"""Leaving a core to a UI while it draws, on CPU.

torch runs a decode step on its OpenMP threads (by default one per physical core), which wait
for each other at the end of every product (about 120 a step). A UI thread that draws beside them takes a core
from one of them, and the others spin at the next barrier until it is back: drawing a batch of
text then costs the decoder more time than the drawing itself. While a UI draws, chatapp's
kernels run their loops on one thread fewer instead (`kernels/parallel_rows.h`), and the UI has
a core of its own (what that saves: README, Performance, "The TUI's cost").

Only chatapp's own loops lend: each of their chunks computes outputs of its own, so the numbers
are the same on any thread count (tested). torch's own operations keep torch's thread count: on
fewer threads they may sum in another order, and a seed would no longer give the same reply.

For the length of a turn, where torch runs one thread per CPU, each of the decoder's threads is
bound to a CPU of its own, and the UI's thread to the CPU of the one a lent loop leaves out; at
its end every thread of the process may run on any of its CPUs again. Unbound, the scheduler now
and then ran the UI beside the decoder's own thread on one CPU while the other idled: a lent step
that takes 9 ms then took 15-22 (what binding bought: README, Performance, "The TUI's cost").
Binding changes no number. Where the user's environment binds threads itself (`OMP_PROC_BIND` and
the like), chatapp binds nothing.
"""

from __future__ import annotations

import functools
import os

import torch

from chatapp.runtime import block_kernel, int4_kernel


USER_BINDING = ("OMP_PROC_BIND", "OMP_PLACES", "GOMP_CPU_AFFINITY", "KMP_AFFINITY")
"""Environment variables with which a user binds OpenMP's threads: where one is set, chatapp
binds no thread."""


@functools.cache
def process_cpus() -> tuple[int, ...]:
    """The CPUs this process may run on, read at the first call (before any turn binds a thread:
    a bound thread would read its own CPU); empty where the system does not say (not Linux)."""
    try:
        return tuple(sorted(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return ()


def usable_cpus() -> int:
    """How many CPUs this process may run on."""
    return len(process_cpus()) or os.cpu_count() or 1


def _bind_thread(thread_id: int, cpus: set[int]) -> None:
    """Bind one of this process's threads (its Linux id) to `cpus`; one that has ended is left
    alone (its id may be another process's thread by now)."""
    if os.path.exists(f"/proc/self/task/{thread_id}"):
        try:
            os.sched_setaffinity(thread_id, cpus)
        except OSError:
            pass


def free_threads() -> None:
    """Let every thread of this process run on any of its CPUs (`process_cpus`) again: the ones a
    turn bound, and any a bound thread started meanwhile (a new thread inherits its creator's
    CPUs). Safe from any thread; nothing where the system cannot bind."""
    cpus = set(process_cpus())
    if len(cpus) > 1 and os.path.isdir("/proc/self/task"):
        for thread_id in os.listdir("/proc/self/task"):
            _bind_thread(int(thread_id), cpus)


class _Binding:
    holder: "CoreLending | None" = None
    """The lending whose turn's threads are bound now (the latest to bind): only it frees them, so
    a dropped turn finalized later cannot free the threads of the turn running then."""


class CoreLending:
    """Whether one turn's decode steps leave a core to the UI now."""

    def __init__(self, device: torch.device, ui_thread: int | None = None) -> None:
        """For a turn decoding on `device`, started on the decoder's thread; its steps start on all
        of torch's threads, even after a turn that was dropped while it lent (its generator not yet
        closed). Where it can lend, the decoder's threads are bound to a CPU each, and the thread
        `ui_thread` (a Linux thread id: `threading.get_native_id()`), if any, to the CPU a lent
        loop leaves, until `end`."""
        threads = torch.get_num_threads()
        self.can_lend = device.type == "cpu" and 1 < threads and threads >= usable_cpus()
        """Only on CPU, with 2 threads or more, and only where they take every CPU (else the UI
        has one already, torch's default being one thread per physical core)."""
        self.lent = False
        """Whether chatapp's loops run on one thread fewer now."""
        self.ui_thread = ui_thread
        """The UI's thread, bound while the decoder's threads are."""
        self._may_bind = self.can_lend and threads == len(process_cpus()) > 1 and not any(
            name in os.environ for name in USER_BINDING)
        """One thread per CPU (with more threads than CPUs, the UI's would share one with the
        decoder's), and the user binds nothing."""
        self._lent_since_bound = False
        if self.can_lend:  # one turn runs at a time: whatever a turn dropped unclosed lent ends here
            self._set(0)
        self.bind()

    def lend(self) -> None:
        """Run chatapp's loops on one thread fewer from their next loop on (the engine thread,
        before each step while the UI draws: set every time, as the UI may have taken the core
        back in the middle of the step before, `reclaim`)."""
        if self.can_lend:
            self._set(1)
            self._lent_since_bound = True

    def reclaim(self) -> None:
        """Run them on all of torch's threads again from their next loop on. Safe from any
        thread: the UI calls it the moment it has drawn (`Turn.core_back`), in the middle of a
        step, rather than leave the rest of that step on one thread. A reclaim that crosses a
        `lend` still being made may miss it; the engine's own reclaim before the next step then
        ends it."""
        if self.lent:
            self._set(0)

    @property
    def bound(self) -> bool:
        """Whether this turn's threads (and the UI's) are bound to their CPUs now: it bound them
        last, and has not ended."""
        return _Binding.holder is self

    def end(self) -> None:
        """(any thread, as the turn ends) Take back what was lent, and, unless a later turn has
        bound them since, let every thread of the process run on any of its CPUs again."""
        self.reclaim()
        if self.bound:
            _Binding.holder = None
            free_threads()

    def bind(self) -> None:
        """(the decoder's thread, before each step) Bind its team's threads, and the UI's, where
        not bound yet and a kernel is loaded (the first turn after a start may begin before the
        kernel's thread has loaded it), and again after a lent loop: a smaller team may end the
        pool's spare threads, and the ones a full team starts again inherit this thread's CPU."""
        again = self._lent_since_bound and not self.lent
        if not self._may_bind or (self.bound and not again):
            return
        cpus = list(process_cpus())
        bound = [ids for ids in (int4_kernel.bind_threads(cpus), block_kernel.bind_threads(cpus))
                 if ids is not None]
        self._lent_since_bound = False
        if not any(thread_id >= 0 for ids in bound for thread_id in ids):
            return
        if not self.bound and self.ui_thread is not None:
            _bind_thread(self.ui_thread, {cpus[-1]})  # the CPU of the thread a lent loop leaves out
        _Binding.holder = self

    def _set(self, lent: int) -> None:
        int4_kernel.lend_threads(lent)
        block_kernel.lend_threads(lent)
        self.lent = lent > 0

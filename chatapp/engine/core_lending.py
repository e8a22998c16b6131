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

For the length of a turn, each of the decoder's threads is bound to a CPU of its own, and the UI's
thread to the CPU of the one a lent loop leaves out. Unbound, the scheduler now and then ran the
UI beside the decoder's own thread on one CPU while the other idled: a lent step that takes 9 ms
then took 15-22 (what binding bought: README, Performance, "The TUI's cost"). Binding changes no
number. Where the user's environment binds threads itself (`OMP_PROC_BIND` and the like), chatapp
binds nothing.
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
    """The CPUs this process may run on, as it started (read once: a bound thread would read its
    own CPU); empty where the system does not say (not Linux)."""
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
        self.bound = False
        """Whether the decoder's threads (and the UI's) are bound to their CPUs now."""
        self._may_bind = self.can_lend and len(process_cpus()) > 1 and not any(
            name in os.environ for name in USER_BINDING)
        if self.can_lend:  # one turn runs at a time: whatever a turn dropped unclosed lent ends here
            self._set(0)
        self.bind()

    def lend(self) -> None:
        """Run chatapp's loops on one thread fewer from their next loop on (the engine thread,
        before each step while the UI draws: set every time, as the UI may have taken the core
        back in the middle of the step before, `reclaim`)."""
        if self.can_lend:
            self._set(1)

    def reclaim(self) -> None:
        """Run them on all of torch's threads again from their next loop on. Safe from any
        thread: the UI calls it the moment it has drawn (`Turn.core_back`), in the middle of a
        step, rather than leave the rest of that step on one thread. A reclaim that crosses a
        `lend` still being made may miss it; the engine's own reclaim before the next step then
        ends it."""
        if self.lent:
            self._set(0)

    def end(self) -> None:
        """(the decoder's thread, as the turn ends) Take back what was lent, and let every
        thread bound run on any of the process's CPUs again."""
        self.reclaim()
        if self.bound:
            cpus = list(process_cpus())
            int4_kernel.bind_threads(cpus, False)
            block_kernel.bind_threads(cpus, False)
            if self.ui_thread is not None:
                _bind_thread(self.ui_thread, set(cpus))
            self.bound = False

    def bind(self) -> None:
        """(the decoder's thread) Bind its threads, and the UI's, where they are not bound yet and
        a kernel is loaded: at the turn's start, and before each step until then (the first turn
        after a start may begin before the kernel's thread has loaded it)."""
        if not self._may_bind or self.bound:
            return
        cpus = list(process_cpus())
        bound = [int4_kernel.bind_threads(cpus, True), block_kernel.bind_threads(cpus, True)]
        self.bound = any(ids is not None for ids in bound)
        if self.bound and self.ui_thread is not None:
            lent_thread = torch.get_num_threads() - 1  # the one a lent loop leaves out
            _bind_thread(self.ui_thread, {cpus[lent_thread % len(cpus)]})

    def _set(self, lent: int) -> None:
        int4_kernel.lend_threads(lent)
        block_kernel.lend_threads(lent)
        self.lent = lent > 0

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
"""

from __future__ import annotations

import os

import torch

from chatapp.runtime import block_kernel, int4_kernel


def usable_cpus() -> int:
    """The CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


class CoreLending:
    """Whether one turn's decode steps leave a core to the UI now."""

    def __init__(self, device: torch.device) -> None:
        """For a turn decoding on `device`; its steps start on all of torch's threads, even after
        a turn that was dropped while it lent (its generator not yet closed)."""
        threads = torch.get_num_threads()
        self.can_lend = device.type == "cpu" and 1 < threads and threads >= usable_cpus()
        """Only on CPU, with 2 threads or more, and only where they take every CPU (else the UI
        has one already, torch's default being one thread per physical core)."""
        self.lent = False
        """Whether chatapp's loops run on one thread fewer now."""
        if self.can_lend:  # one turn runs at a time: whatever a turn dropped unclosed lent ends here
            self._set(0)

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

    def _set(self, lent: int) -> None:
        int4_kernel.lend_threads(lent)
        block_kernel.lend_threads(lent)
        self.lent = lent > 0

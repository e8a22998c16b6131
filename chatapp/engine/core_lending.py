"""Leaving a core to a UI while it draws, on CPU.

torch runs a decode step on one OpenMP thread per core, and its threads wait for each other at
the end of every product (about 120 a step). A UI thread that draws beside them takes a core
from one of them, and the others spin at the next barrier until it is back: drawing a batch of
text then costs the decoder more time than the drawing itself. While a UI draws, a turn's steps
run on one thread fewer instead, and the UI has a core of its own (what that saves: README,
Performance, "The TUI's cost").

Only steps that run whole on chatapp's kernels lend a core (`Decoder.steps_natively`): their
numbers are the same on any thread count (tested), where torch's own operations may sum in
another order on fewer threads, and a seed would no longer give the same reply.
"""

from __future__ import annotations

import torch


class CoreLending:
    """The thread count of one turn's decode steps: torch's own, or one fewer while lent."""

    def __init__(self, device: torch.device) -> None:
        """For a turn decoding on `device` (lending happens only on CPU, with 2+ threads)."""
        self.threads = torch.get_num_threads()
        """The count the turn started with, restored when lending ends."""
        self.can_lend = device.type == "cpu" and self.threads > 1
        self.lent = False
        """Whether the steps run on one thread fewer now."""

    def lend(self, lend: bool) -> None:
        """Run the next steps on one thread fewer (`lend`), or on all of them again."""
        if lend != self.lent and self.can_lend:
            torch.set_num_threads(self.threads - 1 if lend else self.threads)
            self.lent = lend

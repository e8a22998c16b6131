"""How long torch's idle OpenMP threads spin before they sleep: set before torch loads libgomp.

After each parallel loop, libgomp's threads spin (`GOMP_SPINCOUNT` pauses, 300,000 by default:
milliseconds) before they sleep. While a UI draws on the core chatapp's kernels leave it
(`chatapp.engine.core_lending`), the thread those loops leave out would go on spinning on that
core for those milliseconds, most of a batch's drawing. chatapp's processes spin for a third of
that, still longer than the gaps between a decode step's loops, so the threads rarely sleep
inside a step. What it bought, and what fewer pauses cost: README, Performance, "The TUI's cost".
"""

from __future__ import annotations

import os

VARIABLE = "GOMP_SPINCOUNT"
"""libgomp's environment variable for the spin."""
SPIN_COUNT = "100000"
"""chatapp's value, unless the user's environment sets one."""


class _Set:
    by_chatapp = False
    """Whether this process's `VARIABLE` is chatapp's (not the user's)."""


def shorten_idle_spin() -> None:
    """Set `VARIABLE` to `SPIN_COUNT` for this process and its children unless it is set already
    (the user's value wins). It takes effect only where torch is not imported yet: call it first."""
    if VARIABLE not in os.environ:
        os.environ[VARIABLE] = SPIN_COUNT
        _Set.by_chatapp = True


def peer_environment() -> dict[str, str]:
    """This process's environment without the spin count chatapp set: for a peer measured beside
    chatapp (llama.cpp's OpenMP threads spin as the user's environment has them)."""
    environment = dict(os.environ)
    if _Set.by_chatapp:
        environment.pop(VARIABLE, None)
    return environment

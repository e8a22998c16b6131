"""One long-lived thread for all the model work of a process that also runs a UI.

On CPU, torch runs its kernels on OpenMP (libgomp). libgomp keeps a pool of worker threads for
every thread that has run a parallel operation, for as long as that thread lives. Textual runs
its thread workers on a reused pool of threads, so the model could be loaded on one of them and
decoded on another. Two OpenMP pools are then alive. With more OpenMP threads than cores, libgomp
cuts its spin-waiting short and every decode step slows down (by how much: README, Performance,
"Threads").

So the TUI loads, decodes and resets on this one thread, and `chatapp bench` measures the
headless engine on it too. A process that does all its model work on one thread (the CLI, the
bench's own runs) needs none of this.
"""

from __future__ import annotations

import asyncio
import functools
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Awaitable, Callable, TypeVar

T = TypeVar("T")

THREAD_NAME = "chatapp-engine"
"""Name of the engine thread (shown by debuggers and `threading.enumerate()`)."""


@functools.cache
def engine_executor() -> ThreadPoolExecutor:
    """The process's engine thread, started on first use."""
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix=THREAD_NAME)


def submit(fn: Callable[..., T], *args) -> Future:
    """Queue `fn(*args)` on the engine thread, after whatever it is running."""
    return engine_executor().submit(fn, *args)


async def on_engine_thread(fn: Callable[..., T], *args) -> T:
    """Run `fn(*args)` on the engine thread and wait for its result.

    Cancelling the wait does not cancel `fn`: it still runs, in order, and must check for itself
    whether it is still wanted (a turn checks its job's stop event each step). A queued
    reset therefore never goes missing because the worker waiting on it was cancelled.
    """
    return await queue_on_engine_thread(fn, *args)


def queue_on_engine_thread(fn: Callable[..., T], *args) -> Awaitable[T]:
    """Queue `fn(*args)` on the engine thread now (from a running event loop) and return what
    to await for its result, so that the caller can do other work while it runs; a cancelled
    wait leaves `fn` running, as with `on_engine_thread`."""
    waited = asyncio.wrap_future(submit(fn, *args))
    waited.add_done_callback(_retrieve)
    return asyncio.shield(waited)


def _retrieve(future: asyncio.Future) -> None:
    # Nobody may be waiting any more (the wait was cancelled): take the outcome so that an
    # exception is not reported as never retrieved. Functions run here report their own errors.
    if not future.cancelled():
        future.exception()

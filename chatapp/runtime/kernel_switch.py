"""When a decoder's decode steps move onto chatapp's int4 kernel (`chatapp.runtime.int4_kernel`).

The kernel is loaded, or first compiled, on a thread of its own, and the int4 weights are laid
out for it there; the decoder takes them up at a decode step's start, layers and LM head
together, so no step runs half on one path and half on the other. A kernel already built loads
in about 0.2 s, behind the app's start and the first prefill: the first decode step waits for it,
so every step of the session runs on it. One that must be compiled first (about 20 s) is not
waited for: decoding runs on the TorchScript layers meanwhile and switches when it is ready.
The same thread then loads the block kernel (`block_kernel.built_ops`) when it was built before,
for the LM head's one-pass top-k and kept ids (the engine takes them up at its next step).

A large LM head kept in wider GGUF blocks gets its 4-bit copy made on such a thread too
(`requantize_in_background`, for `chatapp.runtime.requantized_head.RequantizedHead`).

That thread never outlives the interpreter: a process ending while it runs native code (loading
the library, laying out weights) aborts ("terminate called without an active exception"). At
exit (`_finish_at_exit`, an `atexit` hook: it runs after non-daemon threads are joined, while
daemon threads still run) a compile in progress is killed, the layout stops at its next weight,
and the thread is joined.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time

import torch

from chatapp.runtime import block_kernel, int4_kernel
from chatapp.runtime.int4_layout import laid_out, requantized
from chatapp.runtime.quantize import OutputHead
from chatapp.support.memory import return_freed_memory

log = logging.getLogger(__name__)

WAIT_SECONDS = 30.0
"""Longest the first decode step waits for a built kernel to load (it takes about 0.2 s)."""
EXIT_WAIT_SECONDS = 10.0
"""Longest the interpreter's exit waits for a kernel thread, once told to stop (it then finishes
a library load or one weight's layout: well under a second)."""


class _Threads:
    """The kernel threads still running, and whether the process is exiting."""

    lock = threading.Lock()
    running: set[threading.Thread] = set()
    exiting = threading.Event()
    """Set at interpreter exit: layouts in progress stop, no new thread starts."""
    hooked = False
    """Whether `_finish_at_exit` is registered with atexit."""


def _start(target, *args) -> bool:
    """Run `target(*args)` on a kernel thread that `_finish_at_exit` waits for; False (and nothing
    runs) once the interpreter is exiting."""
    with _Threads.lock:
        if _Threads.exiting.is_set():
            return False
        if not _Threads.hooked:
            atexit.register(_finish_at_exit)
            _Threads.hooked = True

        def run() -> None:
            try:
                target(*args)
            finally:
                with _Threads.lock:
                    _Threads.running.discard(thread)

        thread = threading.Thread(target=run, name="chatapp-int4-kernel", daemon=True)
        _Threads.running.add(thread)
        thread.start()
        return True


def _finish_at_exit() -> None:
    """Stop the kernel threads and wait for them (at most `EXIT_WAIT_SECONDS` in all)."""
    with _Threads.lock:
        _Threads.exiting.set()
        threads = list(_Threads.running)
    if not threads:
        return
    int4_kernel.cancel_build()
    deadline = time.monotonic() + EXIT_WAIT_SECONDS
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
        if thread.is_alive():
            log.warning("chatapp's int4 kernel thread did not stop within %.0f s of exit", EXIT_WAIT_SECONDS)


def requantize_in_background(head) -> bool:
    """Make the 4-bit copy of `head` (a `chatapp.runtime.requantized_head.RequantizedHead`) on a
    kernel thread, loading (or first compiling) the int4 kernel there; the head reads through
    the copy from its next call on, and its `settled` is set either way. False (nothing runs, the
    head stays exact) once the interpreter is exiting."""
    if _start(_requantize, head):
        return True
    head.settled.set()
    return False


def _requantize(head) -> None:
    try:
        if int4_kernel.load():
            parts = requantized(head.exact_blocks, stop=_Threads.exiting.is_set)
            if parts is not None:
                head.kernel_parts = parts  # one assignment: a call reads the old or the new whole
                log.info("the LM head reads through its 4-bit copy from now on")
            return_freed_memory()  # the slices' temporaries, freed on this thread's arena
    except Exception:  # noqa: BLE001 - the head simply stays exact
        log.exception("making the LM head's 4-bit copy failed")
    finally:
        head.settled.set()


class KernelSwitch:
    """chatapp's int4 kernel for one decoder: its weights, once ready and taken up."""

    def __init__(self, layers: list[list[list[torch.Tensor]]], head) -> None:
        """Start loading the kernel and laying out `layers` (each layer's four projections, q/k/v
        fused, o, gate/up fused, down, as `[packed, scales_and_zeros]` for torch's int4 kernel)
        and the LM head `head` (when it is an `OutputHead`) for it."""
        self.settled = threading.Event()
        """Set once it is known whether decode steps will run on the kernel."""
        self.step_weights: list[torch.Tensor] | None = None
        """Every layer's kernel tensors in turn, for `decode_layers`, once taken up."""
        self._ready: tuple[list[torch.Tensor], tuple | None] | None = None  # laid out, not taken up
        self._head = head
        self._wait = int4_kernel.built()
        self.compiles = not self._wait
        """Whether the kernel is being compiled for this decoder (decoding runs slower meanwhile)."""
        if not _start(self._prepare, layers):  # exiting: decoding stays on the TorchScript layers
            self.settled.set()

    def _prepare(self, layers: list[list[list[torch.Tensor]]]) -> None:
        try:
            if int4_kernel.load():
                weights = []
                for projections in layers:
                    for parts in projections:  # [packed, scales_and_zeros] of each weight the product joins
                        if _Threads.exiting.is_set():
                            return
                        layout = laid_out(parts)
                        if layout is None:
                            return
                        weights += layout
                head = self._head
                head_kernel = laid_out([head.weight, head.scales]) if isinstance(head, OutputHead) else None
                self._ready = (weights, head_kernel)
                return_freed_memory()  # the layout's temporaries, freed on this thread's arena (~30 MB)
            if not _Threads.exiting.is_set():
                self.settled.set()  # the steps wait for the int4 kernel only
                kernels = block_kernel.built_ops()  # the LM head's one-pass top-k and kept ids (`Engine.take_up_kernels`)
                if kernels is not None and isinstance(self._head, OutputHead):
                    self._head.best_of = kernels.top_k  # and the head's own choice of its exact rows
                    self._head.exact_of = kernels.exact_logits
        except Exception:  # noqa: BLE001 - decoding simply stays on the TorchScript layers
            log.exception("laying out the int4 weights for chatapp's kernel failed")
        finally:
            self.settled.set()

    def weights_for_step(self) -> list[torch.Tensor] | None:
        """At a decode step's start: the kernel's weights for `decode_layers`, taking them up (and
        the LM head's) if they have just become ready; None while the step runs without it."""
        if self._wait:
            self._wait = False
            self.settled.wait(WAIT_SECONDS)
        if self._ready is not None:
            self.step_weights, head_kernel = self._ready
            self._ready = None
            log.info("decode steps run on chatapp's int4 kernel from now on")
            if head_kernel is not None:
                self._head.kernel_parts = head_kernel
        return self.step_weights

"""When a decoder's decode steps move onto chatapp's int4 kernel (`chatapp.int4_kernel`).

The kernel is loaded, or first compiled, on a thread of its own, and the int4 weights are laid
out for it there; the decoder takes them up at a decode step's start, layers and LM head
together, so no step runs half on one path and half on the other. A kernel already built loads
in about 0.2 s, behind the app's start and the first prefill: the first decode step waits for it,
so every step of the session runs on it. One that must be compiled first (about 10 s) is not
waited for: decoding runs on the TorchScript layers meanwhile and switches when it is ready.
"""

from __future__ import annotations

import logging
import threading

import torch

from chatapp import int4_kernel
from chatapp.quantize import OutputHead

log = logging.getLogger(__name__)

WAIT_SECONDS = 30.0
"""Longest the first decode step waits for a built kernel to load (it takes about 0.2 s)."""


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
        threading.Thread(target=self._prepare, args=(layers,), name="chatapp-int4-kernel", daemon=True).start()

    def _prepare(self, layers: list[list[list[torch.Tensor]]]) -> None:
        try:
            if int4_kernel.load():
                weights = []
                for projections in layers:
                    for packed, scales in projections:
                        laid_out = int4_kernel.convert(packed, scales)
                        if laid_out is None:
                            return
                        weights += laid_out
                head = self._head
                head_kernel = int4_kernel.convert(head.weight, head.scales) if isinstance(head, OutputHead) else None
                self._ready = (weights, head_kernel)
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
            if head_kernel is not None:
                self._head.kernel_parts = head_kernel
        return self.step_weights

"""A decode step of `LlamaDecoder` that a CUDA graph can hold: one launch a step on a GPU.

A decode step through `run_layers` launches some thirty kernels a layer, each a few
microseconds of the host's time, which on a GPU is most of a small model's step. A CUDA graph
records a step's launches once and replays them as one; it can only hold a step whose every
operation has the same shapes and arguments at every position, and which never reads back to
the host. `CapturedStep` is that step:

- the token and its position live in tensors on the device (`token`, `position`), set before
  each replay by a copy from the draw and a fill, never read back;
- the rotary angles are gathered at `position`, the new keys and values written there
  (`index_copy_`), and attention runs over the whole KV buffer with the positions after it
  masked out, so no shape depends on the position;
- the final norm's output lands in one buffer the caller reads (`hidden`).

The layers run as plain Python (`layer_loop.run_layers`), not TorchScript: the graph already
removes the dispatch TorchScript saves, and a TorchScript plan being settled or compiled during
a capture would break it. On CUDA the step is captured as a graph, on the decoder's device, the
first time it runs for a KV buffer (after three warm-up runs on a side stream, as CUDA graphs
need), and captured again once the decoder has replaced the buffer (`forget`). A capture that
fails is logged and the decoder goes on without the graph. Elsewhere the step runs as it is: the
tests hold it, on this CPU, to `decode_one`'s numbers and to the same operations, shapes and
arguments at every position (tests/test_captured_step.py). No GPU has run it yet.
"""

from __future__ import annotations

import logging
import weakref
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from chatapp.runtime.layer_loop import run_layers

if TYPE_CHECKING:
    from chatapp.runtime.llama_decoder import LlamaDecoder

log = logging.getLogger(__name__)

WARM_UP_RUNS = 3
"""Runs on a side stream before a capture: CUDA graphs need the kernels' first runs done before
recording."""


class CaptureFailed(RuntimeError):
    """The step could not be recorded as a CUDA graph (the decoder then decodes without one)."""


class CapturedStep:
    """One decode step of `decoder`'s layers with the position in a tensor (see the module)."""

    def __init__(self, decoder: "LlamaDecoder") -> None:
        self._decoder = weakref.ref(decoder)  # the decoder holds this step: no cycle to keep it alive
        device = decoder.device
        self.token = torch.zeros(1, dtype=torch.long, device=device)
        """`(1,)` the token the next step runs."""
        self.position = torch.zeros(1, dtype=torch.long, device=device)
        """`(1,)` its position."""
        self.hidden = torch.zeros(decoder.norm_weight.shape[-1], dtype=decoder.dtype, device=device)
        """`(d_model,)` the latest step's context vector (a buffer the graph writes)."""
        self._graph = None
        """The recorded step (a `torch.cuda.CUDAGraph`) for the decoder's current KV buffer, or None."""

    @property
    def decoder(self) -> "LlamaDecoder":
        return self._decoder()

    def forget(self) -> None:
        """Drop the recording (and the memory it holds): the decoder replaced its KV buffer."""
        self._graph = None

    @torch.inference_mode()
    def run(self, token: torch.Tensor, position: int) -> torch.Tensor:
        """Run `token` (a long on the device) at `position` (within the KV buffer, which the
        decoder has reserved); its context vector `(d_model,)`, a fresh tensor. Raises
        CaptureFailed, having run nothing, where CUDA could not record the step."""
        device = self.decoder.device
        if device.type != "cuda":
            self._set_inputs(token, position)
            return self.step().clone()
        with torch.cuda.device(device):
            self._set_inputs(token, position)
            if self._graph is None:
                self._capture()
            self._graph.replay()
            return self.hidden.clone()

    def _set_inputs(self, token: torch.Tensor, position: int) -> None:
        self.token.copy_(token.reshape(1))
        self.position.fill_(position)

    @torch.inference_mode()
    def step(self) -> torch.Tensor:
        """The step's operations, as the graph holds them: `token` at `position` through every
        layer and the final norm, into `hidden`."""
        d = self.decoder
        x = d.embed(self.token)  # (1, d_model)
        cos, sin = d.rotary_tables_at(self.position)  # (1, heads + 2 kv_heads, head_dim) each
        held = torch.arange(d.capacity, device=d.device)  # (capacity,)
        mask = (held <= self.position).unsqueeze(0)  # (1, capacity): the positions up to this one
        x = run_layers(
            x, cos, sin, d.rotation, d.norms, d.qkv_parts, d.o_parts, d.gate_up_parts, d.down_parts,
            d.layer_caches, 0, d.heads, d.kv_heads, d.eps, mask, False, self.position,
        )
        return self.hidden.copy_(F.rms_norm(x[-1], (x.shape[-1],), d.norm_weight, d.eps))  # (d_model,)

    def _capture(self) -> None:
        """Record `step` as a CUDA graph for the decoder's current KV buffer (on the current
        device, the decoder's)."""
        try:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(WARM_UP_RUNS):  # writes position's keys and values: the replay rewrites them
                    self.step()
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self.step()
        except RuntimeError as error:
            raise CaptureFailed(str(error)) from error
        self._graph = graph

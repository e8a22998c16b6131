"""Our own decoder for Llama-family models: the fast path of prefill and decode-one.

For a small model such as SmolLM2-135M, most of a decode step through transformers' eager
modules is Python dispatch, not arithmetic: every layer runs three separate q/k/v products, two
gate/up products, rotary embeddings per tensor, a growing `torch.cat` KV cache and several
layers of wrappers. `LlamaDecoder` runs the same mathematics with the model's own weights in
fewer, larger operations:

- q, k and v come from one fused product, and gate and up from another (the model's linear
  layers are repointed at row slices of the fused weights, so the weights are not stored twice;
  only int4 scales, a few percent of the packed bytes, are);
- rotary embeddings are applied to q and k together, with the cos/sin of the model's own
  rotary module, computed once for every position the KV buffers can hold;
- the KV cache is a preallocated buffer written in place, grown by doubling;
- the layer loop (`chatapp.runtime.layer_loop.run_layers`) runs compiled by TorchScript, so the ~30
  small operations of each layer are dispatched without Python between them;
- a decode step or a prefill of an int4 float32 model runs all its layers in one call of
  chatapp's own kernel (`decode_layers`, `chatapp.runtime.int4_kernel`) once
  `chatapp.runtime.kernel_switch` has it ready.

It returns only the final hidden state of the last position; the LM head (chatapp.lm_head)
turns that into logits. Models it does not cover (other architectures, biases, sliding
windows, layers spread by Accelerate) run through transformers' modules (`chatapp.runtime.decoder`).
"""

from __future__ import annotations

import logging
import threading

import torch
import torch.nn.functional as F
from torch import nn

from chatapp.runtime import int4_kernel
from chatapp.runtime.block_linear import ScaledBlocks
from chatapp.runtime.captured_step import CapturedStep, CaptureFailed
from chatapp.runtime.decoder import Decoder, grown_capacity
from chatapp.runtime.kernel_switch import KernelSwitch
from chatapp.runtime.layer_loop import compiled_run_layers, run_layers
from chatapp.runtime.quantize import NO_ROWS, Int4Linear, OutputHead

log = logging.getLogger(__name__)

_SETTLED = threading.Event()
_SETTLED.set()  # the kernel_settled of a decoder that never uses the kernel

MODEL_TYPES = ("llama",)
"""Architectures whose decoder layers this module reproduces."""
INT4_ROW_BLOCK = 64
"""torch's CPU int4 packing interleaves rows in blocks of 64: only whole blocks can be joined."""
MIN_CAPACITY = 256
"""Tokens the KV buffers hold at first; they double when full."""
KERNEL_TENSORS = 12
"""Tensors of one layer in the kernel's weights: three for each of its four projections."""


def config_unsupported_reason(config) -> str | None:
    """Why a model with this config (transformers' or `chatapp.loading.plain_llama`'s) is not one whose
    layers `run_layers` reproduces, or None."""
    if getattr(config, "model_type", None) not in MODEL_TYPES:
        return f"architecture {getattr(config, 'model_type', '?')!r}"
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        return "linear biases"
    if getattr(config, "hidden_act", "silu") != "silu" or getattr(config, "pretraining_tp", 1) != 1:
        return "activation or tensor-parallel layout"
    if rope_type(config) in ("dynamic", "longrope"):
        return "rotary scaling that depends on the sequence length"
    return None


def rope_type(config) -> str:
    """The config's kind of rotary embedding ("default" when it names none)."""
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    return rope.get("rope_type", rope.get("type", "default"))


def unsupported_reason(model) -> str | None:
    """Why `model` must run through transformers' modules, or None when `LlamaDecoder` fits."""
    reason = config_unsupported_reason(model.config)
    if reason is not None:
        return reason
    device_map = getattr(model, "hf_device_map", None)
    if device_map and len(set(device_map.values())) > 1:
        return "layers spread over several devices"
    layer = model.model.layers[0]
    parts = [layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj,
             layer.self_attn.o_proj, layer.mlp.gate_proj, layer.mlp.up_proj, layer.mlp.down_proj]
    if not all(type(p) in (nn.Linear, Int4Linear) for p in parts):
        return "linear layers of an unknown kind"
    return None


def _fuse(linears: list[nn.Module]) -> list[nn.Module]:
    """Linear layers computing `cat([l(x) for l in linears], -1)`: one fused layer when their
    kind allows it (the originals become views of it), else the originals."""
    if all(type(layer) is nn.Linear for layer in linears):
        weight = torch.cat([layer.weight.data for layer in linears])  # (sum N, K)
        fused = nn.Linear(weight.shape[1], weight.shape[0], bias=False, device="meta")  # no init: replaced
        fused.weight = nn.Parameter(weight, requires_grad=False)
        start = 0
        for layer in linears:  # share storage: the model's own layers see the same numbers
            rows = layer.weight.shape[0]
            layer.weight.data = weight[start : start + rows]
            start += rows
        return [fused]
    if all(type(layer) is Int4Linear and layer.out_features % INT4_ROW_BLOCK == 0 for layer in linears):
        packed = torch.cat([layer.packed for layer in linears])  # whole blocks of rows: independent
        scales = torch.cat([layer.scales_and_zeros for layer in linears], dim=1)  # (K/G, sum N, 2)
        start = 0
        for layer in linears:
            layer.packed = packed[start : start + layer.out_features]
            start += layer.out_features
        return [Int4Linear(packed, scales, linears[0].in_features, start)]
    return linears


def _parts(linears: list[nn.Module]) -> list[torch.Tensor]:
    """The tensors `project` reads for `linears`: weight and int4 scales (empty for a float
    weight) of each, in turn."""
    parts = []
    for linear in linears:
        if type(linear) is Int4Linear:
            parts += [linear.packed, linear.scales_and_zeros]
        else:
            parts += [linear.weight, torch.empty(0, device=linear.weight.device)]
    return parts


def _doubled(weight: torch.Tensor) -> torch.Tensor:
    """`cat([weight, weight])`, the form `rms_norm` takes a norm's weight in."""
    return torch.cat([weight.detach(), weight.detach()])


def rotation_matrix(head_dim: int, dtype, device) -> torch.Tensor:
    """`R` with `x @ R == cat(-x[half:], x[:half])`: transformers' `rotate_half` as one product."""
    half = head_dim // 2
    rotation = torch.zeros(head_dim, head_dim, dtype=dtype, device=device)
    index = torch.arange(half, device=device)
    rotation[index + half, index] = -1.0
    rotation[index, index + half] = 1.0
    return rotation


class LlamaDecoder(Decoder):
    """Prefill and decode-one for a Llama-family model with our own KV buffers."""

    def __init__(self, model, compiled: bool = True, kernel: bool = True) -> None:
        """Prepare fused weights for `model` (check `unsupported_reason` first).

        Args:
            model: a transformers Llama-family causal LM.
            compiled: run the layers through TorchScript (`compiled_run_layers`) when it is
                available; False runs the same function as Python.
            kernel: run decode steps of int4 float32 models on chatapp's int4 kernel
                (`chatapp.runtime.int4_kernel`) where the CPU and a C++ compiler allow.
        """
        super().__init__(model)
        config = model.config
        body = model.model
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.eps = float(config.rms_norm_eps)
        self.max_length = getattr(config, "max_position_embeddings", None) or MIN_CAPACITY
        self.embed = body.embed_tokens  # nn.Embedding, or a BlockEmbedding over the GGUF file's blocks
        self.dtype = self.embed.weight.dtype if hasattr(self.embed, "weight") else self.embed.dtype
        self.norm_weight = body.norm.weight
        self.rotary = body.rotary_emb
        self.rotation = rotation_matrix(self.head_dim, self.dtype, self.device)
        self.norms, self.qkv_parts, self.o_parts, self.gate_up_parts, self.down_parts = [], [], [], [], []
        # A built kernel takes over every prefill and decode step from the first: its own joined copy
        # replaces the weights, so they are not fused (copied) for the TorchScript layers as well.
        kernel_takes_over = kernel and int4_kernel.built() and int4_kernel.wanted() is None
        fuse = (lambda linears: linears) if kernel_takes_over else _fuse
        for layer in body.layers:
            attn, mlp = layer.self_attn, layer.mlp
            self.norms += [_doubled(layer.input_layernorm.weight), _doubled(layer.post_attention_layernorm.weight)]
            self.qkv_parts.append(_parts(fuse([attn.q_proj, attn.k_proj, attn.v_proj])))
            self.o_parts.append(_parts([attn.o_proj]))
            self.gate_up_parts.append(_parts(fuse([mlp.gate_proj, mlp.up_proj])))
            self.down_parts.append(_parts([mlp.down_proj]))
        self.run_layers = compiled_run_layers() if compiled else run_layers
        self._kind = "chatapp decoder" + (" (TorchScript)" if self.run_layers is not run_layers else "")
        self.kernel = (
            KernelSwitch(list(zip(self.qkv_parts, self.o_parts, self.gate_up_parts, self.down_parts)),
                         model.get_output_embeddings())
            if kernel and self._kernel_suits() and int4_kernel.wanted() is None else None
        )
        """When decode steps move onto chatapp's int4 kernel (`chatapp.runtime.kernel_switch`), or None."""
        self.captured: CapturedStep | None = CapturedStep(self) if self.device.type == "cuda" else None
        """On a GPU, the decode step a CUDA graph replays (`chatapp.runtime.captured_step`), for
        the tokens already on the device (`decode_one`'s `token`); None elsewhere."""
        self.reset()

    @property
    def kind(self) -> str:
        """Which decoder runs the model, for display."""
        on_kernel = self.kernel is not None and self.kernel.step_weights is not None
        return self._kind + (", int4 kernel" if on_kernel else "")

    @property
    def activity(self) -> str | None:
        """What the decoder is busy with beside decoding, for the status line, or None."""
        if self.kernel is not None and self.kernel.compiles and not self.kernel.settled.is_set():
            return "compiling the int4 kernel: replies speed up when it is ready"
        return None

    @property
    def kernel_settled(self) -> threading.Event:
        """Set once it is known whether decode steps run on chatapp's int4 kernel (from the next
        decode step on)."""
        return self.kernel.settled if self.kernel is not None else _SETTLED

    def _kernel_suits(self) -> bool:
        """Whether a decode step can run as one `decode_layers` call: float32 activations on CPU,
        and every projection int4 weights (q/k/v and gate/up fused by the kernel's layout)."""
        groups = (self.qkv_parts, self.o_parts, self.gate_up_parts, self.down_parts)
        return (
            self.dtype == torch.float32
            and self.device.type == "cpu"
            and all(parts[index + 1].numel() > 0 for group in groups for parts in group for index in range(0, len(parts), 2))
        )

    def reset(self) -> None:
        """Forget everything and free the KV buffers."""
        self.token_ids = []
        self.capacity = 0
        self.cache = None  # (layers, 2, kv_heads, capacity, head_dim): keys, values
        self.layer_caches: list[torch.Tensor] = []
        if self.captured is not None:
            self.captured.forget()
        self.cos = self.sin = None  # (capacity, head_dim): the rotary angles of every position

    def keep(self, n: int) -> None:
        """Keep the first `n` tokens (the buffers beyond them are simply overwritten later)."""
        del self.token_ids[n:]

    def cache_bytes(self) -> int:
        """Memory held by the KV buffers."""
        return 0 if self.cache is None else self.cache.numel() * self.cache.element_size()

    def _reserve(self, length: int) -> None:
        if length <= self.capacity:
            return
        capacity = grown_capacity(self.capacity, length, self.max_length, MIN_CAPACITY)
        shape = (len(self.o_parts), 2, self.kv_heads, capacity, self.head_dim)
        # The captured step attends over the whole buffer, the unused positions masked: they must
        # hold numbers (a masked NaN still makes NaN of its zero weight times its value).
        allocate = torch.zeros if self.captured is not None else torch.empty
        cache = allocate(shape, dtype=self.dtype, device=self.device)
        held = len(self.token_ids)
        if self.cache is not None and held:
            cache[..., :held, :] = self.cache[..., :held, :]
        self.cache, self.capacity = cache, capacity
        self.layer_caches = list(cache.unbind(0))  # (2, kv_heads, capacity, head_dim) each
        if self.captured is not None:  # its recording reads the buffer replaced
            self.captured.forget()
        # The model's own rotary module, once for every position the buffers can hold.
        positions = torch.arange(capacity, device=self.device).unsqueeze(0)  # (1, capacity)
        probe = torch.empty(0, dtype=self.dtype, device=self.device)
        cos, sin = self.rotary(probe, positions)  # (1, capacity, head_dim) each
        self.cos, self.sin = cos[0], sin[0]

    def _rotary_tables(self, start: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin `(T, heads + 2 kv_heads, head_dim)`: rotate q and k, leave v alone."""
        return self._rotary_tables_of(self.cos[start : start + count], self.sin[start : start + count])

    def rotary_tables_at(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`_rotary_tables` for positions given on the device `(T,)`, read without slicing by a
        host number."""
        return self._rotary_tables_of(self.cos.index_select(0, positions), self.sin.index_select(0, positions))

    def _rotary_tables_of(self, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The tables of `_rotary_tables` from the angles' rows `(T, head_dim)` of the positions."""
        rotated = self.heads + self.kv_heads
        shape = (cos.shape[0], rotated + self.kv_heads, self.head_dim)
        cos_table = torch.ones(shape, dtype=self.dtype, device=self.device)
        sin_table = torch.zeros(shape, dtype=self.dtype, device=self.device)
        cos_table[:, :rotated] = cos.unsqueeze(1)
        sin_table[:, :rotated] = sin.unsqueeze(1)
        return cos_table, sin_table

    @torch.inference_mode()
    def decode_choosing(self, token_id: int, head, choice: tuple) -> tuple[torch.Tensor, ...] | None:
        """`decode_one(token_id)` and the LM head `head`'s choice of the next token, in one call of
        the int4 kernel (`decode_step`); None, having run nothing, where a decode step does not
        run there whole: before the kernel is taken up, or unless the embedding is the file's
        blocks and `head` an `OutputHead` on the kernel whose exact rows are blocks too.

        Args:
            token_id: the token to run.
            head: the model's output embeddings.
            choice: the choice's settings, `chatapp.lm_head.native_choice_settings`.

        Returns:
            the block kernel's `choose_token` answer (numbers, kept ids, their probabilities) and
            the step's context vector `(d_model,)`.
        """
        step_weights = self.kernel.weights_for_step() if self.kernel is not None else None
        embedding = getattr(self.embed, "weights", None)
        if (step_weights is None or not isinstance(head, OutputHead) or head.kernel_parts is None
                or head.exact_blocks is None or not isinstance(embedding, ScaledBlocks) or self.embed.scale is not None
                or self.dtype != torch.float32):
            return None
        start = len(self.token_ids)
        self._reserve(start + 1)
        exact = head.exact_blocks
        answer = torch.ops.chatapp.decode_step(
            token_id, [embedding.codes, embedding.scale, embedding.low], [embedding.bits, embedding.block],
            self.cos[start], self.sin[start], self.norms, step_weights, self.cache, start, self.heads, self.kv_heads,
            self.eps, self.norm_weight, list(head.kernel_parts), head.vocab_rows, head.exact_top, NO_ROWS,
            [exact.codes, exact.scale, exact.low], [exact.bits, exact.block], *choice,
        )
        self.token_ids.append(token_id)
        return answer

    def _forward_layers(self, input_ids: torch.Tensor, ids: list[int]) -> torch.Tensor:
        """One token through the layers one at a time, on the kernel when decode steps run there
        (each call the same code as a whole step's, for one layer), keeping each layer's output."""
        start = len(self.token_ids)
        self._reserve(start + 1)
        x = self.embed(input_ids[0])  # (1, d_model)
        step_weights = self.kernel.weights_for_step() if self.kernel is not None else None
        cos, sin = self._rotary_tables(start, 1)
        outputs = []
        for layer in range(len(self.layer_caches)):
            norms = self.norms[2 * layer : 2 * layer + 2]
            if step_weights is not None:
                torch.ops.chatapp.decode_layers(
                    x, self.cos[start], self.sin[start], norms, step_weights[KERNEL_TENSORS * layer : KERNEL_TENSORS * (layer + 1)],
                    self.cache[layer : layer + 1], start, self.heads, self.kv_heads, self.eps,
                )
            else:
                x = self.run_layers(
                    x, cos, sin, self.rotation, norms, self.qkv_parts[layer : layer + 1], self.o_parts[layer : layer + 1],
                    self.gate_up_parts[layer : layer + 1], self.down_parts[layer : layer + 1],
                    self.layer_caches[layer : layer + 1], start, self.heads, self.kv_heads, self.eps, None, False,
                )
            outputs.append(x[-1].clone())
        self.token_ids.extend(ids)
        states = torch.stack(outputs)  # (layers, d_model)
        return F.rms_norm(states, (states.shape[-1],), self.norm_weight, self.eps)

    @torch.inference_mode()
    def decode_one(self, token_id: int, token: torch.Tensor | None = None) -> torch.Tensor:
        """`Decoder.decode_one`; a token already on a GPU runs as the captured step there."""
        if token is None or self.captured is None:
            return super().decode_one(token_id, token)
        start = len(self.token_ids)
        self._reserve(start + 1)
        try:
            hidden = self.captured.run(token, start)
        except CaptureFailed as error:
            log.warning("decoding without a CUDA graph: recording the step failed: %s", error)
            self.captured = None
            return super().decode_one(token_id, token)
        self.token_ids.append(token_id)
        return hidden

    def _forward(self, input_ids: torch.Tensor, ids: list[int]) -> torch.Tensor:
        start, count = len(self.token_ids), len(ids)
        end = start + count
        self._reserve(end)
        x = self.embed(input_ids[0])  # (T, d_model), a fresh tensor we may add into
        # Taken up at a prefill too: the prefill and the steps after it all run on the kernel
        step_weights = self.kernel.weights_for_step() if self.kernel is not None else None
        if step_weights is not None:
            torch.ops.chatapp.decode_layers(
                x, self.cos[start:end], self.sin[start:end], self.norms, step_weights, self.cache, start,
                self.heads, self.kv_heads, self.eps,
            )
            self.token_ids.extend(ids)
            return F.rms_norm(x[-1], (x.shape[-1],), self.norm_weight, self.eps)
        cos, sin = self._rotary_tables(start, count)
        mask = None
        causal = count > 1 and start == 0
        if count > 1 and start > 0:  # the new tokens see the whole cache and each other causally
            rows = torch.arange(start, end, device=self.device).unsqueeze(1)
            mask = torch.arange(end, device=self.device).unsqueeze(0) <= rows  # (T, end)
        x = self.run_layers(
            x, cos, sin, self.rotation, self.norms, self.qkv_parts, self.o_parts, self.gate_up_parts,
            self.down_parts, self.layer_caches, start, self.heads, self.kv_heads, self.eps, mask, causal,
        )
        self.token_ids.extend(ids)
        return F.rms_norm(x[-1], (x.shape[-1],), self.norm_weight, self.eps)  # (d_model,)

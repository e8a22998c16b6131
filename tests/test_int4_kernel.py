"""chatapp's own int4 kernel (`chatapp.runtime.int4_kernel`): its products, its decode step, the switch."""

from __future__ import annotations

import os
import struct
import sys
import threading

import pytest
import torch

from chatapp.runtime import int4_kernel, int4_layout
from chatapp.runtime.llama_decoder import LlamaDecoder
from chatapp.runtime.quantize import (
    GROUP_SIZE,
    ZERO_OFFSET,
    int4_supported,
    pack_int4,
    quantize_int4,
)
from tests.conftest import tiny_llama

needs_kernel = pytest.mark.skipif(
    not (int4_supported() and int4_kernel.load()), reason=f"chatapp's int4 kernel is not available here: {int4_kernel.failure()}"
)


def _four_bit(n: int, k: int, seed: int) -> torch.Tensor:
    """A random `(n, k)` float weight whose blocks of 32 are exactly 4-bit (as a GGUF file's are)."""
    generator = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 16, (n, k // GROUP_SIZE, GROUP_SIZE), generator=generator).float()
    codes[..., 0], codes[..., 1] = 0, 15  # every block spans the codes, so packing finds the same ones
    scale = torch.rand(n, k // GROUP_SIZE, 1, generator=generator) * 0.01 + 0.001
    low = -8 * scale + torch.randn(n, k // GROUP_SIZE, 1, generator=generator) * 0.002
    return (codes * scale + low).reshape(n, k)


def _dequantized(packed: torch.Tensor, scales_and_zeros: torch.Tensor) -> torch.Tensor:
    """The float32 weight torch's int4 packing stands for: `(q - 8) * scale + zero` per block."""
    blocks, n, _ = scales_and_zeros.shape
    codes = int4_layout.unpack_codes(packed, n, blocks * GROUP_SIZE).float().reshape(n, blocks, GROUP_SIZE)
    scale, zero = scales_and_zeros.float().transpose(0, 1).unbind(-1)  # (N, K/32) each
    return ((codes - ZERO_OFFSET) * scale.unsqueeze(-1) + zero.unsqueeze(-1)).reshape(n, -1)


@pytest.mark.skipif(not int4_supported(), reason="this torch build has no CPU int4 kernels")
def test_the_codes_come_back_out_of_torchs_packing():
    codes = torch.randint(0, 16, (192, 160), generator=torch.Generator().manual_seed(1), dtype=torch.int32)
    packed = torch._convert_weight_to_int4pack_for_cpu(codes, 1)
    unpacked = int4_layout.unpack_codes(packed, 192, 160)
    if unpacked is None:
        pytest.skip("torch packs int4 weights in another layout on this CPU (the kernel is then not used)")
    assert torch.equal(unpacked.to(torch.int32), codes)


@needs_kernel
@pytest.mark.parametrize("n, k, m", [(960, 576, 1), (3072, 576, 3), (576, 1536, 1), (128, 64, 2), (64, 192, 1)])
def test_the_kernel_computes_what_its_reference_computes(n, k, m):
    packed, scales_and_zeros, exact = pack_int4(_four_bit(n, k, seed=n + k))
    assert exact == 1.0
    weights = int4_layout.convert(packed, scales_and_zeros)
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(2)) * 3
    out = torch.ops.chatapp.int4_linear(x, *weights)
    reference = int4_layout.reference_int4_linear(x, *weights)
    assert out.shape == (m, n) and out.dtype == torch.float32
    assert torch.allclose(out, reference, rtol=0, atol=1e-4 * reference.abs().max().item())
    # and both are the float product of the same 4-bit weights, up to int16 rounding of x
    exact_product = x.double() @ _dequantized(packed, scales_and_zeros).double().T
    assert (out.double() - exact_product).abs().max() < 1e-3 * exact_product.abs().max()


@needs_kernel
def test_the_kernel_is_closer_to_float_arithmetic_than_torchs_bfloat16_kernel():
    packed, scales_and_zeros, _ = pack_int4(_four_bit(576, 1536, seed=3))
    x = torch.randn(1, 1536, generator=torch.Generator().manual_seed(4))
    exact_product = x.double() @ _dequantized(packed, scales_and_zeros).double().T
    ours = torch.ops.chatapp.int4_linear(x, *int4_layout.convert(packed, scales_and_zeros))
    torchs = torch._weight_int4pack_mm_for_cpu(x.bfloat16(), packed, GROUP_SIZE, scales_and_zeros)
    assert (ours.double() - exact_product).norm() < 0.1 * (torchs.double() - exact_product).norm()


def _int4_model_and_float_twin(**overrides):
    """A tiny int4 Llama, and the same model with the 4-bit weights as float32 numbers."""
    overrides = {"hidden_size": 128, "num_key_value_heads": 2, **overrides}
    model = tiny_llama(**overrides)
    twin = tiny_llama(**overrides)
    twin.load_state_dict(model.state_dict())
    quantize_int4(model)
    linears = dict(model.named_modules())
    for name, module in twin.named_modules():
        packed = linears[name]
        if hasattr(packed, "scales_and_zeros"):
            module.weight.data = _dequantized(packed.packed, packed.scales_and_zeros)
    return model, twin


@needs_kernel
@pytest.mark.parametrize("context, shape", [
    (12, {}),  # head_dim 32: the plain attention loops
    (600, {}),  # from 128 positions the heads are shared out between the threads
    (200, {"hidden_size": 256}),  # head_dim 64 (the default model's): four keys at a time on AVX512
    (150, {"hidden_size": 320, "num_key_value_heads": 4}),  # 80
    (150, {"hidden_size": 512}),  # 128
])
def test_a_decode_step_on_the_kernel_is_float_arithmetic_on_the_4_bit_weights(context, shape):
    model, twin = _int4_model_and_float_twin(**shape)
    fast, reference = LlamaDecoder(model), LlamaDecoder(twin, kernel=False)
    ids = torch.randint(0, 1000, (context,), generator=torch.Generator().manual_seed(5)).tolist()
    for token in ids:  # one step at a time
        hidden, expected = fast.decode_one(token), reference.decode_one(token)
        assert (hidden - expected).norm() < 1e-3 * expected.norm()
    assert fast.kind == "chatapp decoder (TorchScript), int4 kernel"
    # the keys and values it wrote are the ones the reference wrote
    used = len(ids)
    assert torch.allclose(fast.cache[..., :used, :], reference.cache[..., :used, :], atol=1e-3)


@pytest.fixture
def float_prefill():
    """A prefill's products as float32 products (not on AMX tiles: tests/test_prefill_tiles.py)."""
    int4_kernel.prefill_tiles(False)
    yield
    int4_kernel.prefill_tiles(int4_kernel.prefill_tiles_wanted())


@needs_kernel
@pytest.mark.parametrize("first, second", [(1, 40), (37, 5), (130, 200)])
def test_a_prefill_on_the_kernel_is_float_arithmetic_on_the_4_bit_weights(first, second, float_prefill):
    model, twin = _int4_model_and_float_twin(hidden_size=256)  # head_dim 64: the vector attention
    fast, reference = LlamaDecoder(model), LlamaDecoder(twin, kernel=False)
    ids = torch.randint(0, 1000, (first + second,), generator=torch.Generator().manual_seed(3)).tolist()
    # a fresh prefill, then one that attends to the cache as well as to itself (a later turn)
    for part in (ids[:first], ids[first:]):
        hidden, expected = fast.prefill(part), reference.prefill(part)
        assert (hidden - expected).norm() < 1e-3 * expected.norm()
    assert fast.kind == "chatapp decoder (TorchScript), int4 kernel"
    assert torch.allclose(fast.cache[..., : len(ids), :], reference.cache[..., : len(ids), :], atol=1e-3)
    # the kernel's prefill of T tokens is its decode step T times, to rounding
    stepwise = LlamaDecoder(model)
    for token in ids:
        last = stepwise.decode_one(token)
    assert (last - hidden).norm() < 1e-4 * hidden.norm()


@needs_kernel
def test_a_built_kernel_runs_every_decode_step_from_the_first():
    model, _ = _int4_model_and_float_twin()
    decoder = LlamaDecoder(model)  # it loads on a thread of its own: creating the decoder does not wait
    decoder.prefill(list(range(10, 20)))
    decoder.decode_one(7)  # the first decode step waits for it
    assert decoder.kind == "chatapp decoder (TorchScript), int4 kernel"


@needs_kernel
def test_decoding_switches_to_the_kernel_between_steps_once_it_is_ready(monkeypatch):
    model, _ = _int4_model_and_float_twin()
    monkeypatch.setattr(int4_kernel, "built", lambda: False)  # as if it still had to be compiled
    decoder = LlamaDecoder(model)
    assert decoder.kernel_settled.wait(60)
    assert decoder.kind == "chatapp decoder (TorchScript)"  # nothing changes under a running step
    decoder.prefill(list(range(10, 20)))
    decoder.decode_one(7)
    assert decoder.kind == "chatapp decoder (TorchScript), int4 kernel"


@needs_kernel
def test_a_decoder_says_while_its_kernel_is_being_compiled(monkeypatch):
    model, _ = _int4_model_and_float_twin()
    compiled = threading.Event()
    real_load = int4_kernel.load
    monkeypatch.setattr(int4_kernel, "built", lambda: False)  # as if it still had to be compiled
    monkeypatch.setattr(int4_kernel, "load", lambda: compiled.wait(60) and real_load())
    decoder = LlamaDecoder(model)
    assert decoder.activity == "compiling the int4 kernel: replies speed up when it is ready"
    compiled.set()
    assert decoder.kernel_settled.wait(60)
    assert decoder.activity is None
    monkeypatch.setattr(int4_kernel, "built", lambda: True)
    assert LlamaDecoder(model).activity is None  # built already: nothing to say


def test_models_the_kernel_does_not_suit_keep_the_torchscript_layers():
    bfloat16 = tiny_llama(hidden_size=128).to(torch.bfloat16)
    if int4_supported():
        quantize_int4(bfloat16)
    decoder = LlamaDecoder(bfloat16)
    assert decoder.kernel_settled.is_set()
    decoder.prefill([5, 6, 7])
    decoder.decode_one(8)
    assert decoder.kind == "chatapp decoder (TorchScript)"
    unquantized = LlamaDecoder(tiny_llama(hidden_size=128))
    unquantized.decode_one(3)
    assert unquantized.kind == "chatapp decoder (TorchScript)"


def test_turning_the_kernel_off_or_lacking_a_compiler_is_said_plainly(monkeypatch, tmp_path):
    monkeypatch.setenv("CHATAPP_INT4_KERNEL", "0")
    assert int4_kernel.wanted() == "turned off by CHATAPP_INT4_KERNEL=0"
    assert not int4_kernel.built()
    monkeypatch.setattr(int4_kernel, "_compiler", lambda: None)
    with pytest.raises(RuntimeError, match="no C\\+\\+ compiler found"):
        int4_kernel._build(tmp_path / "kernel.so")
    assert not (tmp_path / "kernel.so").exists()


@needs_kernel
def test_turned_off_the_kernel_is_not_used_even_once_loaded(monkeypatch):
    model, _ = _int4_model_and_float_twin()
    monkeypatch.setenv("CHATAPP_INT4_KERNEL", "0")
    decoder = LlamaDecoder(model)
    decoder.decode_one(3)
    assert decoder.kernel_settled.is_set() and decoder.kind == "chatapp decoder (TorchScript)"


@needs_kernel
@pytest.mark.model
def test_the_default_model_predicts_text_as_well_on_the_kernel(default_model):
    """Teacher-forced over a fixed text, one decode step a token: the kernel's mean negative
    log-likelihood is within a hair of torch's int4 path's, and both near float32's."""
    from chatapp.lm_head import output_logits
    from chatapp.loading.models import load_model

    fast = load_model("default", device="cpu", dtype="float32", quantize="int4")
    text = "The lighthouse keeper climbed the stairs every evening to light the lamp. " * 2 + (
        "Ships passing in the night saw the beam sweep across the water, and the sailors knew the rocks "
        "were near. In winter the storms came from the north, and the keeper wrote in his log each day: "
        "the weather, the ships, the state of the lamp and the oil that was left."
    )
    ids = default_model.tokenizer(text)["input_ids"]

    def mean_nll(loaded, kernel: bool) -> float:
        decoder = LlamaDecoder(loaded.model, kernel=kernel)
        total = 0.0
        with torch.inference_mode():
            for token, following in zip(ids, ids[1:]):
                logits = output_logits(loaded.model, decoder.decode_one(token))
                total -= torch.log_softmax(logits, -1)[following].item()
        assert ("int4 kernel" in decoder.kind) == kernel
        return total / (len(ids) - 1)

    exact, torchs, ours = mean_nll(default_model, False), mean_nll(fast, False), mean_nll(fast, True)
    print(f"\nmean NLL: float32 {exact:.4f}, int4 on torch's kernel {torchs:.4f}, on chatapp's {ours:.4f}")
    assert abs(ours - torchs) < 0.02 and abs(ours - exact) < 0.05, (exact, torchs, ours)


@needs_kernel
def test_a_built_block_kernel_takes_over_the_int4_heads_top_k_with_the_same_numbers():
    """Once the int4 kernel's thread has loaded a block kernel built before, the LM head picks its
    exact rows with the block kernel's top-k and the engine its top-k and kept ids: the same
    logits as with the reference top-k (torch's topk may pick another of two tied 4-bit logits at
    the 256th place), the same reply (its first step too: a prefill takes the int4 kernel's head up)."""
    from chatapp import lm_head
    from chatapp.chat.settings import SamplingSettings
    from chatapp.engine.loader import load_engine
    from chatapp.runtime import block_kernel

    if block_kernel.ops() is None:  # builds it when needed, as a GGUF model's load would
        pytest.skip(f"no block kernel here: {block_kernel.failure(block_kernel.build_for_cpu())}")
    engine = load_engine("default", "cpu")
    head = engine.model.get_output_embeddings()
    assert engine.decoder.kernel_settled.wait(60)
    for _ in range(100):  # the thread loads the block kernel right after it settles
        if head.best_of is not None:
            break
        threading.Event().wait(0.05)
    assert head.best_of is not None
    assert head.exact_of is not None
    hidden = torch.randn(engine.model.config.hidden_size, generator=torch.Generator().manual_seed(3))
    on_kernel = head(hidden)
    (best_of, exact_of), (head.best_of, head.exact_of) = (head.best_of, head.exact_of), (lm_head.top_k_reference, None)
    try:
        in_torch = head(hidden)  # the reference top-k, the exact rows' products by torch.mv
    finally:
        head.best_of, head.exact_of = best_of, exact_of
    exact_top, head.exact_top = head.exact_top, 0
    try:
        rough = head(hidden)  # the 4-bit pass alone
    finally:
        head.exact_top = exact_top
    redone = on_kernel != rough
    assert int(redone.sum()) >= head.exact_top - 2  # (a recomputed logit may equal its 4-bit one)
    torch.testing.assert_close(on_kernel, in_torch, rtol=1e-6, atol=1e-6)  # the products' sums in another order
    assert torch.equal(on_kernel[~redone], in_torch[~redone])
    messages = [{"role": "user", "content": "Name a colour."}]
    settings = SamplingSettings(max_new_tokens=6, seed=5)
    replies = []
    for kernels_on in (True, False):
        engine.reset()
        if not kernels_on:  # torch's top-k and kept ids; the raw numbers as before
            lm_head.use_kernels(raw_summary=lm_head._Kernels.raw_summary)
        replies.append([(step.token_id, step.prob, step.raw_prob, step.entropy) for step in engine.start_turn(messages, settings)])
        if kernels_on:
            assert lm_head._Kernels.top_k is not None
    assert replies[0] == replies[1]


@needs_kernel
def test_weights_laid_out_in_pieces_and_joined_are_their_own_layouts_one_after_another(monkeypatch):
    monkeypatch.setattr(int4_layout, "LAYOUT_ROWS", 64)  # several pieces a weight
    weights = [_four_bit(n, 128, seed) for seed, n in enumerate((192, 64, 320))]  # q, k, v as a model's
    parts = [tensor for weight in weights for tensor in pack_int4(weight)[:2]]
    joined = int4_layout.laid_out(parts)
    alone = [int4_layout.convert(parts[i], parts[i + 1]) for i in range(0, len(parts), 2)]
    for index, tensor in enumerate(joined):
        assert torch.equal(tensor, torch.cat([layout[index] for layout in alone]))
    x = torch.randn(3, 128)
    expected = torch.cat([torch.ops.chatapp.int4_linear(x, *layout) for layout in alone], -1)
    assert torch.equal(torch.ops.chatapp.int4_linear(x, *joined), expected)


def _resident_pages(tensor: torch.Tensor) -> int:
    """How many of the pages `tensor` spans this process has in memory (/proc/self/pagemap)."""
    page = os.sysconf("SC_PAGE_SIZE")
    first = tensor.data_ptr() // page
    count = (tensor.data_ptr() + tensor.numel() * tensor.element_size() - 1) // page - first + 1
    with open("/proc/self/pagemap", "rb") as pagemap:
        pagemap.seek(first * 8)
        entries = struct.unpack(f"<{count}Q", pagemap.read(count * 8))
    return sum(entry >> 63 for entry in entries)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="resident pages are read from /proc/self/pagemap")
def test_released_pages_of_a_file_mapped_weight_leave_memory_and_its_numbers_unchanged(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    from chatapp.support.memory import release_pages

    path = tmp_path / "weights.safetensors"
    save_file({"w": torch.arange(4 << 20, dtype=torch.uint8)}, str(path))  # 4 MiB
    with safe_open(str(path), framework="pt") as handle:
        weight = handle.get_tensor("w")
    total = int(weight.sum())  # every page read, so resident
    before = _resident_pages(weight)
    release_pages(weight)
    assert _resident_pages(weight) < before // 10
    assert int(weight.sum()) == total  # read back from the file
    # the process's own memory is never dropped (the advice would zero it)
    own = torch.arange(1 << 20, dtype=torch.float32)
    resident = _resident_pages(own)
    release_pages(own)
    assert _resident_pages(own) == resident and torch.equal(own, torch.arange(1 << 20, dtype=torch.float32))

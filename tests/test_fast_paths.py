"""Fast paths against the eager float32 path: int4 weights from the GGUF's own 4-bit blocks."""

from __future__ import annotations

import pytest
import torch

from chatapp.chat.settings import SamplingSettings
from chatapp.engine.engine import Engine
from chatapp.loading.models import load_model
from chatapp.runtime import int4_kernel
from chatapp.runtime.quantize import GROUP_SIZE, ZERO_OFFSET, int4_supported, quantize_linear

AGREEMENT_PROMPTS = [
    "What is the capital of France?", "Write a haiku about autumn.", "Explain photosynthesis briefly.",
    "List three uses of copper.", "How do I boil an egg?", "Translate 'good morning' to Spanish.",
    "What is 12 times 7?", "Give me a tip for learning to code.", "Describe a cat in one sentence.",
    "Why is the sky blue?",
]
"""The fixed prompt set for the documented greedy agreement rate (README, Performance)."""
MIN_IDENTICAL_REPLIES = 7
"""Of the 10 greedy 32-token replies, at least this many must equal float32's (measured: 8)."""

BFLOAT16_HALF_STEP = 2.0**-8
"""bfloat16 rounds to 8 significant bits: at most this relative error."""
FLOAT32_DECODER_TOLERANCE = 1e-5
"""Largest difference in any element of a hidden state between our decoder and transformers'
modules on float32 weights: the same arithmetic, summed in another order (measured: 1.4e-6 at
most over 40 random prompts of 20 tokens, hidden states up to 3 in size)."""
INT4_DECODER_TOLERANCE = 5e-3
"""Largest relative difference (in norm) between the hidden states of our decoder and of
transformers' modules on the same int4 weights. Both round activations before each int4 product
(to bfloat16 for torch's kernel, to int16 for chatapp's), and a rounding that falls on the other
side on one path carries through the later layers (measured over 40 random prompts of 20 tokens:
3.1e-3 at most, 2.0e-3 off chatapp's kernel; up to 1.4e-2 in one element)."""

needs_int4 = pytest.mark.skipif(not int4_supported(), reason="this torch build has no CPU int4 kernels")


def _four_bit_linear(n: int = 64, k: int = 128) -> tuple[torch.nn.Linear, torch.Tensor]:
    """A linear whose weight rows are made of Q4_1-style blocks, d * q + m, and its codes q `(N, K)`."""
    gen = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 16, (n, k // GROUP_SIZE, GROUP_SIZE), generator=gen).float()
    codes[..., 0], codes[..., 1] = 0, 15  # every block spans the full code range, as GGUF's do
    d = torch.rand(n, k // GROUP_SIZE, 1, generator=gen) * 0.05 + 0.01
    m = -torch.rand(n, k // GROUP_SIZE, 1, generator=gen) * 0.4
    linear = torch.nn.Linear(k, n, bias=False)
    linear.weight.data = (codes * d + m).reshape(n, k)
    return linear, codes.reshape(n, k)


@needs_int4
def test_four_bit_blocks_are_recognised_and_kept():
    linear, codes = _four_bit_linear()
    packed, exact = quantize_linear(linear)
    assert exact == 1.0
    # The layer holds the blocks' own codes with bfloat16 scales and zeros (torch's dequant:
    # (q - 8) * scale + zero, zero = m + 8d), each off by at most half a bfloat16 step.
    scales, zeros = packed.scales_and_zeros.float().unbind(-1)  # (K / G, N) each
    scales, zeros = (t.T.repeat_interleave(GROUP_SIZE, 1) for t in (scales, zeros))  # (N, K)
    weight = (codes - ZERO_OFFSET) * scales + zeros  # (N, K)
    rounding = BFLOAT16_HALF_STEP * (ZERO_OFFSET * scales.abs() + zeros.abs()) * 1.01
    assert bool(((weight - linear.weight).abs() <= rounding).all())
    # It computes those weights times the bfloat16-rounded input, in float32, rounded to bfloat16
    # at the end: measured bit-equal here; one bfloat16 step allows another CPU's sum order.
    x = torch.randn(3, linear.in_features, generator=torch.Generator().manual_seed(1))
    expected = (x.to(torch.bfloat16).float() @ weight.T).to(torch.bfloat16).float()  # (3, N)
    torch.testing.assert_close(packed(x), expected, rtol=2 * BFLOAT16_HALF_STEP, atol=1e-6)


@needs_int4
def test_arbitrary_weights_are_reported_lossy():
    linear = torch.nn.Linear(128, 64, bias=False)
    _, exact = quantize_linear(linear)
    assert exact < 0.5


@needs_int4
@pytest.mark.model
def test_default_model_gets_int4_from_its_gguf_blocks_exactly(default_model):
    loaded = load_model("default", device="cpu", quantize="int4")
    assert any("GGUF 4-bit codes kept exactly" in note for note in loaded.info.notes), loaded.info.notes
    head, embedding = loaded.model.get_output_embeddings(), loaded.model.get_input_embeddings()
    # The tied embedding and the head's exact rows: the file's own Q8_0 blocks, shared, giving
    # transformers' float32 numbers (the float32 model's embedding) row for row.
    assert head.exact_blocks is embedding.weights and embedding.weights.bits == 8
    vocab, width = head.exact_blocks.shape
    ids = torch.tensor([0, 1, 2, 100, 4_321, vocab - 1])
    expected = default_model.model.get_input_embeddings().weight[ids]
    assert torch.equal(head.exact_rows(ids), expected) and torch.equal(embedding(ids), expected)
    assert embedding.weights.nbytes < expected.element_size() * vocab * width / 3
    assert head.weight.numel() * head.weight.element_size() == vocab * width // 2  # 4 bits a weight


@needs_int4
@pytest.mark.model
def test_int4_greedy_agreement_with_float32(default_model, capsys):
    fast = Engine(load_model("default", device="cpu", dtype="float32", quantize="int4"))
    exact = Engine(default_model)
    settings = SamplingSettings(temperature=0, max_new_tokens=32)
    identical = 0
    for prompt in AGREEMENT_PROMPTS:
        messages = [{"role": "user", "content": prompt}]
        a = [s.token_id for s in exact.start_turn(messages, settings)]
        b = [s.token_id for s in fast.start_turn(messages, settings)]
        identical += a == b
    with capsys.disabled():
        print(f"\nint4 vs float32 greedy: {identical}/{len(AGREEMENT_PROMPTS)} replies identical")
    assert identical >= MIN_IDENTICAL_REPLIES


@needs_int4
def test_output_head_gives_its_best_logits_in_float32():
    from chatapp.runtime.quantize import OutputHead

    gen = torch.Generator().manual_seed(5)
    weight = torch.randn(1000, 64, generator=gen)
    hidden = torch.randn(3, 64, generator=gen)
    head = OutputHead.from_float32(weight, exact_top=64)  # the true best 16 among its 4-bit best 64
    exact = hidden @ weight.T  # (3, V)
    # The tail comes from the 4-bit pass: each weight off by at most half a block's step (plus
    # bfloat16 rounding of the scales and of the hidden vector).
    blocks = weight.reshape(1000, 2, 32)
    step = (blocks.amax(-1, keepdim=True) - blocks.amin(-1, keepdim=True)) / 15
    weight_error = (step / 2 + 0.01 * blocks.abs()).reshape(1000, 64)
    for row, logits in zip(range(3), [head(hidden[0]), head(hidden[1]), head(hidden[2])]):
        best = torch.topk(exact[row], 16).indices
        torch.testing.assert_close(logits[best], exact[row][best], rtol=1e-5, atol=1e-5)
        bound = weight_error @ hidden[row].abs() + 0.01 * exact[row].abs()
        assert bool(((logits - exact[row]).abs() <= bound).all()), "the tail must be the 4-bit pass's"
        assert not torch.equal(logits, exact[row]), "the tail must come from the 4-bit pass"
    batched = head(hidden)
    for row in range(3):
        best = torch.topk(exact[row], 16).indices
        torch.testing.assert_close(batched[row][best], exact[row][best], rtol=1e-5, atol=1e-5)


def _hidden_state_pairs(model) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Our decoder's hidden states and transformers' modules' for a 12-token prefill and 8
    decode steps after it, in pairs."""
    from chatapp.runtime.llama_decoder import LlamaDecoder
    from chatapp.runtime.transformers_decoder import TransformersDecoder

    ids = torch.randint(0, 1000, (20,), generator=torch.Generator().manual_seed(6)).tolist()
    ours, theirs = LlamaDecoder(model), TransformersDecoder(model)
    pairs = [(ours.prefill(ids[:12]), theirs.prefill(ids[:12]))]
    return pairs + [(ours.decode_one(token), theirs.decode_one(token)) for token in ids[12:]]


@pytest.mark.parametrize("kv_heads", [2, 1])
def test_our_decoder_matches_transformers_modules_in_float32(kv_heads):
    from tests.conftest import tiny_llama

    for ours, theirs in _hidden_state_pairs(tiny_llama(hidden_size=128, num_key_value_heads=kv_heads)):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=FLOAT32_DECODER_TOLERANCE)


@needs_int4
@pytest.mark.parametrize("kv_heads, fused", [(2, True), (1, False)])
def test_our_decoder_on_int4_weights_matches_transformers_modules(kv_heads, fused):
    from chatapp.runtime.llama_decoder import LlamaDecoder
    from chatapp.runtime.quantize import quantize_int4
    from tests.conftest import tiny_llama

    # k and v are 64 rows wide with 2 key/value heads (fused into one int4 product with q),
    # 32 with 1 (which torch's 64-row int4 packing cannot join: three products instead).
    model = tiny_llama(hidden_size=128, num_key_value_heads=kv_heads)
    assert quantize_int4(model).layers == 14
    # one (weight, scales) pair when fused for the TorchScript layers (a built int4 kernel lays
    # them out joined itself, so a decoder that will run on it leaves them apart)
    assert (len(LlamaDecoder(model, kernel=False).qkv_parts[0]) == 2) == fused
    for ours, theirs in _hidden_state_pairs(model):
        difference = float((ours - theirs).norm() / theirs.norm())
        assert difference <= INT4_DECODER_TOLERANCE, f"hidden states differ by {difference:.2e} of their norm"


@needs_int4
@pytest.mark.model
def test_int4_cache_gives_back_the_packed_model_exactly(tmp_path):
    from chatapp.loading.gguf_files import converted_dir, default_gguf_path
    from chatapp.loading.int4_file_cache import load_int4, save_int4
    from chatapp.loading.models import _pack_int4
    from chatapp.loading.plain_llama import PlainLlama
    from chatapp.runtime.llama_decoder import LlamaDecoder
    from chatapp.runtime.transformers_decoder import TransformersDecoder

    fresh = load_model("default", device="cpu", dtype="float32", quantize="none").model
    exact_blocks = _pack_int4(fresh, torch.float32)
    path = tmp_path / "int4.safetensors"
    save_int4(fresh, path, exact_blocks)
    loaded, loaded_blocks = load_int4(path, converted_dir(default_gguf_path()), torch.float32)
    assert loaded_blocks == exact_blocks > 0.99
    assert isinstance(loaded, PlainLlama)  # built without transformers' model code
    ids = list(range(300, 340))
    with torch.no_grad():
        reference = fresh.get_output_embeddings()(TransformersDecoder(fresh).prefill(ids))  # transformers' modules
        a = fresh.get_output_embeddings()(LlamaDecoder(fresh).prefill(ids))
        b = loaded.get_output_embeddings()(LlamaDecoder(loaded).prefill(ids))
    assert torch.equal(a, b)
    # Against transformers' own modules on the same int4 weights: their bfloat16 activations round
    # differently from the kernel's float32 prefill (two near-ties may swap), but the best
    # candidate and the best ten are the same.
    assert b.argmax() == reference.argmax()
    assert set(torch.topk(b, 10).indices.tolist()) == set(torch.topk(reference, 10).indices.tolist())


@needs_int4
def test_a_damaged_or_foreign_int4_cache_is_ignored(tmp_path):
    from safetensors.torch import save_file

    from chatapp.loading.int4_file_cache import load_int4

    damaged = tmp_path / "damaged.safetensors"
    damaged.write_bytes(b"\x00" * 100)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"x": torch.zeros(2)}, str(foreign), metadata={"format": "1", "torch": "0.0"})
    for path in (damaged, foreign, tmp_path / "missing.safetensors"):
        assert load_int4(path, tmp_path, torch.float32) is None


@needs_int4
@pytest.mark.model
def test_the_second_int4_load_reads_the_packed_copy():
    load_model("default", device="cpu", quantize="int4")  # packs and saves, unless an earlier run did
    steps: list[str] = []
    loaded = load_model("default", device="cpu", quantize="int4", progress=steps.append)
    assert not any("packing" in step for step in steps), steps
    assert loaded.info.quantization == "int4"
    assert type(loaded.model.get_output_embeddings()).__name__ == "OutputHead"


@pytest.mark.parametrize("int4, dtype", [(False, torch.float32), (True, torch.float32), (False, torch.bfloat16),
                                         (True, torch.bfloat16)])
def test_torchscript_layers_give_exactly_the_python_numbers(int4, dtype):
    from chatapp.runtime.llama_decoder import LlamaDecoder
    from chatapp.runtime.quantize import int4_supported, quantize_int4
    from tests.conftest import tiny_llama

    if int4 and not int4_supported():
        pytest.skip("this torch build has no CPU int4 kernels")
    model = tiny_llama(hidden_size=128, num_key_value_heads=2).to(dtype)
    if int4:
        quantize_int4(model)
    compiled, plain = LlamaDecoder(model, kernel=False), LlamaDecoder(model, compiled=False, kernel=False)
    assert compiled.kind == "chatapp decoder (TorchScript)" and plain.kind == "chatapp decoder"
    ids = torch.randint(0, 1000, (24,), generator=torch.Generator().manual_seed(8)).tolist()
    # The causal prefill, a prefill after a cached prefix (masked), then single steps.
    steps = [ids[:10], ids[10:16]] + [[token] for token in ids[16:]]
    for chunk in steps:
        hidden = compiled.prefill(chunk) if len(chunk) > 1 else compiled.decode_one(chunk[0])
        expected = plain.prefill(chunk) if len(chunk) > 1 else plain.decode_one(chunk[0])
        assert torch.equal(hidden, expected)


def test_plain_rotary_embedding_computes_what_transformers_computes():
    from chatapp.loading.plain_llama import DefaultRotaryEmbedding
    from tests.conftest import tiny_llama

    model = tiny_llama(rope_parameters={"rope_type": "default", "rope_theta": 100000.0})
    theirs = model.model.rotary_emb
    ours = DefaultRotaryEmbedding(100000.0, model.config.head_dim)
    positions = torch.arange(0, 3000).unsqueeze(0)
    for dtype in (torch.float32, torch.bfloat16):
        probe = torch.empty(0, dtype=dtype)
        for a, b in zip(ours(probe, positions), theirs(probe, positions)):
            assert torch.equal(a, b)


def test_plain_llama_leaves_configs_it_does_not_reproduce_to_transformers(tmp_path):
    from chatapp.loading.plain_llama import read_config
    from tests.conftest import tiny_llama

    tiny_llama().config.save_pretrained(tmp_path)
    assert read_config(tmp_path) is not None
    for overrides in ({"attention_bias": True}, {"rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0,
                      "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}}):
        tiny_llama(**overrides).config.save_pretrained(tmp_path)
        assert read_config(tmp_path) is None, overrides


@needs_int4
@pytest.mark.model
def test_a_warm_start_imports_no_transformers_and_still_answers():
    import subprocess
    import sys

    load_model("default", device="cpu", quantize="int4")  # makes sure the packed copy exists
    code = (
        "import sys\n"
        "from chatapp.engine.engine import Engine\n"
        "from chatapp.loading.models import load_model\n"
        "from chatapp.chat.settings import SamplingSettings\n"
        "engine = Engine(load_model('default', device='cpu', quantize='int4'))\n"
        "turn = engine.start_turn([{'role': 'user', 'content': 'Say hello.'}], SamplingSettings(temperature=0, max_new_tokens=8))\n"
        "print(len(list(turn)), engine.decoder.kind, type(engine.model).__name__, type(engine.tokenizer).__name__)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'transformers'))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    steps, imported = result.stdout.strip().splitlines()
    kernel = ", int4 kernel" if int4_kernel.built() else ""  # built by the session's fixture where it can be
    assert steps == f"8 chatapp decoder (TorchScript){kernel} PlainLlama ChatTokenizer"
    assert imported == "[]"


@needs_int4
@pytest.mark.parametrize("hidden_size, vocab_size", [(64, 1000), (48, 1008)])
def test_packing_a_model_of_any_shape_keeps_its_best_logits_exact(hidden_size, vocab_size):
    from chatapp.loading.models import _pack_int4
    from chatapp.runtime.llama_decoder import LlamaDecoder
    from chatapp.runtime.quantize import OutputHead
    from tests.conftest import tiny_llama

    # 1000 rows is no multiple of 16 (torch packs int4 rows in such blocks): the head pads them.
    # A width of 48 is no multiple of 32 (an int4 block): the head stays as it is.
    model = tiny_llama(hidden_size=hidden_size, vocab_size=vocab_size, head_dim=16)
    float_weight = model.get_output_embeddings().weight.detach().clone()
    _pack_int4(model, torch.float32)
    head = model.get_output_embeddings()
    assert isinstance(head, OutputHead) == (hidden_size % GROUP_SIZE == 0)
    with torch.no_grad():
        hidden = LlamaDecoder(model).prefill(list(range(5, 25)))  # (d_model,)
        logits = head(hidden)
    exact = float_weight @ hidden
    assert logits.shape == (vocab_size,)
    best = torch.topk(exact, 16).indices
    assert torch.equal(torch.topk(logits, 16).indices, best)
    torch.testing.assert_close(logits[best], exact[best], rtol=1e-5, atol=1e-5)

"""GGUF files read natively (`chatapp.loading.gguf_native`): for every supported architecture, a
tiny model in mixed block types gives the same greedy tokens and logits as transformers' own
GGUF loading of the same file (float32), over two turns with the cache reused."""

from __future__ import annotations

import pytest
import torch

from chatapp.lm_head import lm_head
from chatapp.loading.gguf_native import load_native
from chatapp.loading.plain_model import PlainCausalLM, build_plain_model, plain_model_reason
from chatapp.runtime.block_linear import BlockEmbedding, BlockLinear
from chatapp.runtime.decoder_choice import open_decoder
from chatapp.runtime.layered_decoder import LayeredDecoder
from tests.tiny_gguf import ARCHITECTURES, UNTIED, write_tiny_gguf

STEPS = 6
LOGIT_TOLERANCE = 1e-4
"""Largest difference of a logit from transformers' (float32 sums in another order), or
`RELATIVE_TOLERANCE` of the largest logit where that is more (logits near 30 carry ulps of 2e-6
through every layer)."""
RELATIVE_TOLERANCE = 1e-5


def _logits_close(mine: torch.Tensor, expected: torch.Tensor) -> bool:
    tolerance = max(LOGIT_TOLERANCE, RELATIVE_TOLERANCE * float(expected.abs().max()))
    return bool((mine - expected).abs().max() <= tolerance)


def _reference(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()


@torch.inference_mode()
def _reference_greedy(model, ids: list[int]) -> tuple[list[int], list[torch.Tensor]]:
    """Greedy tokens by full recomputation at every step (no cache), and their logits."""
    ids, chosen, logits = list(ids), [], []
    for _ in range(STEPS):
        step = model(torch.tensor([ids])).logits[0, -1].float()
        token = int(step.argmax())
        chosen.append(token)
        logits.append(step)
        ids.append(token)
    return chosen, logits


@torch.inference_mode()
def _native_greedy(model, decoder, ids: list[int]) -> tuple[list[int], list[torch.Tensor]]:
    """Greedy tokens through the decoder's cache (only what it lacks is prefilled) and the seed's
    LM head at temperature 0."""
    held = decoder.common_prefix(ids)
    decoder.keep(min(held, len(ids) - 1))
    hidden = decoder.prefill(ids[len(decoder):])
    chosen, logits = [], []
    for _ in range(STEPS):
        probabilities, step = lm_head(model, hidden, temperature=0, return_logits=True)
        token = int(probabilities.argmax())
        chosen.append(token)
        logits.append(step)
        hidden = decoder.decode_one(token)
    return chosen, logits


@pytest.fixture(scope="module")
def gguf_folder(tmp_path_factory):
    return tmp_path_factory.mktemp("tiny-gguf")


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_native_load_matches_transformers_over_two_turns(arch, gguf_folder, monkeypatch):
    from transformers import AutoConfig, modeling_gguf_pytorch_utils

    path, types = write_tiny_gguf(arch, gguf_folder)
    assert len(set(types.values())) >= 5  # a mix of block types
    # transformers' own GGUF loading misses Mistral (written as `llama`); the same tensors
    # named as Llama are its reference (the same layers without a window: none is crossed here)
    reference = _reference(write_tiny_gguf("llama", gguf_folder)[0] if arch == "mistral" else path)
    config = AutoConfig.from_pretrained(path.parent, gguf_file=path.name)

    def slow_walk(*args, **kwargs):
        raise AssertionError("the file's tensors should be named from one table")

    monkeypatch.setattr(modeling_gguf_pytorch_utils, "get_gguf_hf_weights_map", slow_walk)
    model, done = load_native(path, config)
    assert isinstance(model, PlainCausalLM)  # chatapp's plain modules, not transformers' model code
    assert model.config.model_type == ARCHITECTURES[arch][0]
    assert sum(done["blocks"].values()) == len(types) and not done["dequantized"]  # every weight kept in its blocks
    assert isinstance(model.get_input_embeddings(), BlockEmbedding)
    head = model.get_output_embeddings()
    assert isinstance(head, BlockLinear)
    if arch not in UNTIED:
        assert head.weights is model.get_input_embeddings().weights  # tied: one copy of the blocks
    decoder = open_decoder(model)
    assert isinstance(decoder, LayeredDecoder)  # chatapp's own decoder, from the layer plans
    first = [5, 17, 99, 240, 3, 77, 150, 9]
    ours, our_logits = _native_greedy(model, decoder, first)
    theirs, their_logits = _reference_greedy(reference, first)
    assert ours == theirs
    second = first + ours + [11, 310, 42, 8, 201]  # turn 2: the reply and a new message
    prefilled_from = decoder.common_prefix(second)
    assert prefilled_from >= len(first) + STEPS - 1  # the first turn stays in the cache
    ours2, our_logits2 = _native_greedy(model, decoder, second)
    theirs2, their_logits2 = _reference_greedy(reference, second)
    assert ours2 == theirs2
    for mine, expected in zip(our_logits + our_logits2, their_logits + their_logits2):
        assert _logits_close(mine, expected), (mine - expected).abs().max()


def test_a_wrong_logit_would_be_seen(gguf_folder):
    """The comparison can fail: one block's scale changed moves the logits past the tolerance."""
    from transformers import AutoConfig

    path, _ = write_tiny_gguf("llama", gguf_folder, seed=1)
    model, _ = load_native(path, AutoConfig.from_pretrained(path.parent, gguf_file=path.name))
    reference = _reference(path)
    weights = model.model.layers[1].mlp.down_proj.weights
    _, before = _native_greedy(model, open_decoder(model), [5, 17, 99])
    weights.scale[:, 0] *= 2
    _, after = _native_greedy(model, open_decoder(model), [5, 17, 99])
    _, expected = _reference_greedy(reference, [5, 17, 99])
    assert (before[0] - expected[0]).abs().max() <= LOGIT_TOLERANCE
    assert (after[0] - expected[0]).abs().max() > LOGIT_TOLERANCE


def test_a_type_without_an_exact_layout_is_dequantized_and_said(gguf_folder):
    """Q2_K (no exact layout here) is dequantized to float32 as transformers does, and the load
    says so; the model still gives transformers' tokens."""
    from transformers import AutoConfig

    path, types = write_tiny_gguf("llama", gguf_folder, block_types=["Q4_K", "Q2_K", "Q8_0"])
    model, done = load_native(path, AutoConfig.from_pretrained(path.parent, gguf_file=path.name))
    assert done["dequantized"] == {"Q2_K": sum(1 for name in types.values() if name == "Q2_K")}
    assert set(done["blocks"]) == {"Q4_K", "Q8_0"}
    first = [5, 17, 99, 240, 3]
    ours, _ = _native_greedy(model, open_decoder(model), first)
    assert ours == _reference_greedy(_reference(path), first)[0]


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3"])
def test_fused_products_give_transformers_tokens(arch, gguf_folder):
    """q/k/v and gate/up of one layout (here Q5_1 with its minimums and Q8_0 without, Qwen2's
    biases too) run as one product each; the tokens and logits stay transformers'."""
    from transformers import AutoConfig

    path, _ = write_tiny_gguf(arch, gguf_folder, block_types=["Q5_1", "Q5_1", "Q8_0"])
    model, _ = load_native(path, AutoConfig.from_pretrained(path.parent, gguf_file=path.name))
    decoder = open_decoder(model)
    assert all(fused is not None for fused in decoder.qkv) and all(fused is not None for fused in decoder.gate_up)
    first = [5, 17, 99, 240, 3, 77, 150, 9]
    ours, our_logits = _native_greedy(model, decoder, first)
    theirs, their_logits = _reference_greedy(_reference(path), first)
    assert ours == theirs
    for mine, expected in zip(our_logits, their_logits):
        assert _logits_close(mine, expected), (mine - expected).abs().max()


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_large_tensors_read_in_chunks_give_the_same_blocks(arch, gguf_folder, monkeypatch):
    """A large tensor is read a slice of rows at a time (here every tensor, 100 rows a slice:
    the file's eight block types, with and without minimums): the same blocks as one read."""
    from transformers import AutoConfig

    from chatapp.loading import gguf_native

    path, _ = write_tiny_gguf(arch, gguf_folder)
    config = AutoConfig.from_pretrained(path.parent, gguf_file=path.name)
    whole, _ = load_native(path, config)
    monkeypatch.setattr(gguf_native, "LARGE_TENSOR_BYTES", 0)
    monkeypatch.setattr(gguf_native, "CHUNK_ROWS", 100)
    chunked, _ = load_native(path, config)
    pairs = [(a, b) for a, b in zip(whole.modules(), chunked.modules()) if isinstance(a, (BlockLinear, BlockEmbedding))]
    assert len(pairs) > 10
    for a, b in pairs:
        assert a.weights.shape == b.weights.shape and a.weights.bits == b.weights.bits
        for name in ("codes", "scale", "low"):
            assert torch.equal(getattr(a.weights, name), getattr(b.weights, name)), name


@pytest.mark.parametrize("arch", ["phi3", "gemma3"])
def test_transformers_skeleton_still_loads_what_the_plain_modules_decline(arch, gguf_folder, monkeypatch):
    """A config the plain modules do not reproduce gets transformers' own skeleton, with the same
    blocks and the same tokens."""
    from transformers import AutoConfig

    from chatapp.loading import gguf_native

    path, _ = write_tiny_gguf(arch, gguf_folder)
    config = AutoConfig.from_pretrained(path.parent, gguf_file=path.name)
    plain, _ = load_native(path, config)
    monkeypatch.setattr(gguf_native, "build_plain_model", lambda config: None)
    theirs, _ = load_native(path, config)
    assert isinstance(plain, PlainCausalLM) and not isinstance(theirs, PlainCausalLM)
    assert isinstance(theirs.get_output_embeddings(), BlockLinear)
    first = [5, 17, 99, 240, 3]
    assert _native_greedy(plain, open_decoder(plain), first)[0] == _native_greedy(theirs, open_decoder(theirs), first)[0]


def test_plain_modules_decline_what_they_do_not_reproduce():
    from transformers import AutoConfig

    llama = AutoConfig.for_model("llama", hidden_size=64, num_attention_heads=2, num_hidden_layers=1)
    assert plain_model_reason(llama) is None
    assert build_plain_model(llama) is not None
    llama.hidden_act = "gelu_new"
    assert "activation" in plain_model_reason(llama) and build_plain_model(llama) is None
    assert "architecture" in plain_model_reason(AutoConfig.for_model("olmo2"))
    qwen = AutoConfig.for_model("qwen2", hidden_size=64, num_attention_heads=2, num_hidden_layers=1)
    qwen.rope_parameters = {**qwen.rope_parameters, "partial_rotary_factor": 0.5}
    assert "partial" in plain_model_reason(qwen)


def test_a_native_load_imports_no_transformers_model_code(gguf_folder):
    """Building the skeleton from plain modules keeps transformers' model code, and what it
    brings (torch._dynamo, sympy, scipy: about 130 MiB), out of the process."""
    import subprocess
    import sys

    path, _ = write_tiny_gguf("gemma3", gguf_folder)
    code = (
        "import sys\n"
        "from transformers import AutoConfig\n"
        "from chatapp.loading.gguf_native import load_native\n"
        "from chatapp.runtime.decoder_choice import open_decoder\n"
        f"model, _ = load_native({str(path)!r}, AutoConfig.from_pretrained({str(path.parent)!r}, gguf_file={path.name!r}))\n"
        "open_decoder(model).prefill([5, 17, 99])\n"
        "print(sorted(m for m in ('transformers.modeling_utils', 'torch._dynamo', 'sympy', 'scipy') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split("\n")[-2] == "[]"

"""chatapp's block kernel (`chatapp.runtime.block_kernel`, `chatapp.runtime.block_linear`): every
build this CPU runs (AVX512, AVX2, generic C++) and the plain-torch path compute a float32
product with the exactly dequantized weights, on random blocks of every supported type; a build
is loaded in the background only when it is finished, and a killed build's lock is removed."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType
from gguf.quants import dequantize

from chatapp.lm_head import top_k_reference
from chatapp.loading.gguf_blocks import EXACT_TYPES, block_weights
from chatapp.runtime import block_kernel
from chatapp.runtime.block_linear import MATMUL_FROM, BlockEmbedding, BlockLinear, ScaledBlocks, block_matmul
from tests.conftest import block_kernel_build
from tests.test_gguf_blocks import FLOAT16_FIELDS

ROWS, COLUMNS = 40, 512
RELATIVE_TOLERANCE = 1e-5
"""Largest difference from a float64 product, relative to the largest output: float32 sums."""
BUILDS = block_kernel.runnable_builds()


def random_blocks(name: str, seed: int) -> np.ndarray:
    """Random raw blocks of type `name` with finite float16 fields of moderate size."""
    from gguf.constants import GGML_QUANT_SIZES

    rng = np.random.default_rng(seed)
    block, size = GGML_QUANT_SIZES[GGMLQuantizationType[name]]
    raw = rng.integers(0, 256, (ROWS, COLUMNS // block, size), dtype=np.uint8)
    for at in FLOAT16_FIELDS[name]:
        numbers = rng.uniform(-1, 1, (ROWS, COLUMNS // block)) * 1e-2
        raw[..., at:at + 2] = numbers.astype(np.float16)[..., None].view(np.uint8)
    return raw.reshape(ROWS, -1)


def _case(name: str, seed: int = 0):
    raw = random_blocks(name, seed)
    weights = ScaledBlocks.of(block_weights(raw, name, (ROWS, COLUMNS)))
    exact = torch.from_numpy(dequantize(raw, GGMLQuantizationType[name])).double()
    return weights, exact


def _close(out: torch.Tensor, expected: torch.Tensor) -> bool:
    return bool((out.double() - expected).abs().max() <= RELATIVE_TOLERANCE * expected.abs().max())


@pytest.fixture(scope="module", params=BUILDS)
def kernel(request):
    """A build of the kernel (`block_kernel_build`: a failed build fails where there is a compiler)."""
    return block_kernel_build(request.param)


def test_this_cpu_runs_the_generic_build_and_picks_the_widest():
    assert BUILDS[-1] == "generic"
    assert block_kernel.build_for_cpu() == BUILDS[0]
    flags = block_kernel.cpu_flags()
    assert ("avx2" in BUILDS) == all(flag in flags for flag in ("avx2", "fma", "f16c"))


@pytest.mark.parametrize("name", sorted(EXACT_TYPES))
@pytest.mark.parametrize("inputs", [1, 3, 20, MATMUL_FROM + 4])
def test_kernel_matches_the_float_product(kernel, name, inputs):
    """One row of x; several (tiles of six, and what is left); a prefill long enough for torch's
    matrix product. 38 weight rows: the kernel decodes them four at a time, two are left."""
    weights, exact = _case(name)
    x = torch.randn(inputs, COLUMNS, generator=torch.Generator().manual_seed(inputs))
    assert _close(block_matmul(x, weights, kernel), x.double() @ exact.T)
    assert _close(block_matmul(x, weights.rows(0, 38), kernel), x.double() @ exact[:38].T)


@pytest.mark.parametrize("name", sorted(EXACT_TYPES))
def test_kernel_dequantizes_and_looks_up_rows_exactly(kernel, name):
    weights, exact = _case(name, seed=1)
    args = weights.kernel_args()
    assert torch.equal(kernel.block_dequantize(*args).double(), exact)
    ids = torch.tensor([[3, 0], [39, 3]])
    assert torch.equal(kernel.block_rows(ids, *args).double(), exact[ids.reshape(-1)])
    with pytest.raises(RuntimeError, match="out of range"):
        kernel.block_rows(torch.tensor([ROWS]), *args)


@pytest.mark.parametrize("name", sorted(EXACT_TYPES))
def test_exact_logits_recompute_the_best_rows_and_the_asked_ones_in_place(kernel, name):
    """An LM head's exact rows: the `top` highest logits (ties to the lower id) and the rows
    `always` become the exactly dequantized rows' products with hidden; the others stay."""
    weights, exact = _case(name, seed=3)
    generator = torch.Generator().manual_seed(4)
    hidden = torch.randn(COLUMNS, generator=generator)
    rough = (torch.randn(ROWS, generator=generator) * 2).round()  # ties at the cut
    logits = rough.clone()
    kernel.exact_logits(logits, hidden, 5, torch.tensor([ROWS - 1, 2]), *weights.kernel_args())
    redone = sorted({*top_k_reference(rough, 5)[1].tolist(), ROWS - 1, 2})
    kept = [i for i in range(ROWS) if i not in redone]
    assert torch.equal(logits[kept], rough[kept])
    assert _close(logits[redone], exact[redone] @ hidden.double())
    none = logits.clone()
    kernel.exact_logits(none, hidden, 0, torch.tensor([], dtype=torch.long), *weights.kernel_args())
    assert torch.equal(none, logits)
    with pytest.raises(RuntimeError, match="out of range"):
        kernel.exact_logits(logits, hidden, 5, torch.tensor([ROWS]), *weights.kernel_args())


@pytest.mark.parametrize("name", sorted(EXACT_TYPES))
def test_plain_torch_path_matches_the_float_product(name):
    weights, exact = _case(name, seed=2)
    x = torch.randn(2, COLUMNS, generator=torch.Generator().manual_seed(5))
    assert _close(block_matmul(x, weights, None), x.double() @ exact.T)


@pytest.mark.skipif(len(BUILDS) < 3, reason="needs two vector builds")
def test_avx2_and_avx512_builds_agree():
    wide, narrow = block_kernel.load(BUILDS[0]), block_kernel.load("avx2")
    weights, _ = _case("Q4_K", seed=3)
    x = torch.randn(1, COLUMNS)
    assert _close(block_matmul(x, weights, wide), block_matmul(x, weights, narrow).double())


def test_scaled_blocks_dequantize_exactly_and_drop_zero_minimums():
    for name in sorted(EXACT_TYPES):
        weights, exact = _case(name, seed=8)
        assert torch.equal(weights.dequantize().double(), exact)
        assert (weights.block_scales()[1] is None) == (name in ("Q8_0", "Q6_K", "Q5_0"))


def test_scales_are_held_as_the_file_holds_them():
    """The file's size in memory: Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0 hold each block's scale (and
    minimum) as the file's float16 number; the K-quants their super-blocks' float16 d (and dmin)
    and their blocks' small integers, packed (a byte each where the file packs 6 bits)."""
    for name in sorted(EXACT_TYPES):
        weights, exact = _case(name, seed=9)
        raw = random_blocks(name, 9)
        if not name.endswith("_K"):
            assert weights.scale.dtype == torch.float16, name
            assert weights.low.numel() == 0 or weights.low.dtype == torch.float16
            file_scales = np.ascontiguousarray(raw.reshape(ROWS, COLUMNS // 32, -1)[..., 0:2])  # each block's first two bytes
            assert torch.equal(weights.scale.view(torch.int16), torch.from_numpy(file_scales.view(np.int16)[..., 0]))
        else:
            assert weights.scale.dtype == torch.uint8 and weights.low.numel() == 0, name
            supers = raw.reshape(ROWS, COLUMNS // 256, -1)
            d_at = {"Q4_K": 0, "Q5_K": 0, "Q6_K": supers.shape[-1] - 2}[name]
            file_d = np.ascontiguousarray(supers[..., d_at:d_at + 2]).view(np.float16)[..., 0]
            assert torch.equal(weights.scale[:, : 2 * (COLUMNS // 256)].contiguous().view(torch.float16),
                               torch.from_numpy(file_d))
            # a super-block's 20 bytes at most (the file's 16 for Q4_K and Q5_K: 6-bit sc and m as bytes)
            assert weights.scale.numel() <= ROWS * (COLUMNS // 256) * 20
        assert torch.equal(weights.dequantize().double(), exact)


def test_a_minimum_beyond_float16_keeps_float32_scales():
    """Q4_0's minimum is -8 d: for d above 8191 that is no float16 number, and the weight keeps
    float32 scales, still exact."""
    raw = random_blocks("Q4_0", 10).reshape(ROWS, COLUMNS // 32, -1)
    raw[0, 0, 0:2] = np.array([10000.0], dtype=np.float16).view(np.uint8)
    raw = raw.reshape(ROWS, -1)
    weights = ScaledBlocks.of(block_weights(raw, "Q4_0", (ROWS, COLUMNS)))
    assert weights.scale.dtype == torch.float32
    exact = torch.from_numpy(dequantize(raw, GGMLQuantizationType.Q4_0)).double()
    assert torch.equal(weights.dequantize().double(), exact)


@pytest.mark.parametrize("name", ["Q8_0", "Q4_1", "Q4_K"])
def test_many_rows_cross_the_kernel_s_chunks_of_converted_scales(kernel, name):
    """Rows enough that each thread converts its scales in several chunks (256 scales each: 16
    rows of 16 blocks), a row count that ends mid-chunk, and for the plain types 17 blocks a row
    (the conversions' vector tails)."""
    rows = 333
    columns = 512 if name.endswith("_K") else 544
    rng = np.random.default_rng(11)
    from gguf.constants import GGML_QUANT_SIZES

    block, size = GGML_QUANT_SIZES[GGMLQuantizationType[name]]
    raw = rng.integers(0, 256, (rows, columns // block, size), dtype=np.uint8)
    for at in FLOAT16_FIELDS[name]:
        raw[..., at:at + 2] = (rng.uniform(-1, 1, (rows, columns // block)) * 1e-2).astype(np.float16)[..., None].view(np.uint8)
    raw = raw.reshape(rows, -1)
    weights = ScaledBlocks.of(block_weights(raw, name, (rows, columns)))
    exact = torch.from_numpy(dequantize(raw, GGMLQuantizationType[name])).double()
    for inputs in (1, 7):
        x = torch.randn(inputs, columns, generator=torch.Generator().manual_seed(inputs))
        assert _close(block_matmul(x, weights, kernel), x.double() @ exact.T)
    assert torch.equal(kernel.block_dequantize(*weights.kernel_args()).double(), exact)


@pytest.mark.parametrize("name", ["Q6_K", "Q4_K", "Q8_0"])
def test_an_embedding_s_blocks_come_back_from_the_int4_cache_as_they_were(name):
    """The int4 cache keeps a tied embedding's blocks (`embedding_block_state`): packed K-quant
    scales are bytes, not one a block, and the weight's width is read from its codes."""
    from chatapp.loading.int4_file_cache import embedding_block_state, embedding_blocks_of

    weights, exact = _case(name, seed=12)
    back = embedding_blocks_of(embedding_block_state(weights))
    assert back.shape == weights.shape
    assert torch.equal(back.dequantize(torch.tensor([0, 7, 39])).double(), exact[[0, 7, 39]])


def test_modules_without_the_kernel_give_the_kernel_s_numbers(monkeypatch):
    weights, exact = _case("Q6_K", seed=4)
    fast_linear, fast_embedding = BlockLinear(weights), BlockEmbedding(weights, scale=2.0)
    monkeypatch.setenv("CHATAPP_BLOCK_KERNEL", "0")
    slow_linear, slow_embedding = BlockLinear(weights), BlockEmbedding(weights, scale=2.0)
    assert slow_linear.kernel is None
    x = torch.randn(3, COLUMNS)
    assert _close(fast_linear(x), slow_linear(x).double())
    ids = torch.tensor([0, 7, 39])
    assert torch.equal(fast_embedding(ids), slow_embedding(ids))
    assert torch.equal(slow_embedding(ids).double(), exact[ids] * 2)
    with pytest.raises(IndexError):
        slow_embedding(torch.tensor([ROWS]))


def test_a_wrong_scale_is_seen(kernel):
    weights, exact = _case("Q8_0", seed=6)
    weights.scale[5, 2] = weights.scale[5, 2] * 2 + 1e-3
    x = torch.randn(1, COLUMNS)
    assert not _close(block_matmul(x, weights, kernel), x.double() @ exact.T)


def test_an_empty_weight_is_refused_not_a_crash(kernel):
    """A weight without rows or columns (a damaged file's) raises: the kernel divided by its row
    count and crashed the process."""
    x = torch.randn(1, 32)
    empty = torch.empty(0, dtype=torch.float32)
    for codes, scale in ((torch.empty(0, 16, dtype=torch.uint8), torch.empty(0, 1)),
                         (torch.empty(4, 0, dtype=torch.uint8), torch.empty(4, 0)),
                         (torch.empty(4, 0, dtype=torch.uint8), torch.empty(4, 0, dtype=torch.uint8))):
        with pytest.raises(RuntimeError, match="rows and columns"):
            kernel.block_linear(x, codes, scale, empty, 4, 32)
        with pytest.raises(RuntimeError, match="rows and columns"):
            kernel.block_rows(torch.tensor([0]), codes, scale, empty, 4, 32)


def test_built_ops_never_compiles_and_loads_only_a_build_of_these_sources(monkeypatch, tmp_path):
    """The int4 kernel's thread asks for the block kernel with `built_ops`: without a finished
    build of these very sources it gets None, and nothing is compiled (a background build cut
    off at exit would leave a lock that stalls every later build)."""
    monkeypatch.setattr(block_kernel, "_build_folder", lambda build: tmp_path)
    monkeypatch.setattr(block_kernel, "_compile", lambda *a: pytest.fail("built_ops compiled"))
    assert block_kernel.built_ops() is None  # no build at all
    (tmp_path / block_kernel.BUILD_STAMP).write_text("another version's key", encoding="ascii")
    assert block_kernel.built_ops() is None  # a build of other sources
    (tmp_path / block_kernel.BUILD_STAMP).write_text(block_kernel._build_key(block_kernel.build_for_cpu()), encoding="ascii")
    monkeypatch.setattr(block_kernel, "ops", lambda: "the operators")
    assert block_kernel.built_ops() == "the operators"


def test_other_sources_are_built_in_a_folder_of_their_own(monkeypatch):
    """Two checkouts of different sources never share a build folder: one rebuilding its library
    in place would be read half-written by the other's lock-free stamp shortcut."""
    build = block_kernel.build_for_cpu()
    ours = block_kernel._build_folder(build)
    assert ours == block_kernel._build_folder(build)  # the same sources: the same folder
    monkeypatch.setattr(block_kernel, "_build_key", lambda build: "0123456789abcdef" * 4)
    assert block_kernel._build_folder(build) != ours


def test_a_killed_build_s_lock_is_removed_a_running_one_s_kept(tmp_path):
    lock = tmp_path / "lock"
    lock.touch()
    block_kernel._remove_stale_lock(tmp_path)
    assert lock.exists()  # a build may be running
    old = time.time() - block_kernel.STALE_LOCK_SECONDS - 5
    os.utime(lock, (old, old))
    block_kernel._remove_stale_lock(tmp_path)
    assert not lock.exists()

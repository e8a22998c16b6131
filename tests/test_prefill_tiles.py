"""A prefill's int4 products on AMX-INT8 tiles (`kernels/amx_int4.h`): the arithmetic its comment
states (activations rounded to 11 bits per block of 32, the products summed exactly), within a
thousandth of float32 products, and on the real default model within a hundredth (the first
token's best candidates within a percentage point); turned off, exactly the float32 products."""

from __future__ import annotations

import pytest
import torch

from chatapp.engine.loader import load_engine
from chatapp.runtime import int4_kernel

HI_LEVELS, LO_RATIO = 127.0, 16.0
"""`kHiLevels`, `kLoRatio`: x ~ s (16 hi + lo), s = max |x| / 2032 per block of 32."""

tiles_here = pytest.mark.skipif(
    not (int4_kernel.cpu_supported() and int4_kernel.load() and int4_kernel.prefill_tiles(True)),
    reason="no AMX-INT8 tiles here (or no int4 kernel)",
)


@pytest.fixture
def on_tiles():
    """Prefill products on the tiles, whatever a test before left; then as the environment says."""
    int4_kernel.prefill_tiles(True)
    yield
    int4_kernel.prefill_tiles(int4_kernel.prefill_tiles_wanted())


def _weight(n: int, k: int, seed: int):
    """A random weight in the int4 kernel's layout: codes `(N, K/2)` uint8 (byte j of a block: code j
    low, code 16 + j high), bfloat16 scales and zeros `(N, K/32)`; and its codes `(N, K)`."""
    generator = torch.Generator().manual_seed(seed)
    packed = torch.randint(0, 256, (n, k // 2), dtype=torch.uint8, generator=generator)
    scales = (torch.rand(n, k // 32, generator=generator) * 0.02 + 0.001).bfloat16()
    zeros = (torch.randn(n, k // 32, generator=generator) * 0.01).bfloat16()
    blocks = packed.view(n, k // 32, 16)
    codes = torch.cat([blocks & 15, blocks >> 4], dim=-1).reshape(n, k)
    return (packed, scales, zeros), codes


def _dequantized(codes, scales, zeros) -> torch.Tensor:
    n, k = codes.shape
    q = codes.double().view(n, k // 32, 32)
    return ((q - 8) * scales.double().unsqueeze(-1) + zeros.double().unsqueeze(-1)).view(n, k)


def _tile_reference(x: torch.Tensor, codes, scales, zeros) -> torch.Tensor:
    """What the tiles compute, in float64 after the same float32 rounding of x: per block of 32,
    x ~ s (16 hi + lo), the codes' sums exact, s * scale * sum + (zero - 8 scale) * exact x sum."""
    m, k = x.shape
    blocks = x.view(m, k // 32, 32)
    amax = blocks.abs().amax(-1, keepdim=True)
    s = amax / (HI_LEVELS * LO_RATIO)
    levels = blocks * torch.where(amax > 0, 1.0 / s, torch.zeros_like(s))  # float32, as the kernel
    hi = torch.round(levels * (1.0 / LO_RATIO))
    lo = torch.round(levels - LO_RATIO * hi)
    a = (LO_RATIO * hi + lo).double()  # (M, K/32, 32)
    q = codes.double().view(-1, k // 32, 32)  # (N, K/32, 32)
    dots = torch.einsum("mbk,nbk->mnb", a, q)  # exact integers
    offsets = zeros.double() - 8 * scales.double()  # (N, K/32)
    return (dots * s.double().squeeze(-1).unsqueeze(1) * scales.double().unsqueeze(0)).sum(-1) + \
        blocks.double().sum(-1) @ offsets.T


@tiles_here
@pytest.mark.parametrize("m, n, k", [(8, 960, 576), (13, 192, 576), (33, 48, 64), (100, 576, 1536), (517, 64, 128)])
def test_the_tiles_compute_the_arithmetic_they_state(m, n, k, on_tiles):
    weight, codes = _weight(n, k, seed=m + n)
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(k)) * 3
    x[0, :32] = 0.0  # a block of zeros
    out = torch.ops.chatapp.int4_prefill_linear(x, *weight)
    reference = _tile_reference(x, codes, weight[1], weight[2])
    assert (out.double() - reference).abs().max() < 1e-5 * reference.abs().max()
    # and within a thousandth of the float product of the same 4-bit weights
    exact = x.double() @ _dequantized(codes, weight[1], weight[2]).T
    assert (out.double() - exact).norm() < 1e-3 * exact.norm()


@tiles_here
@pytest.mark.parametrize("n", [960, 20])  # 20 rows: not whole tiles, so float32 products
def test_turned_off_or_where_rows_do_not_fill_tiles_the_products_are_float32(n, on_tiles):
    weight, codes = _weight(n, 576, seed=n)
    x = torch.randn(40, 576, generator=torch.Generator().manual_seed(1))
    exact = x.double() @ _dequantized(codes, weight[1], weight[2]).T
    assert not int4_kernel.prefill_tiles(False)
    float_products = torch.ops.chatapp.int4_prefill_linear(x, *weight)
    assert (float_products.double() - exact).abs().max() < 1e-5 * exact.abs().max()
    assert int4_kernel.prefill_tiles(True)
    tiled = torch.ops.chatapp.int4_prefill_linear(x, *weight)
    assert torch.equal(tiled, float_products) == (n % 16 != 0)


@tiles_here
@pytest.mark.model
def test_a_default_model_prefill_on_tiles_is_within_a_hundredth_of_float32(on_tiles):
    """The bundled model on the int4 kernel: a 300-token prefill after a 130-token one (its
    products accumulate into the residual stream) on tiles and as float32 products; the last
    context vectors within 1%, the next token's ten best candidates within a percentage point."""
    engine = load_engine("default", "cpu")
    assert engine.decoder.kernel_settled.wait(120)
    ids = engine.tokenizer("The tiles of a matrix engine. " * 80)["input_ids"][:430]
    head = engine.model.get_output_embeddings()
    answers = {}
    for tiles in (False, True):
        int4_kernel.prefill_tiles(tiles)
        engine.decoder.reset()
        engine.decoder.prefill(ids[:130])
        hidden = engine.decoder.prefill(ids[130:])
        answers[tiles] = hidden, torch.softmax(head(hidden).float(), -1)
    (tiled, tiled_probs), (exact, exact_probs) = answers[True], answers[False]
    assert (tiled - exact).norm() < 1e-2 * exact.norm()
    best = exact_probs.topk(10).indices
    assert (tiled_probs[best] - exact_probs[best]).abs().max() < 1e-2

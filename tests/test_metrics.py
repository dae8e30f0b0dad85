"""erank and attention entropy (methods-spec §3.1-3.2) on matrices with known answers, and the Gram-matrix route
AgilePruner uses for the input erank."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from prunelab.eval.metrics import attention_entropy, erank
from prunelab.methods.adaptive import GRAM_MIN_DIM, input_erank

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # float64 SVDs spin-wait on a shared 2-core machine


def _orthogonal(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))


def _with_spectrum(s: torch.Tensor, n: int, c: int, seed: int) -> torch.Tensor:
    """An ``(n, c)`` matrix whose singular values are exactly ``s`` (up to rounding)."""
    k = s.numel()
    u = _orthogonal(n, seed)[:, :k]
    v = _orthogonal(c, seed + 1)[:, :k]
    return (u * s) @ v.T


@pytest.mark.parametrize("n", [1, 2, 7, 64])
def test_identity_has_full_erank(n):
    assert erank(torch.eye(n)).item() == pytest.approx(n, rel=1e-12)


def test_rank_one_has_erank_one():
    x = torch.outer(torch.arange(1.0, 9.0), torch.tensor([0.5, -2.0, 3.0]))
    assert erank(x).item() == pytest.approx(1.0, abs=1e-9)


def test_known_spectrum_both_conventions():
    x = torch.diag(torch.tensor([2.0, 1.0], dtype=torch.float64))
    p = torch.tensor([2 / 3, 1 / 3], dtype=torch.float64)
    q = torch.tensor([4 / 5, 1 / 5], dtype=torch.float64)
    assert erank(x).item() == pytest.approx(math.exp(-(p * p.log()).sum().item()), rel=1e-12)
    assert erank(x, spectrum="squared").item() == pytest.approx(math.exp(-(q * q.log()).sum().item()), rel=1e-12)


@given(seed=st.integers(0, 10_000), n=st.integers(2, 24), c=st.integers(2, 24))
@settings(max_examples=40, deadline=None)
def test_invariant_to_rotation_and_scale(seed, n, c):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, generator=g, dtype=torch.float64)
    base = erank(x).item()
    assert 1.0 - 1e-9 <= base <= min(n, c) + 1e-9
    assert erank(x @ _orthogonal(c, seed)).item() == pytest.approx(base, rel=1e-9)  # rotate features
    assert erank(_orthogonal(n, seed + 7) @ x).item() == pytest.approx(base, rel=1e-9)  # rotate tokens
    assert erank(3.5 * x).item() == pytest.approx(base, rel=1e-9)


def test_batched_equals_loop_and_low_precision_input_is_safe():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, 3, 10, 6, generator=g)
    out = erank(x)
    assert out.shape == (4, 3) and out.dtype == torch.float64
    for i in range(4):
        for j in range(3):
            assert out[i, j].item() == pytest.approx(erank(x[i, j]).item(), rel=1e-12)
    half = erank(x[0, 0].half())
    assert half.dtype == torch.float64 and half.item() == pytest.approx(
        erank(x[0, 0].half().double()).item(), rel=1e-12
    )


def test_options_centre_and_normalise():
    # Rows that differ only by a common offset: centring removes the offset direction.
    base = torch.eye(5, dtype=torch.float64)
    shifted = base + 10.0
    assert erank(shifted, center=True).item() == pytest.approx(erank(base, center=True).item(), rel=1e-9)
    assert erank(shifted).item() < 1.5  # the offset dominates without centring
    # Row normalisation removes per-token scale.
    scaled = base * torch.tensor([[1.0], [10.0], [100.0], [0.1], [5.0]], dtype=torch.float64)
    assert erank(scaled, row_normalize=True).item() == pytest.approx(5.0, rel=1e-12)
    assert erank(scaled).item() < 5.0


def test_zero_matrix_is_nan_and_bad_input_raises():
    assert math.isnan(erank(torch.zeros(4, 3)).item())
    with pytest.raises(ValueError, match="matrix"):
        erank(torch.ones(5))
    with pytest.raises(ValueError, match="spectrum"):
        erank(torch.eye(3), spectrum="cubic")


def test_attention_entropy_known_answers():
    n = 576
    assert attention_entropy(torch.full((n,), 1.0 / n)).item() == pytest.approx(math.log(n), rel=1e-12)
    assert attention_entropy(torch.full((n,), 7.0), normalized=True).item() == pytest.approx(1.0, rel=1e-12)
    one_hot = torch.zeros(n)
    one_hot[17] = 0.3  # renormalised: a single token holds all mass
    assert attention_entropy(one_hot).item() == pytest.approx(0.0, abs=1e-12)
    two = torch.tensor([[0.5, 0.5, 0.0, 0.0], [0.25, 0.25, 0.25, 0.25]])
    assert torch.allclose(attention_entropy(two), torch.tensor([math.log(2), math.log(4)], dtype=torch.float64))
    with pytest.raises(ValueError, match="non-negative"):
        attention_entropy(torch.tensor([0.5, -0.1, 0.6]))


@pytest.mark.parametrize("cond", [1e1, 1e3, 1e4])
@pytest.mark.parametrize("spectrum", ["singular", "squared"])
@pytest.mark.parametrize("shape", [(576, 384), (96, 200)])
def test_gram_route_matches_svd(cond, spectrum, shape):
    n, c = shape
    k = min(n, c)
    s = torch.logspace(0, -math.log10(cond), k, dtype=torch.float64)
    x = _with_spectrum(s, n, c, seed=int(cond) + k).float()
    assert min(x.shape) >= GRAM_MIN_DIM
    ref = erank(x, spectrum=spectrum).item()
    assert input_erank(x, spectrum=spectrum) == pytest.approx(ref, rel=1e-9)


def test_gram_route_falls_back_on_rank_deficient_and_small_inputs():
    s = torch.cat([torch.linspace(2.0, 1.0, 40, dtype=torch.float64), torch.zeros(60, dtype=torch.float64)])
    x = _with_spectrum(s, 128, 100, seed=5)
    # Rank 40 < 100: the Gram matrix is singular, the SVD route must be taken and agree exactly.
    assert input_erank(x) == erank(x).item()
    small = torch.randn(10, 70, generator=torch.Generator().manual_seed(1))
    assert input_erank(small) == erank(small).item()
    opts = dict(center=True, row_normalize=True, spectrum="squared")
    x2 = _with_spectrum(torch.linspace(3.0, 1.0, 80, dtype=torch.float64), 200, 80, seed=9)
    assert input_erank(x2, **opts) == pytest.approx(erank(x2, **opts).item(), rel=1e-9)

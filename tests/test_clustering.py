"""DPC-kNN clustering (SparseVLM ``cluster_and_merge`` style): known answers and properties."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, strategies as st

from prunelab.errors import BudgetError, PrunelabError
from prunelab.methods.clustering import cluster_and_merge, dpc_knn, merge_clusters

# 1-D points: a tight group {0, 1, 2} and a looser one {10, 11, 13}.
POINTS = torch.tensor([[0.0], [1.0], [2.0], [10.0], [11.0], [13.0]])


def test_known_answer_density_delta_centres_assignment():
    # k=3 nearest (self included): mean squared distances 5/3, 2/3, 5/3, 10/3, 5/3, 13/3.
    res = dpc_knn(POINTS, n_clusters=2, k=3)
    expected_density = torch.tensor([5 / 3, 2 / 3, 5 / 3, 10 / 3, 5 / 3, 13 / 3], dtype=torch.float64).neg().exp()
    torch.testing.assert_close(res.density, expected_density)
    # Densest is point 1 (delta = largest distance 13). Ties (0, 2, 4 share 5/3) go to the lower index, so the
    # denser-first order is 1, 0, 2, 4, 3, 5 and delta = distance to the nearest earlier point in that order.
    torch.testing.assert_close(res.delta, torch.tensor([1.0, 13.0, 1.0, 1.0, 9.0, 2.0], dtype=torch.float64))
    # score = density * delta: 13e^{-2/3} (pt 1) > 9e^{-5/3} (pt 4) > the rest.
    assert res.centers.tolist() == [1, 4]
    assert res.assignment.tolist() == [0, 0, 0, 1, 1, 1]
    assert res.sizes().tolist() == [3, 3]


def test_known_answer_merge_means():
    merged, res = cluster_and_merge(POINTS, 2, k=3)
    torch.testing.assert_close(merged, torch.tensor([[1.0], [34.0 / 3.0]]))
    assert merged.dtype == POINTS.dtype


def test_width_scaling_matches_sparsevlm():
    # Repeating the coordinate over C=4 columns doubles the Euclidean distance; SparseVLM's 1/sqrt(C) scaling
    # undoes it, so densities and deltas are identical to the 1-D case.
    wide = POINTS.repeat(1, 4)
    a, b = dpc_knn(POINTS, 2, k=3), dpc_knn(wide, 2, k=3)
    torch.testing.assert_close(a.density, b.density)
    torch.testing.assert_close(a.delta, b.delta)
    assert a.centers.tolist() == b.centers.tolist()


def test_default_k_is_n_clusters():
    x = torch.randn(20, 5, generator=torch.Generator().manual_seed(1))
    a, b = dpc_knn(x, 4), dpc_knn(x, 4, k=4)
    assert torch.equal(a.centers, b.centers) and torch.equal(a.density, b.density)
    # k larger than the number of tokens is clipped, not an error
    c = dpc_knn(x, 3, k=100)
    assert c.density.shape == (20,)


def test_duplicates_tie_break_is_deterministic():
    # Two exact duplicates: the lower index counts as denser, becomes the centre, and the duplicate joins it.
    x = torch.tensor([[0.0, 0.0], [0.0, 0.0], [5.0, 5.0]])
    res = dpc_knn(x, 2, k=2)
    assert res.centers.tolist()[0] == 0
    assert res.assignment[1] == res.assignment[0]


def test_every_point_its_own_cluster_gives_back_rows():
    x = torch.randn(9, 3, generator=torch.Generator().manual_seed(2))
    merged, res = cluster_and_merge(x, 9)
    assert sorted(res.centers.tolist()) == list(range(9))
    torch.testing.assert_close(merged, x[res.centers])


@pytest.mark.parametrize("bad", [0, 7, -1, True])
def test_bad_cluster_count(bad):
    with pytest.raises(BudgetError) as err:
        dpc_knn(torch.zeros(6, 2), bad)
    assert "\n" not in str(err.value) and isinstance(err.value, PrunelabError)


def test_bad_k():
    with pytest.raises(BudgetError):
        dpc_knn(torch.zeros(6, 2), 2, k=0)


def test_merge_rejects_empty_cluster():
    with pytest.raises(ValueError):
        merge_clusters(torch.zeros(3, 2), torch.tensor([0, 0, 2]), 3)


@given(
    m=st.integers(1, 30),
    c=st.integers(1, 6),
    frac=st.floats(0.0, 1.0),
    k=st.one_of(st.none(), st.integers(1, 40)),
    seed=st.integers(0, 10_000),
)
def test_properties(m, c, frac, k, seed):
    x = torch.randn(m, c, generator=torch.Generator().manual_seed(seed))
    n_clusters = max(1, min(m, int(round(frac * m))))
    res = dpc_knn(x, n_clusters, k)
    # centres: distinct, in range, each in its own cluster; every cluster non-empty
    assert res.centers.numel() == n_clusters
    assert torch.unique(res.centers).numel() == n_clusters
    assert int(res.centers.min()) >= 0 and int(res.centers.max()) < m
    assert res.assignment[res.centers].tolist() == list(range(n_clusters))
    assert res.assignment.min() >= 0 and res.assignment.max() < n_clusters
    assert int(res.sizes().sum()) == m and bool((res.sizes() > 0).all())
    # non-centres join a nearest centre
    d = torch.cdist(x.double(), x.double())
    dc = d[:, res.centers]
    others = torch.ones(m, dtype=torch.bool)
    others[res.centers] = False
    if others.any():
        chosen = dc[others, res.assignment[others]]
        assert bool((chosen <= dc[others].min(dim=1).values + 1e-9).all())
    # centre scores are the n_clusters largest
    s = res.score
    if n_clusters < m:
        assert float(s[res.centers].min()) >= float(s[others].max())
    # deterministic
    res2 = dpc_knn(x.clone(), n_clusters, k)
    assert torch.equal(res.centers, res2.centers) and torch.equal(res.assignment, res2.assignment)
    # merged rows are the cluster means
    merged = merge_clusters(x, res.assignment, n_clusters)
    for cid in range(n_clusters):
        torch.testing.assert_close(merged[cid], x[res.assignment == cid].mean(0), rtol=1e-5, atol=1e-5)
    assert all(math.isfinite(v) for v in res.density.tolist())

"""DivPrune and FPS: known answers, equivalence with the textbook greedy, properties."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, strategies as st

from prunelab.errors import BudgetError, CapabilityError, UnknownNameError
from prunelab.methods import get_pruner, prune
from prunelab.methods._greedy import cosine_distance_matrix, maxmin_greedy_textbook
from prunelab.methods.diversity import compare_greedy_speed
from prunelab.methods.testing import check_result, context_from, make_context


def _circle(deg):
    r = [math.radians(d) for d in deg]
    return torch.tensor([[math.cos(a), math.sin(a)] for a in r], dtype=torch.float32)


# exact axis vectors keep the designed ties exact in float32
HEX = torch.tensor(
    [
        [1.0, 0.0],
        [math.cos(math.radians(10)), math.sin(math.radians(10))],
        [0.0, 1.0],
        [-1.0, 0.0],
        [math.cos(math.radians(185)), math.sin(math.radians(185))],
        [0.0, -1.0],
    ]
)


def test_divprune_known_answer():
    # Angles 0, 10, 90, 180, 185, 270 degrees. Nearest-neighbour gaps: 10, 10, 80, 5, 5, 85 degrees, so the
    # first pick is 270° (index 5).
    ctx = context_from(torch.zeros(6, 3), [1 / 6] * 6, projected=HEX)
    res = get_pruner("DivPrune")(ctx, 3)
    assert res.stats["first_pick"] == 5
    # then its antipode 90° (index 2, d = 2); then min-distances to {90°, 270°}: 0° and 180° are at exactly 1
    # (orthogonal), 10° at 1-cos80°, 185° at 1-cos85°: the exact tie 0 / 3 goes to the lower index, 0
    assert res.indices.tolist() == [0, 2, 5]
    assert res.order == "raster" and res.tokens is None


def test_divprune_first_pick_is_nearest_neighbour_rule():
    for seed in range(5):
        ctx = make_context(n=30, c=8, seed=seed)
        d = cosine_distance_matrix(ctx.projected)
        second_smallest = torch.sort(d, dim=0).values[1]  # column-wise, the smallest is the self-distance
        res = get_pruner("DivPrune")(ctx, 5)
        assert res.stats["first_pick"] == int(torch.argmax(second_smallest))
        assert res.stats["first_pick"] in res.indices.tolist()


def test_divprune_feature_space_option():
    ctx = make_context(n=40, c=8, seed=1)
    vis = get_pruner("DivPrune", features="vision")(ctx, 10)
    d = cosine_distance_matrix(ctx.features)
    first = int(torch.argmax(torch.sort(d, 0).values[1]))
    assert vis.indices.tolist() == sorted(maxmin_greedy_textbook(d, 10, [first]).tolist())
    no_proj = make_context(n=16, c=4, seed=0, d=None)
    with pytest.raises(CapabilityError, match="projector"):
        get_pruner("DivPrune")(no_proj, 4)
    assert get_pruner("DivPrune", features="vision")(no_proj, 4).n_kept == 4
    with pytest.raises(UnknownNameError):
        get_pruner("DivPrune", features="clip")


def test_divprune_lazy_projection_matches_eager():
    eager = make_context(n=25, c=6, seed=9)
    lazy = make_context(n=25, c=6, seed=9, lazy_projection=True)
    assert torch.equal(get_pruner("DivPrune")(eager, 7).indices, get_pruner("DivPrune")(lazy, 7).indices)


@given(n=st.integers(2, 70), seed=st.integers(0, 100_000), clusters=st.integers(0, 6), data=st.data())
def test_divprune_equals_textbook_oracle(n, seed, clusters, data):
    t = data.draw(st.integers(1, n))
    ctx = make_context(n=n, c=8, seed=seed, clusters=clusters)
    res = get_pruner("DivPrune")(ctx, t)
    check_result(ctx, res, t)
    d = cosine_distance_matrix(ctx.projected)
    oracle = maxmin_greedy_textbook(d, t, [res.stats["first_pick"]])
    assert res.indices.tolist() == sorted(oracle.tolist())
    assert torch.equal(res.indices, get_pruner("DivPrune")(ctx, t).indices)


def test_divprune_with_duplicate_tokens_never_repeats():
    x = torch.cat([torch.eye(4)] * 3)  # 12 tokens, 4 distinct directions, each 3 times
    ctx = context_from(torch.zeros(12, 2), torch.full((12,), 1 / 12), projected=x)
    res = get_pruner("DivPrune")(ctx, 8)
    check_result(ctx, res, 8)
    # the first 4 greedy picks cover the 4 directions (the 5th must be a duplicate at distance 0)
    d = cosine_distance_matrix(x)
    oracle = maxmin_greedy_textbook(d, 8, [res.stats["first_pick"]]).tolist()
    assert sorted(i % 4 for i in oracle[:4]) == [0, 1, 2, 3]


# ---------------------------------------------------------------------------------------------------- FPS


def test_fps_known_answer_l2_vision():
    # points on a line: seed = highest attention (index 2, x=5); farthest = x=0 (index 0); then x=10 (index 4)
    xs = torch.tensor([[0.0], [1.0], [5.0], [6.0], [10.0]])
    ctx = context_from(xs, [0.1, 0.1, 0.5, 0.2, 0.1])
    res = get_pruner("FPS", metric="l2", features="vision")(ctx, 3)
    assert res.stats["first_pick"] == 2
    assert res.indices.tolist() == [0, 2, 4]
    res0 = get_pruner("FPS", metric="l2", features="vision", seed="index0")(ctx, 3)
    assert res0.stats["first_pick"] == 0 and res0.indices.tolist() == [0, 2, 4]  # 0 -> 10 -> 5 (d 5 vs 4 / 1)


def test_fps_attention_seed_is_kept_and_ties_lowest():
    ctx = context_from(torch.randn(6, 3, generator=torch.Generator().manual_seed(0)), [0.1, 0.3, 0.1, 0.3, 0.1, 0.1])
    res = get_pruner("FPS", features="vision")(ctx, 2)
    assert res.stats["first_pick"] == 1 and 1 in res.indices.tolist()


def test_fps_divprune_seed_equals_divprune():
    for seed in range(6):
        ctx = make_context(n=40, c=8, seed=seed, clusters=seed)
        for t in (1, 7, 40):
            assert torch.equal(
                get_pruner("FPS", seed="divprune")(ctx, t).indices, get_pruner("DivPrune")(ctx, t).indices
            )


def test_fps_random_seed_is_deterministic_and_seeded():
    ctx = make_context(n=50, c=8, seed=3)
    firsts = {get_pruner("FPS", seed="random", random_seed=s)(ctx, 5).stats["first_pick"] for s in range(10)}
    assert len(firsts) > 1
    a = get_pruner("FPS", seed="random", random_seed=7)(ctx, 5)
    b = get_pruner("FPS", seed="random", random_seed=7)(ctx, 5)
    assert torch.equal(a.indices, b.indices)


def test_fps_bad_options():
    with pytest.raises(UnknownNameError):
        get_pruner("FPS", metric="manhattan")
    with pytest.raises(UnknownNameError):
        get_pruner("FPS", seed="center")
    with pytest.raises(UnknownNameError):
        get_pruner("FPS", features="penultimate")


@pytest.mark.parametrize("seed_rule", ["attention", "index0", "random", "divprune"])
@pytest.mark.parametrize("metric", ["cosine", "l2"])
@given(n=st.integers(2, 50), seed=st.integers(0, 10_000), data=st.data())
def test_fps_properties(seed_rule, metric, n, seed, data):
    t = data.draw(st.integers(1, n))
    ctx = make_context(n=n, c=6, seed=seed)
    p = get_pruner("FPS", metric=metric, seed=seed_rule)
    res = p(ctx, t)
    check_result(ctx, res, t)
    assert res.stats["first_pick"] in res.indices.tolist()
    assert torch.equal(res.indices, p(ctx, t).indices)


# ------------------------------------------------------------------------------------------------ budgets


@pytest.mark.parametrize("name", ["DivPrune", "FPS"])
@pytest.mark.parametrize("bad", [0, 37, -1, 1.5, False, "4"])
def test_bad_budget_raises(name, bad, ctx):
    with pytest.raises(BudgetError):
        get_pruner(name)(ctx, bad)


def test_prune_stats(ctx):
    res = prune(ctx, "DivPrune", 9)
    assert res.stats["n_kept"] == 9 and 1.0 <= res.stats["erank_kept_projected"] <= 9.0


def test_speed_comparison_runs_and_agrees():
    rows = compare_greedy_speed(n=80, d=32, budgets=(8, 20), repeats=1)
    assert [r["budget"] for r in rows] == [8, 20]
    for r in rows:
        assert r["identical"] is True
        assert r["incremental_s"] > 0 and r["textbook_s"] > 0 and r["speedup"] > 0

"""AgilePruner (reconstruction of methods-spec §2.14) and the erank calibration."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, strategies as st

from prunelab.errors import BudgetError, CapabilityError, UnknownNameError
from prunelab.eval.metrics import erank
from prunelab.methods import get_pruner, prune
from prunelab.methods.adaptive import AgilePruner, calibrate_erank, cosine_distances, input_erank, threshold_greedy
from prunelab.methods.testing import check_result, context_from, make_context, make_contexts


def _unit(*pairs, dim=6):
    v = torch.zeros(dim, dtype=torch.float64)
    for i, x in pairs:
        v[i] = x
    return v


def _hand_context():
    """Six tokens with designed cosines (distances d = 1 - cos):
    A-B 0.004, A-C 0.05, C-D 0.021, E-F 0.04, everything else >= 0.07.
    Attention A .30 > B .25 > C .20 > D .12 > E .08 > F .05; raster positions B0 D1 F2 A3 E4 C5."""
    A = _unit((0, 1.0))
    B = _unit((0, 0.996), (1, math.sqrt(1 - 0.996**2)))
    C = _unit((0, 0.95), (2, math.sqrt(1 - 0.95**2)))
    D = 0.979 * C + math.sqrt(1 - 0.979**2) * _unit((3, 1.0))
    E = _unit((4, 1.0))
    F = _unit((4, 0.96), (5, 0.28))
    raster = {"B": 0, "D": 1, "F": 2, "A": 3, "E": 4, "C": 5}
    vecs = {"A": A, "B": B, "C": C, "D": D, "E": E, "F": F}
    att = {"A": 0.30, "B": 0.25, "C": 0.20, "D": 0.12, "E": 0.08, "F": 0.05}
    feats = torch.zeros(6, 6, dtype=torch.float64)
    a = torch.zeros(6)
    for k, i in raster.items():
        feats[i] = vecs[k]
        a[i] = att[k]
    return context_from(feats, a), raster


def _pos(raster, names):
    return sorted(raster[n] for n in names)


def test_hand_distances_are_as_designed():
    ctx, r = _hand_context()
    d = cosine_distances(ctx.features)
    assert d[r["A"], r["B"]] == pytest.approx(0.004, abs=1e-6)
    assert d[r["A"], r["C"]] == pytest.approx(0.05, abs=1e-6)
    assert d[r["C"], r["D"]] == pytest.approx(0.021, abs=1e-6)
    assert d[r["E"], r["F"]] == pytest.approx(0.04, abs=1e-6)
    assert d[r["A"], r["D"]] == pytest.approx(1 - 0.95 * 0.979, abs=1e-6)


def test_hand_example_attention_rank():
    ctx, r = _hand_context()
    e = input_erank(ctx.features)
    p = AgilePruner(erank_avg=e)  # rho = 1, taus = 0.01 * attention rank, capped at 0.1
    # A (tau .01) removes B; C (rank 3, tau .03) removes D; E (rank 5) is the third pick
    res = p(ctx, 3)
    assert res.indices.tolist() == _pos(r, "ACE")
    assert res.stats["rho"] == pytest.approx(1.0)
    assert res.stats["n_removed_by_threshold"] == 2 and res.stats["n_filled"] == 0
    assert res.stats["tau_mean"] == pytest.approx((0.01 + 0.03 + 0.05) / 3)
    assert res.stats["tau_max_used"] == pytest.approx(0.05)
    # T = 4: E (tau .05) also removes F; candidates run out after A, C, E -> fill with the best removed: B
    res4 = p(ctx, 4)
    assert res4.indices.tolist() == _pos(r, "ABCE")
    assert res4.stats["n_filled"] == 1 and res4.stats["n_removed_by_threshold"] == 3
    # FasterVLM would keep A, B, C
    assert get_pruner("FasterVLM")(ctx, 3).indices.tolist() == _pos(r, "ABC")


def test_hand_example_selection_index():
    ctx, r = _hand_context()
    p = AgilePruner(erank_avg=input_erank(ctx.features), order_mode="selection_index")
    # C is the 2nd selection: tau .02 < d(C, D) = .021, so D survives and is the 3rd pick
    assert p(ctx, 3).indices.tolist() == _pos(r, "ACD")


def test_hand_example_complex_image_larger_tau():
    ctx, r = _hand_context()
    e = input_erank(ctx.features)
    # rho = 6: A's tau .06 removes B and C; D (rank 4) tau .24 -> capped .1; E removes F
    res = AgilePruner(erank_avg=e / 6)(ctx, 3)
    assert res.stats["rho"] == pytest.approx(6.0)
    assert res.indices.tolist() == _pos(r, "ADE")
    assert res.stats["tau_max_used"] == pytest.approx(0.1)
    # the same through ctx.erank_stats
    ctx.erank_stats = {"mean": e / 6}
    assert AgilePruner()(ctx, 3).indices.tolist() == _pos(r, "ADE")


def test_hand_example_relax():
    ctx, r = _hand_context()
    e = input_erank(ctx.features)
    res = AgilePruner(erank_avg=e, fill="relax")(ctx, 4)
    # factor 1 runs out after A, C, E (see above). Halved once: A (tau .005) still removes B (.004); C (rank 3,
    # tau .015) no longer removes D (.021); D is the 3rd pick and E the 4th -> T reached without filling.
    assert res.indices.tolist() == _pos(r, "ACDE")
    assert res.stats["n_relax"] == 1 and res.stats["relax_factor"] == 0.5 and res.stats["n_filled"] == 0
    plain = AgilePruner(erank_avg=e, tau_max=0.05, tau_scale=0.005)(ctx, 4)
    assert torch.equal(plain.indices, res.indices) and plain.stats["n_filled"] == 0


# ------------------------------------------------------------------------------------------- limits


@pytest.mark.parametrize("order_mode", ["attention_rank", "selection_index"])
@pytest.mark.parametrize("features", ["vision", "projected"])
@given(n=st.integers(1, 60), seed=st.integers(0, 10_000), clusters=st.integers(0, 5), data=st.data())
def test_tau_zero_is_fastervlm(order_mode, features, n, seed, clusters, data):
    t = data.draw(st.integers(1, n))
    ctx = make_context(n=n, c=6, seed=seed, clusters=clusters)
    res = AgilePruner(tau_max=0.0, order_mode=order_mode, features=features, erank_avg=3.0)(ctx, t)
    assert torch.equal(res.indices, get_pruner("FasterVLM")(ctx, t).indices)
    assert res.stats["n_removed_by_threshold"] == 0 and res.stats["n_filled"] == 0


def test_tau_zero_keeps_exact_duplicates_too():
    x = torch.cat([torch.eye(3)] * 2)
    ctx = context_from(x, [0.3, 0.2, 0.1, 0.25, 0.1, 0.05])
    assert AgilePruner(tau_max=0.0, erank_avg=1.0)(ctx, 3).indices.tolist() == [0, 1, 3]
    # any positive tau removes the exact duplicate of a selected token
    assert AgilePruner(tau_max=1e-9, erank_avg=1.0)(ctx, 3).indices.tolist() == [0, 1, 2]


@given(n=st.integers(2, 60), seed=st.integers(0, 10_000), data=st.data())
def test_huge_tau_attention_fill_is_fastervlm(n, seed, data):
    t = data.draw(st.integers(1, n))
    ctx = make_context(n=n, c=6, seed=seed)
    res = AgilePruner(tau_max=1e3, tau_scale=1e3, erank_avg=2.0)(ctx, t)
    assert torch.equal(res.indices, get_pruner("FasterVLM")(ctx, t).indices)
    if t > 1:  # the first pick removed every other token (all cosine distances <= 2 < tau)
        assert res.stats["n_removed_by_threshold"] == n - 1 and res.stats["n_filled"] == t - 1


def _selection_order(p, ctx, budget, factor):
    rho = p.complexity(ctx)[0]
    d = cosine_distances(ctx.space(p.features))
    ranking = torch.sort(ctx.cls_attention.double(), descending=True, stable=True).indices
    return threshold_greedy(
        d, ranking, budget, rho, tau_scale=p.tau_scale * factor, tau_max=p.tau_max * factor, order_mode=p.order_mode
    ), d


@given(n=st.integers(2, 50), seed=st.integers(0, 10_000), data=st.data())
def test_huge_tau_relax_is_minimal_halving(n, seed, data):
    t = data.draw(st.integers(1, n))
    ctx = make_context(n=n, c=6, seed=seed, clusters=3)
    p = AgilePruner(tau_max=1e3, tau_scale=1e3, erank_avg=2.0, fill="relax", max_relax=60)
    res = p(ctx, t)
    check_result(ctx, res, t)
    f = res.stats["relax_factor"]
    assert res.stats["n_filled"] == 0
    (sel, taus, _), d = _selection_order(p, ctx, t, f)
    assert sorted(sel) == res.indices.tolist()
    # attention-ordered packing: every later pick is at least tau_i away from each earlier pick i
    for a in range(len(sel)):
        for b in range(a + 1, len(sel)):
            assert d[sel[a], sel[b]] >= taus[a]
    if res.stats["n_relax"] > 0 and f > 0:
        (prev, _, _), _ = _selection_order(p, ctx, t, 2 * f)
        assert len(prev) < t  # one halving fewer runs out of candidates


def test_relax_gives_up_at_tau_zero():
    ctx = make_context(n=30, c=6, seed=1)
    res = AgilePruner(tau_max=1e3, tau_scale=1e3, erank_avg=2.0, fill="relax", max_relax=0)(ctx, 10)
    assert res.stats["relax_factor"] == 0.0 and res.stats["n_relax"] == 1
    assert torch.equal(res.indices, get_pruner("FasterVLM")(ctx, 10).indices)


# ------------------------------------------------------------------------------------------ properties


@pytest.mark.parametrize("fill", ["attention", "relax"])
@pytest.mark.parametrize("order_mode", ["attention_rank", "selection_index"])
@given(
    n=st.integers(1, 60),
    seed=st.integers(0, 10_000),
    clusters=st.integers(0, 5),
    tau_max=st.sampled_from([0.0, 0.05, 0.1, 0.3, 1.0]),
    data=st.data(),
)
def test_agilepruner_properties(fill, order_mode, n, seed, clusters, tau_max, data):
    t = data.draw(st.integers(1, n))
    ctx = make_context(n=n, c=6, seed=seed, clusters=clusters, erank_stats={"mean": 4.0})
    p = AgilePruner(tau_max=tau_max, order_mode=order_mode, fill=fill)
    res = p(ctx, t)
    check_result(ctx, res, t)
    assert res.tokens is None and res.order == "raster" and res.positions == "contiguous"
    assert torch.equal(res.indices, p(ctx, t).indices)
    s = res.stats
    assert s["tau_max_used"] <= tau_max + 1e-12 and 0 <= s["tau_mean"] <= s["tau_max_used"]
    if fill == "relax":
        assert s["n_filled"] == 0
    (sel, taus, _), d = _selection_order(p, ctx, t, s["relax_factor"])
    greedy = set(sel)
    assert greedy <= set(res.indices.tolist())
    filled = set(res.indices.tolist()) - greedy
    assert len(filled) == s["n_filled"]
    if filled:  # the fill takes the best-attention tokens the greedy did not select
        a = ctx.cls_attention
        rest = [i for i in range(n) if i not in greedy and i not in filled]
        if rest:
            assert min(a[list(filled)]) >= max(a[rest])
    # the top-attention token is always kept
    assert int(torch.argmax(ctx.cls_attention)) in res.indices.tolist()


def test_rho_scales_like_tau_scale():
    for seed in range(6):
        ctx = make_context(n=49, c=8, seed=seed, clusters=4)
        e = 5.0
        a = AgilePruner(erank_avg=e / 2, tau_max=0.5)(ctx, 12)
        b = AgilePruner(erank_avg=e, tau_max=0.5, tau_scale=0.02)(ctx, 12)
        assert torch.equal(a.indices, b.indices)


def test_larger_erank_means_larger_thresholds(ctx):
    low = AgilePruner(erank_avg=100.0)(ctx, 10).stats
    high = AgilePruner(erank_avg=1.0)(ctx, 10).stats
    assert high["rho"] > low["rho"] and high["tau_mean"] > low["tau_mean"]


# --------------------------------------------------------------------------------------------- erank


def test_erank_source_and_options(ctx):
    with pytest.raises(CapabilityError, match="calibrate_erank"):
        AgilePruner()(ctx, 5)
    ctx.erank_stats = {"mean": 2.0}
    s = AgilePruner()(ctx, 5).stats
    assert s["erank_avg"] == 2.0 and s["erank_input"] == pytest.approx(float(erank(ctx.features)))
    s2 = AgilePruner(erank_avg=4.0)(ctx, 5).stats  # explicit value wins over the context's
    assert s2["erank_avg"] == 4.0 and s2["rho"] == pytest.approx(s["rho"] / 2)
    s3 = AgilePruner(erank_center=True, erank_row_normalize=True, erank_spectrum="squared")(ctx, 5).stats
    assert s3["erank_input"] == pytest.approx(
        float(erank(ctx.features, center=True, row_normalize=True, spectrum="squared"))
    )
    s4 = AgilePruner(erank_features="projected")(ctx, 5).stats
    assert s4["erank_input"] == pytest.approx(float(erank(ctx.projected)))


def test_calibrate_erank_known_answer():
    eye4 = torch.eye(4)
    rank1 = torch.ones(5, 3)
    stats = calibrate_erank([eye4, rank1])
    assert stats["n"] == 2
    assert stats["mean"] == pytest.approx(2.5) and stats["min"] == pytest.approx(1.0)
    assert stats["max"] == pytest.approx(4.0) and stats["std"] == pytest.approx(1.5)


def test_calibrate_erank_contexts_equal_tensors():
    ctxs = make_contexts(4, n=25, c=8)
    a = calibrate_erank(ctxs)
    b = calibrate_erank([c.features for c in ctxs])
    assert a == b and a["min"] <= a["mean"] <= a["max"]
    c = calibrate_erank(ctxs, features="projected", center=True)
    assert c["mean"] == pytest.approx(sum(float(erank(x.projected, center=True)) for x in ctxs) / 4)
    # calibrated stats plug into the context and the pruner runs
    for x in ctxs:
        x.erank_stats = a
    assert prune(ctxs[0], "AgilePruner", 8).stats["n_kept"] == 8


def test_calibrate_erank_bad_input():
    with pytest.raises(CapabilityError, match="no images"):
        calibrate_erank([])
    with pytest.raises(CapabilityError, match="all-zero"):
        calibrate_erank([torch.zeros(4, 4)])


# ---------------------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize("bad", [0, 37, -2, 3.5, True, "6"])
def test_bad_budget_raises(bad, ctx):
    with pytest.raises(BudgetError):
        AgilePruner(erank_avg=3.0)(ctx, bad)


def test_bad_options():
    with pytest.raises(UnknownNameError):
        get_pruner("AgilePruner", order_mode="rank")
    with pytest.raises(UnknownNameError):
        get_pruner("AgilePruner", fill="random")
    with pytest.raises(UnknownNameError):
        get_pruner("AgilePruner", features="clip")
    with pytest.raises(ValueError):
        get_pruner("AgilePruner", tau_max=-1)
    with pytest.raises(ValueError):
        get_pruner("AgilePruner", erank_avg=0.0)


def test_projected_space_needs_projector():
    ctx = make_context(n=16, c=4, seed=0, d=None)
    with pytest.raises(CapabilityError, match="projector"):
        AgilePruner(features="projected", erank_avg=2.0)(ctx, 4)
    assert AgilePruner(erank_avg=2.0)(ctx, 4).n_kept == 4


def test_params_round_trip():
    p = get_pruner("AgilePruner", tau_max=0.2, fill="relax", erank_avg=3.0)
    q = type(p)(**p.params())
    assert q.params() == p.params() and q.params()["tau_max"] == 0.2

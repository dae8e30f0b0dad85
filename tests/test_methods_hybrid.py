"""Hybrid pre-LLM pruners: VisPruner, VisionZip, BAT adaptation, AttnDiv, erank-guided / inverse splits."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, strategies as st

from prunelab.errors import BudgetError, CapabilityError, PrunelabError
from prunelab.eval.metrics import erank
from prunelab.methods import get_pruner, prune
from prunelab.methods.hybrid import erank_split_ratio, round_half_up, visionzip_contextual_default, vispruner_select
from prunelab.methods.testing import context_from, make_context

STATS = {"min": 4.0, "max": 12.0, "mean": 8.0}
SELECTION = ["VisPruner", "AttnDiv", "VisPruner+erank", "VisPruner+inverse", "AttnDiv+erank", "AttnDiv+inverse"]
MERGING = ["BAT", "BAT+erank", "BAT+inverse"]
ALL = SELECTION + MERGING + ["VisionZip"]


def _basis(d: int, j: int) -> torch.Tensor:
    v = torch.zeros(d)
    v[j] = 1.0
    return v


# ------------------------------------------------------------------------------------------------ VisPruner


def _vispruner_trace_context():
    """20 patches, attention decreasing with the index (residual list = patches 2..19 in order).

    Round 1 (R=18, T_div=9, r=8): A = even patches 2..18, B = odd patches 3..19. Every A patch except 10 is
    an exact (possibly rescaled) copy of a B patch -> 8 dropped, 10 survives; list = [10, 3, 5, ..., 19].
    Round 2 (R=10, r=1): A = [10, 5, 9, 13, 17], B = [3, 7, 11, 15, 19]; only 5 resembles a B patch
    (cos(5, 7) = 0.9) -> 5 dropped. Without the "survivors first" reordering 7 would be in A and be dropped.
    """
    d = 20
    f = torch.zeros(20, d)
    f[0], f[1] = _basis(d, 0), _basis(d, 1)
    for j in (3, 5, 9, 11, 13, 15, 17, 19):
        f[j] = _basis(d, j)
    f[7] = 0.9 * _basis(d, 5) + math.sqrt(1 - 0.81) * _basis(d, 7)
    for a, b in {2: 3, 4: 9, 6: 11, 8: 13, 12: 15, 14: 17, 16: 19}.items():
        f[a] = f[b]
    f[18] = 2.0 * f[3]
    f[10] = _basis(d, 10)
    attention = torch.linspace(1.0, 0.05, 20)
    return context_from(f, attention)


def test_vispruner_hand_traced():
    ctx = _vispruner_trace_context()
    res = prune(ctx, "VisPruner", 11, important_ratio=0.2)  # T_imp = int(2.2) = 2, T_div = 9
    assert res.indices.tolist() == [0, 1, 3, 7, 9, 10, 11, 13, 15, 17, 19]
    assert res.tokens is None and res.order == "raster"
    assert res.stats["n_important"] == 2 and res.stats["n_diverse"] == 9 and res.stats["dedup_iterations"] == 2


def test_vispruner_readme_splits():
    ctx = make_context(n=576, c=8, seed=1, d=None, qk_layers=(-2,))
    for t, r, imp in [(128, 0.5, 64), (64, 0.75, 48), (64, 0.5, 32)]:
        kept, stats = vispruner_select(ctx.features, ctx.cls_attention, t, r)
        assert kept.numel() == t and stats["n_important"] == imp
        top = torch.argsort(ctx.cls_attention, descending=True)[:imp]
        assert set(top.tolist()) <= set(kept.tolist())
        # 576 - T_imp residual tokens, at most 8 removed per round
        assert stats["dedup_iterations"] == math.ceil((576 - imp - (t - imp)) / 8)


def test_vispruner_extremes():
    ctx = make_context(n=25, c=6, seed=2)
    top = torch.sort(torch.argsort(ctx.cls_attention, descending=True)[:7]).values
    assert prune(ctx, "VisPruner", 7, important_ratio=1.0).indices.tolist() == top.tolist()
    # r = 0: pure duplicate removal, still exactly T (odd residual lengths included)
    for t in (1, 2, 5, 13, 25):
        assert prune(ctx, "VisPruner", t, important_ratio=0.0).n_kept == t


def _official_vispruner(features, attention, budget, ratio):
    """Transcription of the source's rule, batch of one: Theia-4869/VisPruner @ aefa01a
    ``llava/model/llava_arch.py::encode_images`` lines 150-181 (raises wherever the source raises)."""
    f = features[None]
    n_batch = f.shape[0]
    t_imp = int(budget * ratio)
    t_div = budget - t_imp
    ranked = attention[None].argsort(dim=-1, descending=True)  # l. 155
    important, residual = ranked[:, :t_imp], ranked[:, t_imp:]
    fn = f / f.norm(dim=-1, keepdim=True)  # l. 160
    while t_div > 0:  # l. 161-176
        length = residual.shape[1]
        r = min(8, length - t_div)
        if r <= 0:
            break
        rows = fn[torch.arange(n_batch).unsqueeze(-1).expand(-1, length), residual]
        half_a, half_b = rows[..., ::2, :], rows[..., 1::2, :]
        best = (half_a @ half_b.transpose(-1, -2)).max(dim=-1).values
        survivors = best.argsort(dim=-1, descending=True)[:, r:]
        batch = torch.arange(n_batch).unsqueeze(-1).expand(-1, length // 2 - r)
        residual = torch.cat([residual[..., ::2][batch, survivors], residual[..., 1::2]], dim=-1)
    chosen = torch.cat([important, residual], dim=-1) if t_div > 0 else important  # l. 178-181
    return chosen[0]


def _clustered(n, c, seed, noise):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(60, c, generator=g)
    feats = centres[torch.randint(0, 60, (n,), generator=g)] + noise * torch.randn(n, c, generator=g)
    return feats, torch.softmax(2 * torch.randn(n, generator=g), dim=0)


@pytest.mark.parametrize("width", [384, 768, 1024])
def test_vispruner_selects_bitwise_like_the_official_loop(width):
    """Same kept set as the source on every input (CLIP ViT-L width 1024 included), exactly tied scores too:
    the clustered features give tied A-scores in about one iteration in 20."""
    for seed in range(4):
        for noise in (0.3, 3.0):
            feats, attn = _clustered(576, width, seed, noise)
            for budget, ratio in [(64, 0.5), (128, 0.5), (64, 0.75), (192, 0.5)]:
                kept, stats = vispruner_select(feats, attn, budget, ratio)
                ref = torch.sort(_official_vispruner(feats, attn, budget, ratio)).values
                assert torch.equal(kept, ref), (width, seed, noise, budget, ratio)
                assert stats["source_defined"]


def test_vispruner_where_the_source_fails():
    """The source raises (or loses a token) where its even-split arithmetic breaks; here T tokens, flagged."""
    feats, attn = _clustered(576, 16, 0, 0.3)
    with pytest.raises(RuntimeError, match="numel"):  # R = 12, r = 8: expand(-1, -2)
        _official_vispruner(feats, attn, 16, 0.75)
    for budget, ratio in [(24, 0.75), (63, 0.5)]:  # odd R after / before the first iteration
        with pytest.raises(IndexError):
            _official_vispruner(feats, attn, budget, ratio)
    assert _official_vispruner(feats, attn, 14, 0.75).numel() == 13
    for budget, ratio in [(16, 0.75), (24, 0.75), (63, 0.5), (14, 0.75)]:
        kept, stats = vispruner_select(feats, attn, budget, ratio)
        assert kept.numel() == budget == torch.unique(kept).numel() and not stats["source_defined"]
    # important_ratio = 1: the source skips the loop; so does this, and both keep the top-T attention tokens.
    kept, stats = vispruner_select(feats, attn, 64, 1.0)
    assert torch.equal(kept, torch.sort(_official_vispruner(feats, attn, 64, 1.0)).values) and stats["source_defined"]


# ------------------------------------------------------------------------------------------------ VisionZip


def _visionzip_context():
    """8 patches; dominant = patches 3, 6; rest = [0, 1, 2, 4, 5, 7], stride 6 // 2 = 3 -> targets 0, 4.

    Head-mean keys send 1, 7 to target 0 and 2, 5 to target 4. Each head alone would not (head 0 = mean +
    (3, -3) gives cluster sizes [1, 3], head 1 = mean - (3, -3) gives [3, 1]), so the test pins the head mean.
    """
    feats = torch.tensor([[float(j), 10.0 * j] for j in range(8)])
    att = torch.tensor([0.1, 0.1, 0.1, 0.9, 0.1, 0.1, 0.8, 0.1])
    mean_keys = torch.tensor(
        [[0.3, 0.3], [1.0, 0.0], [1.0, 0.1], [0.2, 1.0], [5.0, 5.0], [0.0, 1.0], [0.1, 1.0], [-5.0, 5.0], [1.0, 0.5]]
    )  # row 0 = CLS; rows 4 (patch 3) and 7 (patch 6) are dominant and never compared
    v = torch.tensor([3.0, -3.0])
    keys = torch.stack([mean_keys + v, mean_keys - v])  # (H=2, N+1=9, d=2)
    ctx = context_from(feats, att, keys={-2: keys})
    ctx.cls_feature = torch.tensor([-1.0, -2.0])
    return ctx


def test_visionzip_hand_traced():
    ctx = _visionzip_context()
    res = prune(ctx, "VisionZip", 5, contextual=2)
    assert res.indices.tolist() == [-1, 3, 6, 0, 4]
    assert res.order == "cls_first_raster" and res.token_space == "vision"
    expected = torch.tensor(
        [
            [-1.0, -2.0],  # CLS
            [3.0, 30.0],
            [6.0, 60.0],  # dominant, raster
            [0.0 + 4.0, 0.0 + 40.0],  # target 0 + mean(f1, f7)
            [4.0 + 3.5, 40.0 + 35.0],  # target 4 + mean(f2, f5)
        ]
    )
    torch.testing.assert_close(res.tokens, expected)
    assert res.stats["contextual_sizes"] == [2, 2] and res.stats["n_dominant"] == 3


def test_visionzip_default_contextual_rule():
    assert [visionzip_contextual_default(t) for t in (64, 128, 192)] == [10, 20, 30]  # 54+10, 108+20, 162+30
    assert visionzip_contextual_default(1) == 0 and visionzip_contextual_default(7) == 1
    ctx = make_context(n=576, c=8, seed=0, d=None, qk_layers=(-2,))
    res = prune(ctx, "VisionZip", 64)
    assert res.stats["n_dominant"] == 54 and res.stats["n_contextual"] == 10 and res.n_kept == 64


def test_visionzip_pure_selection_when_no_contextual():
    ctx = make_context(n=16, c=4, seed=5)
    res = prune(ctx, "VisionZip", 6, contextual=0)
    top = torch.sort(torch.argsort(ctx.cls_attention, descending=True)[:5]).values
    assert res.indices.tolist() == [-1] + top.tolist()
    torch.testing.assert_close(res.tokens, torch.cat([ctx.cls_feature[None], ctx.features[top]]))


def test_visionzip_unassigned_target_is_its_row():
    # T = N: one remaining token joins a target; the other targets keep their own rows exactly.
    ctx = make_context(n=16, c=4, seed=6)
    res = prune(ctx, "VisionZip", 16, contextual=4)
    sizes = res.stats["contextual_sizes"]
    assert sum(sizes) == 1
    for pos, size in enumerate(sizes):
        if size == 0:
            row = res.tokens[12 + pos]
            torch.testing.assert_close(row, ctx.features[res.indices[12 + pos]])


def test_visionzip_errors():
    ctx = make_context(n=16, c=4, seed=0)
    with pytest.raises(BudgetError):
        prune(ctx, "VisionZip", 4, contextual=4)
    with pytest.raises(BudgetError):
        get_pruner("VisionZip", contextual=-1)
    no_keys = make_context(n=16, c=4, seed=0, qk_layers=(-1,))
    no_keys.keys.pop(-2, None)
    with pytest.raises(CapabilityError):
        prune(no_keys, "VisionZip", 8)
    ctx.cls_feature = None
    with pytest.raises(CapabilityError) as err:
        prune(ctx, "VisionZip", 8)
    assert "\n" not in str(err.value)


# ------------------------------------------------------------------------------------------------ BAT


def test_bat_hand_traced():
    # attentive: patches 2, 5. The other six, in raster order, are the 1-D points 0, 1, 2, 10, 11, 13 whose
    # DPC-kNN (k=3) clusters are {0,1,2} (centre = the point 1 -> patch 1) and {10,11,13} (centre 11 -> patch 6).
    feats = torch.tensor([[0.0], [1.0], [100.0], [2.0], [10.0], [200.0], [11.0], [13.0]])
    att = torch.tensor([0.1, 0.1, 0.9, 0.1, 0.1, 0.8, 0.1, 0.1])
    ctx = context_from(feats, att)
    res = prune(ctx, "BAT", 4, k=3)
    assert res.indices.tolist() == [1, 2, 5, 6]
    torch.testing.assert_close(res.tokens, torch.tensor([[1.0], [100.0], [200.0], [34.0 / 3.0]]))
    assert res.stats["n_attentive"] == 2 and res.stats["n_clusters"] == 2 and res.stats["max_cluster_size"] == 3


@pytest.mark.parametrize("space", ["vision", "projected"])
def test_bat_singletons_give_back_rows(space):
    ctx = make_context(n=16, c=6, seed=4)
    res = prune(ctx, "BAT", 16, features=space)  # 8 attentive + 8 one-member clusters
    assert res.indices.tolist() == list(range(16)) and res.token_space == space
    torch.testing.assert_close(res.tokens, ctx.space(space))


def test_bat_ratio_one_is_fastervlm():
    ctx = make_context(n=25, c=6, seed=3)
    res = prune(ctx, "BAT", 9, attentive_ratio=1.0)
    top = torch.sort(torch.argsort(ctx.cls_attention, descending=True)[:9]).values
    assert res.indices.tolist() == top.tolist()
    torch.testing.assert_close(res.tokens, ctx.features[top])


# ------------------------------------------------------------------------------------------------ AttnDiv


def _circle_context():
    ang = torch.tensor([0.0, 10.0, 90.0, 180.0, 120.0]) * math.pi / 180
    feats = torch.stack([ang.cos(), ang.sin()], dim=1)
    att = torch.tensor([0.1, 0.5, 0.2, 0.05, 0.15])
    return context_from(feats, att)


def test_attndiv_hand_traced():
    ctx = _circle_context()
    # k_att = round(3 * 1/3) = 1 -> seed 10deg (top attention); farthest is 180deg; then 90deg (80deg from
    # its nearest selected) beats 120deg (60deg) and 0deg (10deg).
    res = prune(ctx, "AttnDiv", 3, attention_ratio=1 / 3, features="vision")
    assert res.indices.tolist() == [1, 2, 3] and res.stats["k_att"] == 1
    # k_att = 2 -> seeds {10deg, 90deg}; then 180deg (90deg away) beats 120deg (30deg) and 0deg (10deg)
    res = prune(ctx, "AttnDiv", 3, attention_ratio=2 / 3, features="vision")
    assert res.indices.tolist() == [1, 2, 3] and res.stats["k_att"] == 2
    # all attention -> top-3 attention
    res = prune(ctx, "AttnDiv", 3, attention_ratio=1.0, features="vision")
    assert res.indices.tolist() == [1, 2, 4]


def test_attndiv_endpoints_match_fastervlm_and_divprune():
    ctx = make_context(n=36, c=16, seed=7)
    for t in (1, 5, 12):
        assert torch.equal(prune(ctx, "AttnDiv", t, attention_ratio=0.0).indices, prune(ctx, "DivPrune", t).indices)
        assert torch.equal(prune(ctx, "AttnDiv", t, attention_ratio=1.0).indices, prune(ctx, "FasterVLM", t).indices)


def test_attndiv_default_features_projected():
    ctx = make_context(n=16, c=4, seed=0, d=None)
    with pytest.raises(CapabilityError):
        prune(ctx, "AttnDiv", 4)
    assert prune(ctx, "AttnDiv", 4, features="vision").n_kept == 4


def test_round_half_up():
    assert [round_half_up(x) for x in (0.5, 1.5, 2.5, 2.49, 0.0)] == [1, 2, 3, 2, 0]


# ------------------------------------------------------------------------------------------------ erank split


def test_erank_split_ratio_mapping():
    assert erank_split_ratio(4.0, 4.0, 12.0, 0.25, 0.75) == 0.75  # simplest image -> most attention
    assert erank_split_ratio(12.0, 4.0, 12.0, 0.25, 0.75) == 0.25
    assert erank_split_ratio(8.0, 4.0, 12.0, 0.25, 0.75) == pytest.approx(0.5)
    assert erank_split_ratio(100.0, 4.0, 12.0, 0.25, 0.75) == 0.25  # clipped
    assert erank_split_ratio(0.0, 4.0, 12.0, 0.25, 0.75) == 0.75
    assert erank_split_ratio(6.0, 4.0, 12.0, 0.2, 0.6, inverse=True) == pytest.approx(0.3)
    assert erank_split_ratio(6.0, 4.0, 12.0, 0.2, 0.6) == pytest.approx(0.5)
    with pytest.raises(CapabilityError):
        erank_split_ratio(6.0, 5.0, 5.0, 0.2, 0.6)


@pytest.mark.parametrize(
    "base,param", [("VisPruner", "important_ratio"), ("BAT", "attentive_ratio"), ("AttnDiv", "attention_ratio")]
)
def test_erank_variant_equals_base_at_mapped_ratio(base, param):
    ctx = make_context(n=36, c=16, seed=9)
    e = float(erank(ctx.features))
    for rule, inverse in (("erank", False), ("inverse", True)):
        kw = dict(e_min=e - 3.0, e_max=e + 1.0, r_min=0.2, r_max=0.8)
        res = prune(ctx, f"{base}+{rule}", 10, **kw)
        r = erank_split_ratio(e, e - 3.0, e + 1.0, 0.2, 0.8, inverse=inverse)
        assert res.stats["r_used"] == pytest.approx(r) and res.stats["rule"] == rule
        assert res.stats["erank_input"] == pytest.approx(e)
        ref = prune(ctx, base, 10, **{param: r})
        assert torch.equal(res.indices, ref.indices)
        if ref.tokens is not None:
            torch.testing.assert_close(res.tokens, ref.tokens)
    # erank rule (r = 0.35) and inverse rule (r = 0.65) split the budget differently
    assert (
        prune(ctx, f"{base}+erank", 10, **kw).stats["r_used"] != prune(ctx, f"{base}+inverse", 10, **kw).stats["r_used"]
    )


def test_erank_stats_from_context_and_missing():
    ctx = make_context(n=36, c=16, seed=1, erank_stats=STATS)
    res = prune(ctx, "BAT+erank", 8)
    assert res.stats["e_min"] == 4.0 and res.stats["e_max"] == 12.0
    # explicit parameters win over the context's statistics
    res = prune(ctx, "BAT+erank", 8, e_min=0.0, e_max=1000.0)
    assert res.stats["e_max"] == 1000.0
    bare = make_context(n=36, c=16, seed=1)
    for name in ("BAT+erank", "VisPruner+inverse", "AttnDiv+erank"):
        with pytest.raises(CapabilityError) as err:
            prune(bare, name, 8)
        assert "e_min" in str(err.value) and "\n" not in str(err.value)


def test_bad_parameters():
    for name, kw in [
        ("VisPruner", {"important_ratio": 1.5}),
        ("VisPruner", {"step": 0}),
        ("BAT", {"attentive_ratio": -0.1}),
        ("BAT", {"k": 0}),
        ("AttnDiv", {"attention_ratio": "half"}),
        ("BAT+erank", {"r_min": 0.8, "r_max": 0.2}),
    ]:
        with pytest.raises(PrunelabError):
            get_pruner(name, **kw)
    with pytest.raises(PrunelabError):
        get_pruner("BAT", features="clip")
    with pytest.raises(PrunelabError):
        get_pruner("AttnDiv", metric="manhattan")


# ------------------------------------------------------------------------------------------------ all methods


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("bad", [0, 37, 2.5, True, "8"])
def test_budget_errors(name, bad):
    ctx = make_context(n=36, c=8, seed=0, erank_stats=STATS)
    with pytest.raises(BudgetError):
        prune(ctx, name, bad)


def test_params_roundtrip():
    p = get_pruner("VisPruner+erank", r_min=0.1)
    assert p.params()["r_min"] == 0.1 and "important_ratio" not in p.params()
    assert get_pruner("VisionZip").params() == {"contextual": None, "key_layer": -2}


@pytest.mark.parametrize("name", ALL)
@given(n=st.integers(4, 49), tfrac=st.floats(0.0, 1.0), seed=st.integers(0, 500), clusters=st.sampled_from([0, 3]))
def test_properties(name, n, tfrac, seed, clusters):
    ctx = make_context(n=n, c=6, seed=seed, clusters=clusters, erank_stats=STATS)
    t = max(1, min(n, int(round(tfrac * n))))
    res = prune(ctx, name, t)
    again = prune(make_context(n=n, c=6, seed=seed, clusters=clusters, erank_stats=STATS), name, t)
    assert res.n_kept == t
    assert torch.equal(res.indices, again.indices)  # deterministic
    real = res.indices[res.indices >= 0]
    assert torch.unique(real).numel() == real.numel()
    assert all(0 <= i < n for i in real.tolist())
    if name == "VisionZip":
        assert res.order == "cls_first_raster" and res.indices[0] == -1 and (res.indices[1:] >= 0).all()
        n_dom = res.stats["n_dominant"] - 1
        dom, tgt = res.indices[1 : 1 + n_dom], res.indices[1 + n_dom :]
        assert torch.equal(dom, torch.sort(dom).values) and torch.equal(tgt, torch.sort(tgt).values)
        top = torch.argsort(ctx.cls_attention, descending=True, stable=True)[:n_dom]
        assert set(dom.tolist()) == set(top.tolist())
        assert res.tokens.shape == (t, ctx.features.shape[1])
        torch.testing.assert_close(res.tokens[: 1 + n_dom], torch.cat([ctx.cls_feature[None], ctx.features[dom]]))
        torch.testing.assert_close(res.tokens, again.tokens)
    else:
        assert res.order == "raster" and torch.equal(res.indices, torch.sort(res.indices).values)
        assert (res.indices >= 0).all()
    if name in MERGING:
        assert res.tokens.shape == (t, ctx.features.shape[1]) and torch.isfinite(res.tokens).all()
        torch.testing.assert_close(res.tokens, again.tokens)
        n_att = res.stats["n_attentive"]
        top = torch.argsort(ctx.cls_attention, descending=True, stable=True)[:n_att]
        assert set(top.tolist()) <= set(res.indices.tolist())
    if name in SELECTION:
        assert res.tokens is None
    if "+" in name:
        assert 0.25 <= res.stats["r_used"] <= 0.75

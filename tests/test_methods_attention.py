"""FasterVLM, PruMerge, PruMerge+ and PruMerge+fixed: known answers, reference equivalence, properties."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, strategies as st

from prunelab.errors import BudgetError, CapabilityError
from prunelab.methods import get_pruner, prune
from prunelab.methods.attention import (
    concat_heads,
    evenly_spaced,
    iqr_outlier_count,
    merge_neighbours,
    merge_neighbours_loop,
    prumerge_cls_attention,
    prumerge_spatial_samples,
)
from prunelab.methods.testing import check_result, context_from, make_context

ALL = ["FasterVLM", "PruMerge", "PruMerge+", "PruMerge+fixed"]


# ------------------------------------------------------------------------------------------------ FasterVLM


def test_fastervlm_known_answer_raster_order():
    ctx = context_from(torch.eye(5), [0.10, 0.50, 0.20, 0.05, 0.15])
    res = get_pruner("FasterVLM")(ctx, 3)
    assert res.indices.tolist() == [1, 2, 4]  # top-3 = 1 (.5), 2 (.2), 4 (.15), output in raster order
    assert res.tokens is None and res.order == "raster" and res.positions == "contiguous"
    assert res.stats["attention_mass_top"] == pytest.approx(0.85 / 1.0)


def test_fastervlm_ties_go_to_lower_index():
    ctx = context_from(torch.eye(6), [0.2, 0.1, 0.2, 0.2, 0.1, 0.2])
    assert get_pruner("FasterVLM")(ctx, 2).indices.tolist() == [0, 2]
    assert get_pruner("FasterVLM")(ctx, 5).indices.tolist() == [0, 1, 2, 3, 5]


def test_fastervlm_full_budget_keeps_everything(ctx):
    assert get_pruner("FasterVLM")(ctx, ctx.n_tokens).indices.tolist() == list(range(ctx.n_tokens))


# ------------------------------------------------------------------------------------------ PruMerge scores


def test_concat_heads_layout():
    x = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(2, 3, 4)  # (H=2, L=3, d=4)
    out = concat_heads(x)
    assert out.shape == (3, 8)
    assert torch.equal(out[1], torch.cat([x[0, 1], x[1, 1]]))


def test_prumerge_attention_is_one_concatenated_head():
    ctx = make_context(n=16, c=8, seed=4, heads=4, d_head=3)
    q, k = ctx.queries[-1].double(), ctx.keys[-1].double()
    # one head of width H*d_head: logits are the per-head dot products summed, scaled by (H*d_head)^-1/2
    logits = (q[:, 0:1, :] * k).sum(-1).sum(0) * (4 * 3) ** -0.5
    expected = torch.softmax(logits, 0)[1:]
    got = prumerge_cls_attention(ctx)
    torch.testing.assert_close(got, expected)
    assert got.sum() < 1.0  # CLS column dropped, row not renormalised
    # ... and it is not the head-averaged attention (different quantity)
    per_head = torch.softmax((q[:, 0:1, :] * k).sum(-1) * 3**-0.5, dim=-1)[:, 1:].mean(0)
    assert not torch.allclose(got, per_head)


def test_prumerge_attention_needs_last_layer_qk():
    ctx = make_context(n=16, c=8, seed=0, qk_layers=(-2,))
    with pytest.raises(CapabilityError, match="layer -1"):
        get_pruner("PruMerge")(ctx, 4)
    with pytest.raises(CapabilityError):
        get_pruner("PruMerge+fixed")(ctx, 4)


def test_iqr_outliers_known_answer():
    # Q1 = 2, Q3 = 4 (linear percentiles), upper fence 4 + 1.5*2 = 7 -> only 100 is an outlier
    assert iqr_outlier_count(torch.tensor([1.0, 2.0, 3.0, 4.0, 100.0])) == 1
    assert iqr_outlier_count(torch.tensor([1.0, 1.0, 1.0, 1.0])) == 0
    a = torch.rand(576, generator=torch.Generator().manual_seed(0)) ** 8
    q1, q3 = np.percentile(a.numpy(), [25, 75])
    assert iqr_outlier_count(a) == int((a.numpy() > q3 + 1.5 * (q3 - q1)).sum())


def test_spatial_samples_llava_scale():
    # 32 outliers out of 576: int(1/ratio) = 18, step 6 -> 0, 6, ..., 570 (< 575), minus the kept ones
    kept = torch.tensor([6, 12, 13])
    s = prumerge_spatial_samples(576, 32 / 576, kept)
    expected = [i for i in range(0, 575, 6) if i not in (6, 12)]
    assert s.tolist() == expected
    # large ratio: step floors at 1 instead of crashing
    assert prumerge_spatial_samples(6, 0.5, torch.tensor([0])).tolist() == [1, 2, 3, 4]


# ------------------------------------------------------------------------------------------------- merging


def test_merge_known_answer():
    # 4 tokens, keys on a circle: neighbours by key cosine are unambiguous
    ang = torch.tensor([0.0, 0.1, 1.5, 3.0])
    keys = torch.stack([ang.cos(), ang.sin()], 1)
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [10.0, 0.0], [0.0, 10.0]])
    a = torch.tensor([0.4, 0.3, 0.2, 0.1])
    out = merge_neighbours(x, keys, a, torch.tensor([0, 3]), n_neighbours=1)
    # token 0's nearest key is token 1; token 3's nearest key is token 2
    torch.testing.assert_close(out, torch.tensor([[1.0, 0.3], [2.0, 10.0]]))
    out2 = merge_neighbours(x, keys, a, torch.tensor([0]), n_neighbours=2)  # neighbours 1 and 2
    torch.testing.assert_close(out2, torch.tensor([[1.0 + 2.0, 0.3]]))


@given(n=st.integers(2, 60), seed=st.integers(0, 10_000), k=st.integers(1, 40), frac=st.floats(0.01, 1.0))
def test_vectorised_merge_equals_loop(n, seed, k, frac):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=g)
    keys = torch.nn.functional.normalize(torch.randn(n, 7, generator=g), dim=-1)
    a = torch.rand(n, generator=g)
    kept = torch.randperm(n, generator=g)[: max(1, int(n * frac))]
    torch.testing.assert_close(
        merge_neighbours(x, keys, a, kept, k), merge_neighbours_loop(x, keys, a, kept, k), rtol=1e-5, atol=1e-5
    )


def _prumerge_reference(ctx, plus):
    """The original algorithm written out directly (batch-free), as an end-to-end oracle."""
    q = concat_heads(ctx.queries[-1]).double()
    k = concat_heads(ctx.keys[-1]).double()
    n = ctx.n_tokens
    a = torch.softmax(k @ q[0] * q.shape[1] ** -0.5, 0)[1:]
    av = a.float().numpy()
    q1, q3 = np.percentile(av, 25), np.percentile(av, 75)
    ratio = max(int((av > q3 + 1.5 * (q3 - q1)).sum()), 1) / n
    order = sorted(range(n), key=lambda i: (-float(a[i]), i))
    idx = order[: max(int(n * ratio), 1)]
    if plus:
        step = max(1, int(int(1 / ratio) / 3))
        idx = idx + [i for i in range(0, n - 1, step) if i not in idx]
    kn = torch.nn.functional.normalize(k[1:].float(), dim=-1)
    x = ctx.features.float()
    rows = []
    for i in idx:
        others = [j for j in range(n) if j != i]
        sims = kn[others] @ kn[i]
        nb = [others[t] for t in torch.topk(sims, min(32, n - 1)).indices.tolist()]
        rows.append(x[i] + sum(float(a[j]) * x[j] for j in nb))
    rest = [j for j in range(n) if j not in idx]
    extra = sum((float(a[j]) * x[j] for j in rest), torch.zeros(x.shape[1]))
    return idx, torch.stack(rows + [extra])


@pytest.mark.parametrize("plus", [False, True])
@pytest.mark.parametrize("seed", range(6))
def test_prumerge_matches_reference(plus, seed):
    # peaked attention -> a handful of IQR outliers, as with real CLIP
    ctx = make_context(n=64, c=12, seed=seed, d_head=16)
    ctx.queries[-1] = ctx.queries[-1] * 3.0
    res = get_pruner("PruMerge+" if plus else "PruMerge")(ctx, 10)
    idx, tokens = _prumerge_reference(ctx, plus)
    assert res.indices.tolist() == idx + [-1]
    torch.testing.assert_close(res.tokens, tokens, rtol=1e-4, atol=1e-5)
    assert res.token_space == "vision" and res.order == "attention"
    assert res.stats["budget_ignored"] is True


def test_prumerge_output_is_attention_ordered_and_adaptive():
    counts = set()
    for seed in range(8):
        ctx = make_context(n=100, c=8, seed=seed, d_head=16)
        ctx.queries[-1] = ctx.queries[-1] * (1 + seed)
        res = get_pruner("PruMerge")(ctx, 50)
        a = prumerge_cls_attention(ctx)
        k = res.stats["n_attention"]
        assert res.n_kept == k + 1 == res.stats["n_output"]
        assert k == max(iqr_outlier_count(a), 1)
        scores = a[res.indices[:k]]
        assert bool((scores[1:] <= scores[:-1]).all())
        counts.add(res.n_kept)
    assert len(counts) > 1  # the count follows the image, not the budget


def test_prumerge_plus_adds_spatial_after_attention():
    ctx = make_context(n=144, c=8, seed=2, d_head=16)
    ctx.queries[-1] = ctx.queries[-1] * 4
    res = get_pruner("PruMerge+")(ctx, 10)
    k, s = res.stats["n_attention"], res.stats["n_spatial"]
    assert res.n_kept == k + s + 1
    spatial = res.indices[k : k + s]
    assert bool((spatial[1:] > spatial[:-1]).all())
    assert set(spatial.tolist()).isdisjoint(res.indices[:k].tolist())
    check_result(ctx, res, 10, exact=False)


# ------------------------------------------------------------------------------------------ PruMerge+fixed


def test_evenly_spaced():
    c = torch.arange(10, 20)
    assert evenly_spaced(c, 5).tolist() == [10, 12, 14, 16, 18]
    assert evenly_spaced(c, 10).tolist() == list(range(10, 20))
    assert evenly_spaced(c, 0).tolist() == []
    with pytest.raises(ValueError):
        evenly_spaced(c, 11)


def test_prumerge_plus_fixed_known_counts():
    ctx = make_context(n=576 // 16, c=8, seed=1)  # 36 patches
    res = get_pruner("PruMerge+fixed")(ctx, 16)
    assert res.n_kept == 16
    assert res.stats["n_attention"] == 4 and res.stats["n_spatial"] == 11
    assert res.indices[-1] == -1
    a = prumerge_cls_attention(ctx)
    assert res.indices[:4].tolist() == torch.sort(a, descending=True).indices[:4].tolist()
    # extra token = attention-weighted sum of the tokens kept by neither rule
    kept = res.indices[:-1]
    mask = torch.ones(36, dtype=torch.bool)
    mask[kept] = False
    torch.testing.assert_close(res.tokens[-1], (ctx.features[mask] * a[mask].float().unsqueeze(1)).sum(0))
    res2 = get_pruner("PruMerge+fixed", extra_token=False, k_att_fraction=0.5)(ctx, 16)
    assert res2.n_kept == 16 and -1 not in res2.indices.tolist() and res2.stats["n_attention"] == 8


def test_prumerge_plus_fixed_edges():
    ctx = make_context(n=9, c=4, seed=0)
    one = get_pruner("PruMerge+fixed")(ctx, 1)
    assert one.indices.tolist() == [-1] and one.n_kept == 1
    a = prumerge_cls_attention(ctx)
    torch.testing.assert_close(one.tokens[0], (ctx.features * a.float().unsqueeze(1)).sum(0))
    full = get_pruner("PruMerge+fixed", extra_token=False)(ctx, 9)
    assert sorted(full.indices.tolist()) == list(range(9))
    two = get_pruner("PruMerge+fixed")(ctx, 2)
    assert two.stats["n_attention"] == 1 and two.n_kept == 2


@given(n=st.integers(2, 50), seed=st.integers(0, 10_000), data=st.data(), frac=st.floats(0.0, 1.0), extra=st.booleans())
def test_prumerge_plus_fixed_properties(n, seed, data, frac, extra):
    t = data.draw(st.integers(1, n))
    ctx = make_context(n=n, c=6, seed=seed)
    p = get_pruner("PruMerge+fixed", k_att_fraction=frac, extra_token=extra)
    res = p(ctx, t)
    check_result(ctx, res, t)
    assert res.stats["n_attention"] + res.stats["n_spatial"] + int(extra) == t
    again = p(ctx, t)
    assert torch.equal(res.indices, again.indices) and torch.equal(res.tokens, again.tokens)


# ------------------------------------------------------------------------------------- shared properties


@given(n=st.integers(2, 60), seed=st.integers(0, 10_000), data=st.data())
def test_fastervlm_properties(n, seed, data):
    t = data.draw(st.integers(1, n))
    ctx = make_context(n=n, c=6, seed=seed)
    res = prune(ctx, "FasterVLM", t)
    check_result(ctx, res, t)
    # every kept score >= every dropped score
    mask = torch.zeros(n, dtype=torch.bool)
    mask[res.indices] = True
    if t < n:
        assert ctx.cls_attention[mask].min() >= ctx.cls_attention[~mask].max()
    assert torch.equal(res.indices, prune(ctx, "FasterVLM", t).indices)


@pytest.mark.parametrize("name", ["PruMerge", "PruMerge+"])
@given(n=st.integers(3, 60), seed=st.integers(0, 10_000), sharp=st.floats(0.5, 5.0))
def test_adaptive_prumerge_properties(name, n, seed, sharp):
    ctx = make_context(n=n, c=6, seed=seed)
    ctx.queries[-1] = ctx.queries[-1] * sharp
    res = get_pruner(name)(ctx, 1)
    check_result(ctx, res, 1, exact=False)
    assert res.indices[-1] == -1 and (res.indices[:-1] >= 0).all()
    assert 2 <= res.n_kept <= n + 1
    again = get_pruner(name)(ctx, 1)
    assert torch.equal(res.indices, again.indices) and torch.equal(res.tokens, again.tokens)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("bad", [0, -3, 37, 2.5, True, "8", None])
def test_bad_budget_raises(name, bad, ctx):
    with pytest.raises(BudgetError):
        get_pruner(name)(ctx, bad)


def test_declared_policies():
    for name in ALL:
        p = get_pruner(name)
        assert p.family == "attention" and p.stage == "pre_llm" and p.positions == "contiguous"
        assert p.adaptive == (name in ("PruMerge", "PruMerge+"))
        assert p.order == ("raster" if name == "FasterVLM" else "attention")
        assert p.source


def test_prune_attaches_stats_for_merged_tokens(ctx):
    res = prune(ctx, "PruMerge+fixed", 8)
    assert res.stats["n_kept"] == 8 and "erank_kept_projected" in res.stats
    assert res.output_tokens(ctx, "projected").shape == (8, ctx.projected.shape[1])


def test_catalog_lists_every_method_with_its_declared_policies():
    from prunelab.methods import available_methods, catalog, get_pruner

    cat = catalog()
    assert list(cat["method"]) == [get_pruner(n).name for n in available_methods()]
    row = cat.set_index("method").loc["FasterVLM"]
    assert row["family"] == "attention" and row["stage"] == "pre_llm" and not row["adaptive"]
    assert "FasterVLM" in row["source"]
    assert set(catalog(stage="in_llm")["stage"]) == {"in_llm"}
    assert catalog(["DivPrune"]).loc[0, "features"] == "projected"

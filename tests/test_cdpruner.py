"""CDPruner: greedy DPP MAP (known answers + determinant oracle), relevance, properties, adapter text path."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, strategies as st

from prunelab.errors import BudgetError, CapabilityError, UnknownNameError
from prunelab.methods.base import Pruner, PruneResult, get_pruner, prune
from prunelab.methods.testing import context_from
from prunelab.methods.text_conditioned import dpp_greedy_map, relevance


def greedy_by_determinants(kernel, k):
    """Textbook greedy MAP: add the item maximising det(L_S) at each step (ties -> lowest index)."""
    chosen = []
    for _ in range(k):
        best, best_det = None, -float("inf")
        for i in range(kernel.shape[0]):
            if i in chosen:
                continue
            s = chosen + [i]
            det = float(torch.linalg.det(kernel[s][:, s].double()))
            if det > best_det + 1e-12:
                best, best_det = i, det
        chosen.append(best)
    return chosen


def test_identity_kernel_picks_in_index_order():
    assert dpp_greedy_map(torch.eye(5), 3).tolist() == [0, 1, 2]


def test_duplicate_is_avoided():
    v = torch.tensor([[1.0, 0, 0], [1.0, 0, 0], [0, 1.0, 0], [0.6, 0.8, 0]])
    kernel = v @ v.T
    picks = dpp_greedy_map(kernel, 2).tolist()
    assert picks == [0, 2]  # token 1 duplicates token 0: zero gain; 2 is orthogonal to 0
    # Asking for all 4: the rank-2 kernel is exhausted after 2 picks, the rest still fill the budget uniquely.
    assert sorted(dpp_greedy_map(kernel, 4).tolist()) == [0, 1, 2, 3]


@pytest.mark.parametrize("seed", range(5))
def test_matches_determinant_oracle(seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(9, 6, generator=g)
    r = torch.rand(9, generator=g) + 0.1
    kernel = r[:, None] * (x @ x.T) * r[None, :]
    assert dpp_greedy_map(kernel, 5).tolist() == greedy_by_determinants(kernel, 5)
    assert dpp_greedy_map(kernel, 5, precision="float64").tolist() == greedy_by_determinants(kernel, 5)


def test_relevance_known_answer():
    tokens = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    text = torch.tensor([[2.0, 0.0]])
    r = relevance(tokens, text, negate=False, offset=0.0)
    assert torch.allclose(r, torch.tensor([1.0, 0.0, 2**-0.5]))  # cos = 1, 0, 0.707 -> min-max
    rn = relevance(tokens, text, negate=True, offset=0.0)
    assert torch.allclose(rn, 1 - r)
    rt = relevance(tokens, torch.tensor([[1.0, 0.0], [0.0, 1.0]]), pooling="tokens", negate=False, offset=0.0)
    assert torch.allclose(rt, torch.tensor([0.0, 0.0, 1.0]), atol=1e-7)  # per-token cosines averaged: .5, .5, .707
    # default: the source's (r - min + 1e-6) / (max - min); here the span is 1
    assert torch.equal(relevance(tokens, text, negate=False), r + 1e-6)
    with pytest.raises(UnknownNameError):
        relevance(tokens, text, pooling="max")


def _official_cdpruner(features, image_embeds, text_embeds, budget):
    """Transcription of the source's selection, batch of one: Theia-4869/CDPruner @ 9541616
    ``llava/model/llava_arch.py::encode_images`` lines 151-183 (``features``: projected tokens)."""
    f = features[None]
    n_batch, n = f.shape[:2]
    fn = (f / f.norm(dim=-1, keepdim=True)).float()
    similarity = torch.matmul(fn, fn.transpose(1, 2))  # l. 153
    ie = image_embeds[None] / image_embeds[None].norm(dim=-1, keepdim=True)
    te = text_embeds / text_embeds.norm(dim=-1, keepdim=True)
    rel = (-torch.matmul(ie, te.t())).mean(dim=-1)  # l. 158-159
    rel = (rel - rel.min() + 1e-6) / (rel.max() - rel.min())  # l. 160
    kernel = rel.unsqueeze(2) * similarity * rel.unsqueeze(1)  # l. 167
    rows = torch.zeros((budget, n_batch, n))  # l. 170-181: float32
    gains = torch.diagonal(kernel, dim1=1, dim2=2).clone()
    picks = torch.empty((budget, n_batch), dtype=torch.long)
    b = torch.arange(n_batch)
    for i in range(budget):
        j = torch.argmax(gains, dim=-1)
        picks[i] = j
        e = kernel[b, j] - torch.einsum("tb,tbn->bn", rows[:i, b, j], rows[:i])
        e = e / torch.sqrt(gains[b, j]).unsqueeze(-1)
        rows[i, :, :] = e
        gains -= torch.square(e)
        gains[b, j] = -float("inf")
    return torch.sort(picks.t()).values[0]


def _low_rank_context(seed, n=576, d=256, rank=24):
    """Projected tokens of rank ``rank`` plus noise: the greedy's late gains are small, so float32 vs float64
    rounding (and the relevance offset) decide between near-tied tokens, as on some real images."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, rank, generator=g) @ torch.randn(rank, d, generator=g) + 0.05 * torch.randn(n, d, generator=g)
    ctx = context_from(torch.randn(n, 8, generator=g), torch.rand(n, generator=g), projected=z)
    ctx.text_embeds = torch.randn(3, d, generator=g)
    return ctx


@pytest.mark.parametrize("seed", range(4))
def test_selects_bitwise_like_the_official_encode_images(seed):
    """Same projected tokens and relevance inputs as the source -> the source's kept set, exactly. The text
    rows play CLIP's text segments (``pooling="tokens"``) or their mean is the one segment (``"mean"``)."""
    ctx = _low_rank_context(seed)
    z, text = ctx.space("projected"), ctx.text_embeds
    for budget in (64, 192):
        assert torch.equal(
            get_pruner("CDPruner", pooling="tokens")(ctx, budget).indices, _official_cdpruner(z, z, text, budget)
        ), (seed, budget)
        assert torch.equal(
            get_pruner("CDPruner", pooling="mean")(ctx, budget).indices,
            _official_cdpruner(z, z, text.mean(0, keepdim=True), budget),
        ), (seed, budget)


def test_float64_option_is_the_earlier_rule():
    """``precision="float64"``: no relevance offset, float64 greedy (the earlier behaviour, kept as an option);
    on these inputs it differs from the source's float32 selection for some seeds."""
    differs = 0
    for seed in range(4):
        ctx = _low_rank_context(seed)
        z = ctx.space("projected").float()
        zn = z / z.norm(dim=-1, keepdim=True)
        r = relevance(z, ctx.text_embeds, pooling="tokens", offset=0.0)
        kernel = r[:, None] * (zn @ zn.T) * r[None, :]
        expect = torch.sort(dpp_greedy_map(kernel, 192, precision="float64")).values
        got = get_pruner("CDPruner", pooling="tokens", precision="float64")(ctx, 192).indices
        assert torch.equal(got, expect)
        differs += not torch.equal(got, get_pruner("CDPruner", pooling="tokens")(ctx, 192).indices)
    assert differs >= 1
    with pytest.raises(UnknownNameError):
        get_pruner("CDPruner", precision="float16")
    with pytest.raises(UnknownNameError):
        dpp_greedy_map(torch.eye(3), 2, precision="half")


def _with_text(ctx, seed=0):
    g = torch.Generator().manual_seed(seed)
    ctx.text_embeds = torch.randn(5, ctx.space("projected").shape[1], generator=g)
    return ctx


@given(st.integers(1, 36), st.integers(0, 5), st.booleans())
def test_properties(ctx_factory, budget, seed, negate):
    ctx = _with_text(ctx_factory(n=36, c=16, seed=seed), seed)
    res = get_pruner("CDPruner", negate=negate)(ctx, budget)
    idx = res.indices.tolist()
    assert len(idx) == budget == len(set(idx))
    assert idx == sorted(idx) and all(0 <= i < 36 for i in idx)
    assert res.order == "raster" and res.positions == "contiguous"
    again = get_pruner("CDPruner", negate=negate)(ctx, budget)
    assert torch.equal(res.indices, again.indices)


def test_equals_explicit_kernel_selection(ctx):
    ctx = _with_text(ctx)
    z = ctx.space("projected").float()
    zn = z / z.norm(dim=-1, keepdim=True)
    r = relevance(z, ctx.text_embeds)
    expect = sorted(greedy_by_determinants(r[:, None] * (zn @ zn.T) * r[None, :], 6))
    assert prune(ctx, "CDPruner", 6).indices.tolist() == expect


def test_text_changes_selection(ctx):
    picks = set()
    for seed in range(4):
        picks.add(tuple(get_pruner("CDPruner")(_with_text(ctx, seed), 8).indices.tolist()))
    assert len(picks) > 1


def test_bad_inputs(ctx):
    with pytest.raises(CapabilityError) as e:
        prune(ctx, "CDPruner", 4)  # no text_embeds
    assert "\n" not in str(e.value)
    ctx.text_embeds = torch.randn(3, 5)
    with pytest.raises(CapabilityError):
        prune(ctx, "CDPruner", 4)
    with pytest.raises(BudgetError):
        get_pruner("CDPruner", theta=1.5)
    with pytest.raises(BudgetError):
        dpp_greedy_map(torch.eye(3), 4)


class SpyText(Pruner):
    family = "test"
    requires = ("projected", "text")

    def __init__(self):
        super().__init__()
        self.seen = None

    def select(self, ctx, budget):
        self.seen = ctx.text_embeds.clone()
        return PruneResult(indices=torch.arange(budget))


def test_adapter_fills_text_with_llm_embeddings_of_the_instruction():
    from prunelab.models.adapter import LlavaAdapter
    from prunelab.models.parts import find_image_span
    from prunelab.models.tiny import tiny_inputs, tiny_llava

    model = tiny_llava("dinov2", seed=1)
    ad = LlavaAdapter(model)
    ids, pv = tiny_inputs(model, seed=2, suffix=9)
    spy = SpyText()
    ad.run(ids, pv, spy, 8, max_new_tokens=1)
    start, n = find_image_span(ids[0], model.config.image_token_id)
    assert torch.allclose(spy.seen, model.get_input_embeddings()(ids[0, start + n :]).float())
    out = ad.run(ids, pv, "CDPruner", 12, max_new_tokens=2)
    assert out.records[0]["n_kept"] == 12 and 0 <= out.records[0]["relevance_kept_mean"] <= 1
    other, _ = tiny_inputs(model, seed=3, suffix=9)
    other = torch.cat([ids[:, : start + n], other[:, start + n :]], dim=1)
    picks = {tuple(ad.run(x, pv, "CDPruner", 12, max_new_tokens=1).records[0]["kept_indices"]) for x in (ids, other)}
    assert len(picks) == 2  # same image, different question -> different tokens


def test_itertools_oracle_small():
    """Exhaustive check on a 6-token kernel: the greedy's first two picks are the best pair containing the
    best single item."""
    g = torch.Generator().manual_seed(11)
    x = torch.randn(6, 4, generator=g)
    kernel = x @ x.T
    first = int(torch.argmax(torch.diagonal(kernel)))
    pairs = [(first, j) for j in range(6) if j != first]
    best = max(pairs, key=lambda p: float(torch.linalg.det(kernel[list(p)][:, list(p)])))
    assert dpp_greedy_map(kernel, 2).tolist() == list(best)
    assert len(list(itertools.combinations(range(6), 2))) == 15

"""The speed-ups behind the selection benchmark change no selection.

AgilePruner computes cosine-distance rows lazily, in blocks, with a rounding certificate; it must select what the
straightforward pass over the full ``N x N`` matrix (:func:`threshold_greedy`) selects. (VisPruner's gathered
similarities were dropped: not bit-exact at width 1024; it is now checked against the source in
``tests/test_methods_hybrid.py``.)
"""

from __future__ import annotations

import math

import pytest
import torch

from prunelab.methods.adaptive import AgilePruner, cosine_distances, threshold_greedy
from prunelab.methods.testing import context_from, make_context


def _reference_agile(p: AgilePruner, ctx, budget: int) -> torch.Tensor:
    """AgilePruner's selection written directly on the full distance matrix (relax schedule + attention fill)."""
    rho = p.complexity(ctx)[0]
    dist = cosine_distances(ctx.space(p.features))
    ranking = torch.sort(ctx.cls_attention.double(), descending=True, stable=True).indices
    factor, n_relax = 1.0, 0
    while True:
        sel, _, _ = threshold_greedy(
            dist,
            ranking,
            budget,
            rho,
            tau_scale=p.tau_scale * factor,
            tau_max=p.tau_max * factor,
            order_mode=p.order_mode,
        )
        if len(sel) >= budget or p.fill == "attention":
            break
        n_relax += 1
        factor = factor / 2 if n_relax <= p.max_relax else 0.0
    extra = [i for i in ranking.tolist() if i not in set(sel)][: budget - len(sel)]
    return torch.sort(torch.tensor(sel + extra, dtype=torch.long)).values


@pytest.mark.parametrize("tau_max", [0.05, 0.1, 0.4, 1.2])
@pytest.mark.parametrize("fill", ["attention", "relax"])
@pytest.mark.parametrize("seed", [0, 1])
def test_agilepruner_lazy_rows_select_like_full_matrix(tau_max, fill, seed):
    ctx = make_context(n=576, c=96, seed=seed, d=None, clusters=40, erank_stats={"mean": 30.0})
    p = AgilePruner(tau_max=tau_max, fill=fill, order_mode="selection_index" if seed else "attention_rank")
    for budget in (16, 64, 192):
        assert torch.equal(p.select(ctx, budget).indices, _reference_agile(p, ctx, budget))


def test_agilepruner_too_close_to_call_uses_the_exact_matrix():
    # Token 1 sits at cosine distance exactly 0.1 from token 0 (cos = 0.9); with tau = tau_max = 0.1 the strict
    # comparison d < tau decides whether it is removed, so the blockwise rows must defer to the full matrix.
    c = 0.9
    feats = torch.tensor(
        [[1.0, 0.0, 0.0], [c, math.sqrt(1 - c * c), 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0]], dtype=torch.float64
    )
    ctx = context_from(feats, torch.tensor([0.4, 0.3, 0.2, 0.1]))
    p = AgilePruner(tau_max=float(cosine_distances(feats)[0, 1]), tau_scale=1.0, erank_avg=1e-6)
    assert torch.equal(p.select(ctx, 3).indices, _reference_agile(p, ctx, 3))

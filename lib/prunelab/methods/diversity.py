"""Diversity-family pre-LLM pruners: DivPrune and farthest-point sampling (FPS).

Both solve the Max–Min Diversity Problem greedily with the shared incremental core of
:mod:`prunelab.methods._greedy` (one running min-distance vector, O(T·N) after the distance matrix); they differ
only in the first pick and in which features/metric are compared (methods-spec §2.5, §2.6).
"""

from __future__ import annotations

import time

import torch

from prunelab.errors import UnknownNameError
from prunelab.methods._greedy import distance_matrix, divprune_first_pick, maxmin_greedy, maxmin_greedy_textbook
from prunelab.methods.base import FEATURE_SPACES, Pruner, PruneResult, VisualContext, register


def _check_space(name: str) -> str:
    if name not in FEATURE_SPACES:
        raise UnknownNameError(f"unknown feature space {name!r}; known: {', '.join(FEATURE_SPACES)}")
    return name


def _check_metric(name: str) -> str:
    if name not in ("cosine", "l2"):
        raise UnknownNameError(f"unknown distance metric {name!r}; known: cosine, l2")
    return name


@register("DivPrune")
class DivPrune(Pruner):
    """DivPrune (CVPR'25, arXiv 2503.02175): greedy Max–Min diversity selection of ``T`` tokens.

    Source: ``vbdi/divprune`` ``LLaVA/llava/model/llava_arch.py::pairwise_cosine_similarity`` and ``::DivPrune``
    (called from the ``LAYER_INDEX=='0'`` block of ``prepare_inputs_labels_for_multimodal``).

    * distance: cosine distance ``1 - cos`` in float32 on ``features`` (default ``"projected"``: the rows the
      LLM receives, as the original, which slices them out of the input embeddings; ``"vision"`` = tower
      layer -2 features);
    * first pick: the token whose nearest other token is farthest (:func:`~prunelab.methods._greedy.divprune_first_pick`);
    * then repeatedly the token with the largest min-distance to the selected set. The incremental update
      selects exactly what the original's O(T²·N) recomputation selects (ties -> lowest index in both);
    * kept indices sorted (raster order), contiguous positions.
    """

    family = "diversity"
    requires = ("projected",)
    order = "raster"
    source = "arXiv 2503.02175; vbdi/divprune LLaVA/llava/model/llava_arch.py::DivPrune"
    paper_name = "DivPrune"

    def __init__(self, features: str = "projected"):
        super().__init__()
        self.features = _check_space(features)

    def select(self, ctx: VisualContext, budget: int) -> PruneResult:
        dist = distance_matrix(ctx.space(self.features), "cosine")
        first = divprune_first_pick(dist)
        order = maxmin_greedy(dist, budget, [first])
        return PruneResult(indices=torch.sort(order).values, order="raster", stats={"first_pick": first})


FPS_SEEDS = ("attention", "index0", "random", "divprune")


@register("FPS")
class FPS(Pruner):
    """FPSPruner, AgilePruner's diversity baseline: farthest-point sampling. [RECONSTRUCTION — no code]

    Methods-spec §2.6: farthest-point sampling is the same greedy max–min as DivPrune, so only the seed point,
    the metric and the feature space are free. Defaults: DivPrune's space and metric (``"projected"``,
    ``"cosine"``) and seed = the patch with the highest [CLS] attention (``seed="attention"``; ties -> lowest
    index). Other seeds: ``"index0"`` (patch 0), ``"random"`` (uniform, ``random_seed``-seeded generator, so
    deterministic), ``"divprune"`` (DivPrune's first pick, making FPS == DivPrune for the cosine metric).
    Kept indices sorted (raster order).
    """

    family = "diversity"
    requires = ("projected", "attention")
    order = "raster"
    source = "[RECONSTRUCTION] FPSPruner of AgilePruner (arXiv 2603.01236), methods-spec §2.6"
    paper_name = "FPSPruner"

    def __init__(
        self, metric: str = "cosine", features: str = "projected", seed: str = "attention", random_seed: int = 0
    ):
        super().__init__()
        self.metric = _check_metric(metric)
        self.features = _check_space(features)
        if seed not in FPS_SEEDS:
            raise UnknownNameError(f"unknown FPS seed rule {seed!r}; known: {', '.join(FPS_SEEDS)}")
        self.seed = seed
        self.random_seed = int(random_seed)

    def first_point(self, ctx: VisualContext, dist: torch.Tensor) -> int:
        if self.seed == "attention":
            return int(torch.sort(ctx.cls_attention.double(), descending=True, stable=True).indices[0])
        if self.seed == "index0":
            return 0
        if self.seed == "random":
            g = torch.Generator().manual_seed(self.random_seed)
            return int(torch.randint(0, ctx.n_tokens, (1,), generator=g))
        return divprune_first_pick(dist)

    def select(self, ctx: VisualContext, budget: int) -> PruneResult:
        dist = distance_matrix(ctx.space(self.features), self.metric)
        first = self.first_point(ctx, dist)
        order = maxmin_greedy(dist, budget, [first])
        return PruneResult(indices=torch.sort(order).values, order="raster", stats={"first_pick": first})


def compare_greedy_speed(
    n: int = 576,
    d: int = 4096,
    budgets: tuple[int, ...] = (64, 128, 192),
    repeats: int = 3,
    seed: int = 0,
    device: str = "cpu",
) -> list[dict]:
    """Time DivPrune's selection with the incremental greedy vs the textbook recomputation (same picks).

    Builds seeded random ``(n, d)`` tokens, computes the cosine distance matrix once (timed separately, it is
    shared by both), then for each budget times both greedy variants (best of ``repeats``) and checks that
    they select the same tokens. Returns one row per budget: ``{"n", "d", "budget", "distance_s",
    "incremental_s", "textbook_s", "speedup", "identical"}``.
    """
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g).to(device)

    def best(fn):
        times, out = [], None
        for _ in range(max(1, repeats)):
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            out = fn()
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        return min(times), out

    t_dist, dist = best(lambda: distance_matrix(x, "cosine"))
    first = divprune_first_pick(dist)
    rows = []
    for t in budgets:
        t_inc, a = best(lambda t=t: maxmin_greedy(dist, t, [first]))
        t_txt, b = best(lambda t=t: maxmin_greedy_textbook(dist, t, [first]))
        rows.append(
            {
                "n": n,
                "d": d,
                "budget": int(t),
                "distance_s": t_dist,
                "incremental_s": t_inc,
                "textbook_s": t_txt,
                "speedup": t_txt / t_inc if t_inc > 0 else float("inf"),
                "identical": bool(torch.equal(a.cpu(), b.cpu())),
            }
        )
    return rows


__all__ = ["DivPrune", "FPS", "FPS_SEEDS", "compare_greedy_speed"]

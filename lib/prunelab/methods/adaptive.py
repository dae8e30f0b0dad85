"""AgilePruner: attention-ordered selection with an image-adaptive similarity threshold (methods-spec §2.14).

The paper's code is not released (``cvsp-lab/AgilePruner`` README: "coming soon"); this is a
**[RECONSTRUCTION]** from the project page (``docs/index.html``, ``adaptive_thresholding.png``). Verified facts:
tokens are visited in descending [CLS]-attention order; a visited token is selected and every remaining
candidate whose cosine distance to it is below ``τ`` is removed; ``τ_i = order_i · (erank_input / erank_avg) ·
0.01``, capped at ``τ_max``; complex images (high input erank) get larger thresholds (more diversity). Every
choice the page leaves open is a parameter of :class:`AgilePruner` (methods-spec §7).
"""
from __future__ import annotations

import math
from typing import Iterable

import torch

from prunelab.errors import CapabilityError, UnknownNameError
from prunelab.methods.base import FEATURE_SPACES, Pruner, PruneResult, VisualContext, register
from prunelab.metrics import erank

ORDER_MODES = ("attention_rank", "selection_index")
FILL_RULES = ("attention", "relax")


def input_erank(
    x: torch.Tensor, *, center: bool = False, row_normalize: bool = False, spectrum: str = "singular"
) -> float:
    """Effective rank of one image's ``(N, C)`` input token matrix (:func:`prunelab.metrics.erank`; default
    un-centred, un-normalised, singular-value spectrum as methods-spec §3.1)."""
    return float(erank(x, center=center, row_normalize=row_normalize, spectrum=spectrum))


def calibrate_erank(
    contexts_or_features: Iterable,
    *,
    features: str = "vision",
    center: bool = False,
    row_normalize: bool = False,
    spectrum: str = "singular",
) -> dict[str, float]:
    """Dataset statistics of the input erank: ``{"mean", "min", "max", "std", "n"}``.

    ``contexts_or_features`` is an iterable of :class:`VisualContext` (their feature space ``features`` is used)
    or of ``(N, C)`` tensors. Use the **same** erank options as the :class:`AgilePruner` that consumes the stats
    (``erank_features``, ``erank_center``, ``erank_row_normalize``, ``erank_spectrum``); the result goes into
    ``VisualContext.erank_stats`` or the pruner's ``erank_avg``. ``std`` is the population standard deviation.
    """
    vals = []
    for item in contexts_or_features:
        x = item.space(features) if isinstance(item, VisualContext) else torch.as_tensor(item)
        v = input_erank(x, center=center, row_normalize=row_normalize, spectrum=spectrum)
        if not math.isfinite(v):
            raise CapabilityError("an image has an all-zero feature matrix (erank is nan); drop it from the calibration set")
        vals.append(v)
    if not vals:
        raise CapabilityError("calibrate_erank got no images; pass at least one context or (N, C) feature tensor")
    t = torch.tensor(vals, dtype=torch.float64)
    return {
        "mean": float(t.mean()),
        "min": float(t.min()),
        "max": float(t.max()),
        "std": float(t.std(unbiased=False)),
        "n": int(t.numel()),
    }


def cosine_distances(x: torch.Tensor) -> torch.Tensor:
    """``1 - cos`` between L2-normalised rows, float64, clamped at 0 so identical rows are at distance exactly
    0 (never "below" a zero threshold through round-off)."""
    xf = x.double()
    xn = xf / xf.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return (1.0 - xn @ xn.T).clamp_min(0.0)


def threshold_greedy(
    dist: torch.Tensor,
    ranking: torch.Tensor,
    budget: int,
    rho: float,
    *,
    tau_scale: float = 0.01,
    tau_max: float = 0.1,
    order_mode: str = "attention_rank",
) -> tuple[list[int], list[float], int]:
    """One pass of AgilePruner's greedy (no fill).

    Visits ``ranking`` (descending attention); a visited token that has not been removed is selected, and —
    unless the budget is now full — every still-available token ``j`` with ``dist[i, j] < τ_i`` is removed,
    ``τ_i = min(τ_max, order_i · rho · tau_scale)`` with ``order_i`` the 1-based attention rank of ``i``
    (``"attention_rank"``) or its 1-based selection index (``"selection_index"``).

    Returns ``(selected in selection order, τ of each selected token, number of tokens removed)``.
    """
    n = dist.shape[0]
    available = torch.ones(n, dtype=torch.bool)
    selected: list[int] = []
    taus: list[float] = []
    removed = 0
    for rank, i in enumerate(ranking.tolist(), start=1):
        if len(selected) >= budget:
            break
        if not available[i]:
            continue
        available[i] = False
        selected.append(i)
        order_i = rank if order_mode == "attention_rank" else len(selected)
        tau = min(tau_max, order_i * rho * tau_scale)
        taus.append(tau)
        if len(selected) >= budget:
            break
        drop = available & (dist[i] < tau)
        removed += int(drop.sum())
        available &= ~drop
    return selected, taus, removed


@register("AgilePruner")
class AgilePruner(Pruner):
    """AgilePruner (ICLR 2026, arXiv 2603.01236): adaptive similarity-threshold pruning. [RECONSTRUCTION]

    Source: project page ``cvsp-lab/AgilePruner`` ``docs/index.html`` + ``adaptive_thresholding.png`` (no code
    released); pipeline FasterVLM-based (the README credits LLaVA and FasterVLM). Methods-spec §2.14:

    1. rank patches by ``ctx.cls_attention`` (FasterVLM's score), descending, ties -> lower index;
    2. cosine distances between L2-normalised ``features`` rows (default ``"vision"`` = tower layer -2, as
       VisPruner; option ``"projected"``);
    3. ``ρ = e_in / e_avg``: ``e_in`` = erank of this image's ``erank_features`` rows (default: vision,
       un-centred, singular spectrum; options ``erank_center``, ``erank_row_normalize``, ``erank_spectrum``),
       ``e_avg`` = the ``erank_avg`` parameter if given, else ``ctx.erank_stats["mean"]`` (from
       :func:`calibrate_erank`), else :class:`CapabilityError`;
    4. greedy :func:`threshold_greedy` with ``τ_i = min(τ_max, order_i · ρ · tau_scale)``, ``tau_scale=0.01``
       (the page's constant), ``order_mode`` ``"attention_rank"`` (default) or ``"selection_index"``; stop at ``T``;
    5. if candidates run out before ``T`` [UNVERIFIED]: ``fill="attention"`` adds the highest-attention removed
       tokens; ``fill="relax"`` halves every ``τ`` (``tau_max`` and ``tau_scale``) and restarts, up to
       ``max_relax`` times, then uses ``τ = 0`` (which is FasterVLM and always fills ``T``);
    6. kept indices in raster order (pure selection, contiguous positions). Exactly ``T`` tokens.

    Default ``tau_max = 0.1`` [RECONSTRUCTION]: the page gives no value. With ``ρ ≈ 1`` the schedule
    ``order_i·ρ·0.01`` passes 0.1 at rank 10, so for budgets of 32–192 ``τ_max`` *is* the threshold for all but
    the first ~10/ρ selected tokens. Cosine distance 0.1 means cos > 0.9, i.e. only near-duplicates of an
    already selected token are removed: the method stays attention-led (the page's "high-attention tokens are
    selected first") while de-duplicating; larger values push it towards diversity-style selection.

    Limits, by construction: ``tau_max = 0`` (or ``tau_scale = 0``) removes nothing and returns exactly
    FasterVLM's selection. ``τ`` larger than every distance (> 2) makes the first pick remove all others; with
    ``fill="attention"`` the fill then restores the top-``T`` by attention, i.e. FasterVLM again; with
    ``fill="relax"`` τ is halved until the greedy reaches ``T`` unaided, so the result equals a plain run at the
    halved thresholds (``stats["relax_factor"]``): every selected pair ``(i before j)`` then satisfies
    ``d(i, j) >= τ_i`` — the most spread-out, attention-ordered packing the halving schedule allows.

    Stats: ``rho``, ``erank_input``, ``erank_avg``, ``tau_mean``/``tau_max_used`` over selected tokens,
    ``n_removed_by_threshold``, ``n_filled``, ``n_relax``, ``relax_factor``.
    """

    family = "adaptive"
    requires = ("attention",)  # plus erank statistics (ctx.erank_stats or erank_avg)
    adaptive = False  # always exactly T tokens; the *threshold* adapts per image, not the count
    order = "raster"
    source = "[RECONSTRUCTION] arXiv 2603.01236, cvsp-lab/AgilePruner docs/index.html (methods-spec §2.14)"

    def __init__(
        self,
        tau_max: float = 0.1,
        tau_scale: float = 0.01,
        order_mode: str = "attention_rank",
        features: str = "vision",
        erank_avg: float | None = None,
        fill: str = "attention",
        max_relax: int = 30,
        erank_features: str = "vision",
        erank_center: bool = False,
        erank_row_normalize: bool = False,
        erank_spectrum: str = "singular",
    ):
        super().__init__()
        if order_mode not in ORDER_MODES:
            raise UnknownNameError(f"unknown order_mode {order_mode!r}; known: {', '.join(ORDER_MODES)}")
        if fill not in FILL_RULES:
            raise UnknownNameError(f"unknown fill rule {fill!r}; known: {', '.join(FILL_RULES)}")
        for name, space in (("features", features), ("erank_features", erank_features)):
            if space not in FEATURE_SPACES:
                raise UnknownNameError(f"unknown {name} space {space!r}; known: {', '.join(FEATURE_SPACES)}")
        if tau_max < 0 or tau_scale < 0:
            raise ValueError(f"tau_max and tau_scale must be >= 0, got {tau_max}, {tau_scale}")
        if erank_avg is not None and not erank_avg > 0:
            raise ValueError(f"erank_avg must be > 0, got {erank_avg}")
        self.tau_max = float(tau_max)
        self.tau_scale = float(tau_scale)
        self.order_mode = order_mode
        self.features = features
        self.erank_avg = None if erank_avg is None else float(erank_avg)
        self.fill = fill
        self.max_relax = int(max_relax)
        self.erank_features = erank_features
        self.erank_center = bool(erank_center)
        self.erank_row_normalize = bool(erank_row_normalize)
        self.erank_spectrum = erank_spectrum

    def _erank_avg(self, ctx: VisualContext) -> float:
        if self.erank_avg is not None:
            return self.erank_avg
        stats = ctx.erank_stats or {}
        if "mean" not in stats:
            raise CapabilityError(
                "AgilePruner needs the dataset's average input erank; calibrate with "
                "prunelab.methods.adaptive.calibrate_erank(contexts) and set ctx.erank_stats, or pass erank_avg=..."
            )
        return float(stats["mean"])

    def complexity(self, ctx: VisualContext) -> tuple[float, float, float]:
        """``(rho, erank_input, erank_avg)`` for this image."""
        e_in = input_erank(
            ctx.space(self.erank_features), center=self.erank_center,
            row_normalize=self.erank_row_normalize, spectrum=self.erank_spectrum,
        )
        e_avg = self._erank_avg(ctx)
        return e_in / e_avg, e_in, e_avg

    def select(self, ctx: VisualContext, budget: int) -> PruneResult:
        rho, e_in, e_avg = self.complexity(ctx)
        if not math.isfinite(rho):
            raise CapabilityError("the image's feature matrix is all zero (erank is nan); AgilePruner cannot rank its complexity")
        dist = cosine_distances(ctx.space(self.features))
        ranking = torch.sort(ctx.cls_attention.double(), descending=True, stable=True).indices

        factor, n_relax = 1.0, 0
        while True:
            selected, taus, removed = threshold_greedy(
                dist, ranking, budget, rho, tau_scale=self.tau_scale * factor, tau_max=self.tau_max * factor,
                order_mode=self.order_mode,
            )
            if len(selected) >= budget or self.fill == "attention":
                break
            n_relax += 1
            # Past max_relax halvings use tau = 0: nothing is removed and T is always reached.
            factor = factor / 2 if n_relax <= self.max_relax else 0.0

        n_filled = 0
        if len(selected) < budget:  # fill == "attention"
            chosen = set(selected)
            extra = [i for i in ranking.tolist() if i not in chosen][: budget - len(selected)]
            n_filled = len(extra)
            selected = selected + extra
        keep = torch.sort(torch.tensor(selected, dtype=torch.long)).values
        stats = {
            "rho": rho,
            "erank_input": e_in,
            "erank_avg": e_avg,
            "tau_mean": float(sum(taus) / len(taus)),
            "tau_max_used": float(max(taus)),
            "n_removed_by_threshold": int(removed),
            "n_filled": int(n_filled),
            "n_relax": int(n_relax),
            "relax_factor": float(factor),
        }
        return PruneResult(indices=keep, order="raster", stats=stats)


__all__ = [
    "AgilePruner",
    "ORDER_MODES",
    "FILL_RULES",
    "calibrate_erank",
    "input_erank",
    "cosine_distances",
    "threshold_greedy",
]

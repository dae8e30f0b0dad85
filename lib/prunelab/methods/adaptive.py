"""AgilePruner: attention-ordered selection with an image-adaptive similarity threshold (methods-spec §2.14).

The paper's code is not released (``cvsp-lab/AgilePruner`` README: "coming soon"); this is a
**[RECONSTRUCTION]** from the project page (``docs/index.html``, ``adaptive_thresholding.png``). Verified facts:
tokens are visited in descending [CLS]-attention order; a visited token is selected and every remaining
candidate whose cosine distance to it is below ``τ`` is removed; ``τ_i = order_i · (erank_input / erank_avg) ·
0.01``, capped at ``τ_max``; complex images (high input erank) get larger thresholds (more diversity). Every
choice the page leaves open is a parameter of :class:`AgilePruner` (methods-spec §7).

Speed (issue 2: selection must cost <= 2% of a tower forward). The straightforward implementation (float64
``svdvals`` for the input erank, the full ``N x N`` float64 distance matrix, a tensor-op Python loop) took about
300 ms per 576-token image. The same selections are now computed with (i) the input erank from the eigenvalues of
the smaller Gram matrix when that is numerically safe (:func:`input_erank`), (ii) a NumPy loop, and (iii) only
the distance rows of visited tokens, in blocks, with a rounding certificate that falls back to the full matrix
whenever a comparison ``d < τ`` is too close to call (:meth:`AgilePruner.select`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import numpy as np
import torch

from prunelab.errors import CapabilityError, UnknownNameError
from prunelab.eval.metrics import erank
from prunelab.methods.base import FEATURE_SPACES, ErankStatsSpec, Pruner, PruneResult, VisualContext, register

ORDER_MODES = ("attention_rank", "selection_index")
FILL_RULES = ("attention", "relax")


#: The Gram route is used only for matrices at least this large in both dimensions (below it ``svdvals`` is cheap
#: and the result stays bit-identical to :func:`prunelab.eval.metrics.erank`).
GRAM_MIN_DIM = 64
#: ... and only when ``λ_min / λ_max`` of the Gram matrix is at least this (condition number of the token matrix
#: <= 1e4). Squaring the matrix squares its condition number; on matrices with prescribed spectra the erank
#: error stays below 4e-11 relative up to this limit (5e-10 at 1e5), so 1e-8 keeps a 25x margin to the 1e-9
#: tolerance the tests enforce. Rank-deficient matrices always fail the check and go to ``svdvals``.
GRAM_MIN_EIG_RATIO = 1e-8


def _erank_gram(x: torch.Tensor, *, center: bool, row_normalize: bool, spectrum: str, eps: float = 1e-12):
    """erank of one ``(n, c)`` matrix from ``eigvalsh`` of its ``min(n, c)``-sized float64 Gram matrix, or
    ``None`` when the spectrum is too ill-conditioned for that route (see :data:`GRAM_MIN_EIG_RATIO`).

    Same preprocessing and entropy as :func:`prunelab.eval.metrics.erank`; ``s_k = sqrt(λ_k)`` of ``FᵀF`` (or ``FFᵀ``).
    About 2x cheaper than ``svdvals`` on a 576x384 matrix (one GEMM + a symmetric tridiagonal reduction instead
    of a bidiagonal SVD).
    """
    f = x.detach().to(torch.float64)
    if center:
        f = f - f.mean(dim=-2, keepdim=True)
    if row_normalize:
        f = f / f.norm(dim=-1, keepdim=True).clamp_min(eps)
    n, c = f.shape
    g = f.mT @ f if n >= c else f @ f.mT
    lam = torch.linalg.eigvalsh(g)  # ascending
    top = float(lam[-1])
    if not (top > 0 and float(lam[0]) >= GRAM_MIN_EIG_RATIO * top):
        return None
    s = lam if spectrum == "squared" else lam.sqrt()
    p = s / s.sum()
    h = -(torch.where(p > 0, p * torch.log(p.clamp_min(1e-300)), torch.zeros_like(p))).sum()
    return float(torch.exp(h))


def input_erank(
    x: torch.Tensor, *, center: bool = False, row_normalize: bool = False, spectrum: str = "singular"
) -> float:
    """Effective rank of one image's ``(N, C)`` input token matrix (:func:`prunelab.eval.metrics.erank`; default
    un-centred, un-normalised, singular-value spectrum as methods-spec §3.1).

    For matrices of at least :data:`GRAM_MIN_DIM` rows and columns with a condition number <= 1e4 (every real
    DINOv2 image tried: 900-6000) the singular values come from the eigenvalues of the smaller float64 Gram
    matrix, which agrees with ``svdvals`` to better than 1e-9 relative (``tests/test_metrics.py``); otherwise
    :func:`prunelab.eval.metrics.erank` itself is used.
    """
    if spectrum not in ("singular", "squared"):
        raise ValueError(f"spectrum must be 'singular' or 'squared', got {spectrum!r}")
    if x.ndim == 2 and min(x.shape) >= GRAM_MIN_DIM:
        v = _erank_gram(x, center=center, row_normalize=row_normalize, spectrum=spectrum)
        if v is not None:
            return v
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
            raise CapabilityError(
                "an image has an all-zero feature matrix (erank is nan); drop it from the calibration set"
            )
        vals.append(v)
    if not vals:
        raise CapabilityError("calibrate_erank got no images; pass at least one context or (N, C) feature tensor")
    return erank_summary(vals)


def erank_summary(values) -> dict[str, float]:
    """``{"mean", "min", "max", "std", "n"}`` of per-image input eranks (``std``: population), the statistics
    AgilePruner and the erank-guided hybrids read."""
    t = torch.tensor([float(v) for v in values], dtype=torch.float64)
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
    d = dist.detach().cpu().numpy()
    return _greedy_pass(
        lambda i, rank, avail: d[i],
        ranking.tolist(),
        d.shape[0],
        budget,
        rho,
        tau_scale=tau_scale,
        tau_max=tau_max,
        order_mode=order_mode,
    )


class _TooCloseToCall(Exception):
    """A distance computed block-wise lies within rounding distance of its threshold."""


def _greedy_pass(
    row: Callable[[int, int, np.ndarray], np.ndarray],
    ranking: list[int],
    n: int,
    budget: int,
    rho: float,
    *,
    tau_scale: float,
    tau_max: float,
    order_mode: str,
    margin: float = 0.0,
) -> tuple[list[int], list[float], int]:
    """:func:`threshold_greedy` on NumPy arrays (a Python loop of ~T steps, each a few microseconds).

    ``row(i, rank, available)`` returns the float64 distances of token ``i`` (visited at 0-based ranking position
    ``rank``) to all tokens. With ``margin > 0``, a still-available token whose distance is within ``margin`` of
    ``τ`` raises :class:`_TooCloseToCall` (the caller then recomputes with the exact full matrix). τ is computed
    with the same Python float expression as the straightforward loop, and float64 comparisons are exact in
    both libraries, so the decisions are identical.
    """
    available = np.ones(n, dtype=bool)
    selected: list[int] = []
    taus: list[float] = []
    removed = 0
    for rank, i in enumerate(ranking, start=1):
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
        d = row(i, rank - 1, available)
        if margin > 0 and np.any(available & (np.abs(d - tau) <= margin)):
            raise _TooCloseToCall
        drop = available & (d < tau)
        removed += int(np.count_nonzero(drop))
        available &= ~drop
    return selected, taus, removed


class _CosineRows:
    """Rows of :func:`cosine_distances` computed on demand, a block at a time (float64).

    The normalised rows are formed exactly as :func:`cosine_distances` forms them; a block holds the requested
    token plus the next still-available, not yet computed tokens in ranking order (the likely next picks), so a
    pass that selects ``T`` tokens computes about ``T`` rows instead of ``N``. A block product may round
    differently from the full ``N x N`` product, by at most ``2·γ_C`` for unit vectors (Higham, *Accuracy and
    Stability of Numerical Algorithms*, §3.1), so :attr:`margin` is that bound plus the final ``1 - x`` rounding.
    """

    def __init__(self, x: torch.Tensor, ranking: list[int], block: int = 32):
        xf = x.detach().double()
        self.xn = xf / xf.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        self.ranking = ranking
        self.block = max(1, int(block))
        self.rows: dict[int, np.ndarray] = {}
        c = self.xn.shape[1]
        self.margin = (4 * c + 16) * 2.0**-53

    def __call__(self, i: int, rank: int, available: np.ndarray) -> np.ndarray:
        got = self.rows.get(i)
        if got is not None:
            return got
        want = [i]
        for j in self.ranking[rank + 1 : rank + 1 + 4 * self.block]:
            if len(want) >= self.block:
                break
            if available[j] and j not in self.rows:
                want.append(j)
        idx = torch.tensor(want, dtype=torch.long)
        block = (1.0 - self.xn[idx] @ self.xn.T).clamp_min(0.0).numpy()
        for k, j in enumerate(want):
            self.rows[j] = block[k]
        return self.rows[i]


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
    paper_name = "AgilePruner"

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

    def erank_stats_spec(self) -> ErankStatsSpec | None:
        """The mean input erank with this instance's erank options (see :meth:`complexity`), unless ``erank_avg``
        is given."""
        if self.erank_avg is not None:
            return None
        return ErankStatsSpec(self.erank_features, self.erank_center, self.erank_row_normalize, self.erank_spectrum)

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
            ctx.space(self.erank_features),
            center=self.erank_center,
            row_normalize=self.erank_row_normalize,
            spectrum=self.erank_spectrum,
        )
        e_avg = self._erank_avg(ctx)
        return e_in / e_avg, e_in, e_avg

    def select(self, ctx: VisualContext, budget: int) -> PruneResult:
        rho, e_in, e_avg = self.complexity(ctx)
        if not math.isfinite(rho):
            raise CapabilityError(
                "the image's feature matrix is all zero (erank is nan); AgilePruner cannot rank its complexity"
            )
        feats = ctx.space(self.features)
        ranking = torch.sort(ctx.cls_attention.double(), descending=True, stable=True).indices.tolist()
        n = len(ranking)
        lazy = _CosineRows(feats, ranking)
        try:
            selected, taus, removed, factor, n_relax = self._passes(lazy, lazy.margin, ranking, n, budget, rho)
        except _TooCloseToCall:  # a comparison within rounding distance: decide it on the exact full matrix
            d = cosine_distances(feats).numpy()
            selected, taus, removed, factor, n_relax = self._passes(
                lambda i, rank, avail: d[i], 0.0, ranking, n, budget, rho
            )

        n_filled = 0
        if len(selected) < budget:  # fill == "attention"
            chosen = set(selected)
            extra = [i for i in ranking if i not in chosen][: budget - len(selected)]
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

    def _passes(self, row, margin, ranking, n, budget, rho):
        """Greedy passes with the relax schedule; ``(selected, taus, removed, factor, n_relax)``."""
        factor, n_relax = 1.0, 0
        while True:
            selected, taus, removed = _greedy_pass(
                row,
                ranking,
                n,
                budget,
                rho,
                tau_scale=self.tau_scale * factor,
                tau_max=self.tau_max * factor,
                order_mode=self.order_mode,
                margin=margin,
            )
            if len(selected) >= budget or self.fill == "attention":
                return selected, taus, removed, factor, n_relax
            n_relax += 1
            # Past max_relax halvings use tau = 0: nothing is removed and T is always reached.
            factor = factor / 2 if n_relax <= self.max_relax else 0.0


__all__ = [
    "AgilePruner",
    "ORDER_MODES",
    "FILL_RULES",
    "calibrate_erank",
    "input_erank",
    "cosine_distances",
    "threshold_greedy",
]

"""One statistics module: seeded percentile-bootstrap intervals for the study's tables and the toy trainer.

Method: the nonparametric bootstrap with **percentile intervals** (Efron & Tibshirani 1993, *An Introduction to the
Bootstrap*, ch. 13): resample the units (images) with replacement ``n_boot`` times, recompute the statistic on each
resample, report the ``(1 - ci) / 2`` and ``1 - (1 - ci) / 2`` quantiles of the replicates. Paired comparisons
resample the *same* images for both sides, so the image-to-image variation common to both methods cancels in the
difference. Stratified comparisons resample within each stratum (e.g. simple / complex images), so every replicate
keeps the strata's sizes (the two-sample bootstrap, ch. 8). The paper's numbers the book compares with
(``data/paper_results.csv``) are point values with no interval protocol to follow; the image is the unit here
because it is what varies between the runs compared (every method sees the same images).

Statistics:

* :func:`mean_ci` — mean (or any ``stat``) of values with its interval;
* :func:`paired_mean` — mean of per-image differences ``a - b`` (or ratios ``a / b``) with its interval;
* :func:`ratio_ci` — a ratio of sums (POPE accuracy, CHAIR_i = hallucinated / mentions, Recall = covered / ground
  truth objects, Rohrbach et al. 2018) with its interval, the sums recomputed on every resample;
* :func:`paired_ratio_diff` — ``ratio(a) - ratio(b)`` on the same images, paired;
* :func:`interaction_ratio_diff` — the difference of two strata's paired ratio differences, stratified;
* :func:`two_sample` — mean difference and AUC of a measure between two labelled groups, stratified.

Resampling and interval levels, seeded by ``numpy.random.default_rng(seed)``: the replicates' indices are one
``(n_boot, n)`` matrix (:func:`resample`). The toy trainer used to draw them one replicate at a time; numpy keeps the
unused half of a 64-bit draw inside the generator, so both give the same indices (a test checks) and one draw
serves every caller. What differs between the callers is how the interval's levels are written (``levels``):

* ``"fraction"`` — :func:`numpy.quantile` at ``(1 - ci) / 2`` and ``1 - (1 - ci) / 2`` computed in floats
  (0.025000000000000022 for ``ci=0.95``), non-finite replicates (a resample with a zero denominator) dropped. The
  study's tables: :mod:`prunelab.study.paired`, :func:`prunelab.study.scoring.paired_chair` and ``chair_table``,
  :mod:`prunelab.study.analysis`, :func:`prunelab.study.complexity.separation`.
* ``"percent"`` — :func:`numpy.percentile` at ``50 (1 - ci)`` and ``100 - 50 (1 - ci)`` rounded to 1e-10 (exactly 2.5
  and 97.5 for ``ci=0.95``). The toy trainer's sensitivity check (:func:`prunelab.train.toyeval.paired_bootstrap`),
  so that the training records written before this module existed are reproduced.

The two can differ in the last bits of the interpolated low end (the levels differ by 2e-17); both are the same
percentile interval.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Literal, NamedTuple

import numpy as np
from scipy.stats import rankdata

from prunelab.errors import UnknownNameError

Levels = Literal["fraction", "percent"]
LEVELS = ("fraction", "percent")


def check_ci(ci: float) -> None:
    """Raise unless ``0 < ci < 1``."""
    if not 0 < ci < 1:
        raise UnknownNameError(f"ci must be in (0, 1), got {ci!r}; pass e.g. ci=0.95")


def resample(n: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """``(n_boot, n)`` indices into ``n`` units drawn with replacement from ``rng``, one row per replicate."""
    return rng.integers(0, n, size=(int(n_boot), n))


def interval(boots, ci: float = 0.95, *, levels: Levels = "fraction", finite: bool = True) -> tuple[float, float]:
    """Percentile interval ``(low, high)`` of bootstrap replicates ``boots``. ``finite`` drops non-finite replicates
    first (NaNs when none is left); ``levels`` picks how the levels are written (module docstring)."""
    if levels not in LEVELS:
        raise UnknownNameError(f"unknown interval levels {levels!r}; use one of {', '.join(LEVELS)}")
    v = np.asarray(boots, dtype=float)
    if finite:
        v = v[np.isfinite(v)]
    if not v.size:
        return (math.nan, math.nan)
    if levels == "percent":
        p = round(50 * (1 - ci), 10)  # 50 * (1 - 0.95) is 2.5000000000000022 in floats; the trainer wrote 2.5
        lo, hi = np.percentile(v, [p, 100 - p])
    else:
        lo, hi = np.quantile(v, [(1 - ci) / 2, 1 - (1 - ci) / 2])
    return float(lo), float(hi)


def ratio_of_sums(
    num: np.ndarray, den: np.ndarray | None = None, idx: np.ndarray | None = None, *, den_floor: float | None = None
):
    """``sum(num) / sum(den)`` (``den=None``: one per unit, i.e. the mean). With ``idx`` (``(n_boot, n)`` indices),
    one ratio per resample (an array; a zero denominator gives inf / NaN). Without, a float: NaN when the
    denominator sums to 0, unless ``den_floor`` is given, which floors the denominator sum instead (the toy
    trainer's ``max(1, mentions)``)."""
    num = np.asarray(num, dtype=float)
    den = np.ones(len(num)) if den is None else np.asarray(den, dtype=float)
    if idx is None:
        d = den.sum()
        if den_floor is not None:
            return float(num.sum() / max(den_floor, d))
        return float(num.sum() / d) if d else math.nan
    d = den[idx].sum(-1)
    if den_floor is not None:
        d = np.maximum(den_floor, d)
    with np.errstate(invalid="ignore", divide="ignore"):
        return num[idx].sum(-1) / d


def mean_ci(
    values: Iterable[float], *, n_boot: int = 2000, ci: float = 0.95, seed: int = 0, stat: Callable = np.mean
) -> tuple[float, float, float]:
    """``(estimate, low, high)``: ``stat`` (default the mean) of ``values`` and its percentile-bootstrap interval
    (``"fraction"`` levels). NaNs are dropped; an empty input gives NaNs; a single value a zero-width interval."""
    v = np.asarray([float(x) for x in values], dtype=float)
    v = v[np.isfinite(v)]
    check_ci(ci)
    if v.size == 0:
        return (math.nan, math.nan, math.nan)
    est = float(stat(v))
    if v.size == 1:
        return (est, est, est)
    boots = stat(v[resample(v.size, n_boot, np.random.default_rng(seed))], axis=1)
    return (est, *interval(boots, ci, finite=False))


def paired_mean(
    a, b, *, how: str = "diff", n_boot: int = 2000, ci: float = 0.95, seed: int = 0
) -> tuple[float, float, float, int]:
    """``(mean, low, high, n)`` of the per-unit ``a - b`` (``how="diff"``) or ``a / b`` (``"ratio"``), ``a[i]`` and
    ``b[i]`` measured on the same unit; the interval resamples units (the pair moves together). ``n`` counts the
    finite per-unit values."""
    if how not in ("diff", "ratio"):
        raise UnknownNameError(f"how must be 'diff' or 'ratio', got {how!r}")
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        d = a - b if how == "diff" else a / b
    est, lo, hi = mean_ci(d, n_boot=n_boot, ci=ci, seed=seed)
    return est, lo, hi, int(np.isfinite(d).sum())


def ratio_ci(num, den=None, *, n_boot: int = 2000, ci: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """``(ratio, low, high)``: :func:`ratio_of_sums` over units and its interval (units resampled, both sums
    recomputed; ``"fraction"`` levels). Fewer than two units: NaN interval."""
    check_ci(ci)
    num = np.asarray(num, dtype=float)
    den = None if den is None else np.asarray(den, dtype=float)
    value = ratio_of_sums(num, den)
    if len(num) < 2:
        return (value, math.nan, math.nan)
    idx = resample(len(num), n_boot, np.random.default_rng(seed))
    return (value, *interval(ratio_of_sums(num, den, idx), ci))


class PairedRatio(NamedTuple):
    value_a: float
    value_b: float
    diff: float
    ci_low: float
    ci_high: float
    n: int


def paired_ratio_diff(
    num_a,
    den_a,
    num_b,
    den_b,
    *,
    n_boot: int = 2000,
    ci: float = 0.95,
    seed: int = 0,
    levels: Levels = "fraction",
    den_floor: float | None = None,
    min_n: int = 2,
) -> PairedRatio:
    """``ratio(a) - ratio(b)`` (:func:`ratio_of_sums`) where unit ``i`` of both sides is the same image, with a
    paired percentile bootstrap: each replicate resamples images and recomputes both sides' sums on them. ``den_*``
    None: one per image. Fewer than ``min_n`` images: NaN interval (the trainer passes ``min_n=1``: one image gives
    a zero-width interval). ``den_floor``: see :func:`ratio_of_sums`."""
    check_ci(ci)
    arr = [None if x is None else np.asarray(x, dtype=float) for x in (num_a, den_a, num_b, den_b)]
    na, da, nb, db = arr
    va, vb = ratio_of_sums(na, da, den_floor=den_floor), ratio_of_sums(nb, db, den_floor=den_floor)
    n = len(na)
    lo = hi = math.nan
    if n >= min_n:
        idx = resample(n, n_boot, np.random.default_rng(seed))
        boots = ratio_of_sums(na, da, idx, den_floor=den_floor) - ratio_of_sums(nb, db, idx, den_floor=den_floor)
        lo, hi = interval(boots, ci, levels=levels)
    return PairedRatio(va, vb, va - vb, lo, hi, n)


def stratified_resample(sizes: Sequence[int], n_boot: int, seed: int) -> list[np.ndarray]:
    """One ``(n_boot, size)`` index matrix per stratum, drawn in order from one ``default_rng(seed)``: units are
    resampled within their stratum, so every replicate keeps the strata's sizes."""
    rng = np.random.default_rng(seed)
    return [resample(int(s), n_boot, rng) for s in sizes]


class Interaction(NamedTuple):
    diff_first: float
    diff_second: float
    interaction: float
    ci_low: float
    ci_high: float


def interaction_ratio_diff(
    first: Sequence, second: Sequence, *, n_boot: int = 2000, ci: float = 0.95, seed: int = 0
) -> Interaction:
    """Difference of differences ``D_first - D_second`` with ``D = ratio(a) - ratio(b)`` on a stratum's images;
    ``first`` / ``second`` are ``(num_a, den_a, num_b, den_b)`` of the stratum (paired within it). Stratified paired
    bootstrap (:func:`stratified_resample`); a stratum with fewer than two images gives a NaN interval."""
    check_ci(ci)
    strata = [[None if x is None else np.asarray(x, dtype=float) for x in s] for s in (first, second)]
    point = [ratio_of_sums(na, da) - ratio_of_sums(nb, db) for na, da, nb, db in strata]
    lo = hi = math.nan
    sizes = [len(s[0]) for s in strata]
    if min(sizes) >= 2:
        boots = [
            ratio_of_sums(na, da, idx) - ratio_of_sums(nb, db, idx)
            for (na, da, nb, db), idx in zip(strata, stratified_resample(sizes, n_boot, seed))
        ]
        lo, hi = interval(boots[0] - boots[1], ci)
    return Interaction(point[0], point[1], point[0] - point[1], lo, hi)


def auc(first: np.ndarray, second: np.ndarray) -> float:
    """P(a random ``second`` value > a random ``first`` value), ties counted half: the Mann-Whitney U statistic
    over ``len(first) * len(second)`` (Hanley & McNeil 1982). NaN when a group is empty."""
    first, second = np.asarray(first, dtype=float), np.asarray(second, dtype=float)
    if not len(first) or not len(second):
        return math.nan
    d = second[:, None] - first[None, :]
    return float(((d > 0).sum() + 0.5 * (d == 0).sum()) / d.size)


def two_sample(first, second, *, n_boot: int = 2000, ci: float = 0.95, seed: int = 0) -> dict:
    """How a measure separates two groups of units (e.g. simple vs complex images): ``diff`` = mean(second) -
    mean(first) and ``auc`` (:func:`auc`), each with a stratified percentile-bootstrap interval (units resampled
    within their group; the AUC of a replicate from the ranks of its pooled resample). Keys ``diff, auc,
    diff_low, diff_high, auc_low, auc_high``; NaN intervals unless both groups have two units."""
    check_ci(ci)
    s, c = np.asarray(first, dtype=float), np.asarray(second, dtype=float)
    out = {
        "diff": (float(c.mean()) if len(c) else math.nan) - (float(s.mean()) if len(s) else math.nan),
        "auc": auc(s, c),
    }
    lo = {k: math.nan for k in ("diff", "auc")}
    hi = dict(lo)
    if len(s) >= 2 and len(c) >= 2:
        si, cj = stratified_resample([len(s), len(c)], n_boot, seed)
        diffs = c[cj].mean(1) - s[si].mean(1)
        r = rankdata(np.concatenate([s[si], c[cj]], axis=1), axis=1)[:, len(s) :].sum(1)
        aucs = (r - len(c) * (len(c) + 1) / 2) / (len(s) * len(c))
        lo["diff"], hi["diff"] = interval(diffs, ci, finite=False)
        lo["auc"], hi["auc"] = interval(aucs, ci, finite=False)
    for k in ("diff", "auc"):
        out[f"{k}_low"], out[f"{k}_high"] = lo[k], hi[k]
    return out


__all__ = [
    "LEVELS",
    "check_ci",
    "resample",
    "interval",
    "ratio_of_sums",
    "mean_ci",
    "paired_mean",
    "ratio_ci",
    "PairedRatio",
    "paired_ratio_diff",
    "stratified_resample",
    "Interaction",
    "interaction_ratio_diff",
    "auc",
    "two_sample",
]

"""Paired comparisons of POPE and CHAIR metrics between methods (or groups of methods) on the same images.

POPE accuracy and the CHAIR metrics are *ratios of sums*: accuracy = correct answers / questions, CHAIR_i =
hallucinated mentions / mentions, Recall = covered ground-truth objects / ground-truth objects, CHAIR_s = captions
with a hallucination / captions (Rohrbach et al. 2018; OPERA's Recall; :func:`prunelab.study.scoring.chair_table`).
Comparing two methods on the same images, the image is the unit that varies, so the uncertainty of a difference
comes from a **paired percentile bootstrap over images**: resample image ids with replacement, recompute both
ratios on the resampled images (the numerator and denominator sums of each side), take the difference (seeded;
the statistics live in :mod:`prunelab.eval.stats`; this module shapes the tables).

* :func:`image_sums` — per method x image (x group) the numerator and denominator of a metric;
* :func:`compare` — ``metric(a) − metric(b)`` where ``a`` and ``b`` are a method label *or a list of labels*
  (a family: its methods' sums are pooled, i.e. the family is scored as if it were one method answering every
  question once per member), per group of ``by``, with the paired bootstrap CI. For one method on each side and a
  CHAIR metric and ``flagged=True`` it is :func:`prunelab.study.scoring.paired_chair`; by default the captions the
  CHAIR evaluator flags are left out;
* :func:`interaction` — a difference of differences between two image groups (e.g. simple vs complex images):
  ``[metric(a) − metric(b)]_{first} − [metric(a) − metric(b)]_{second}``, with images resampled *within* each group
  (stratified bootstrap), so the two groups keep their sizes.

Metrics (:data:`METRICS`): ``Accuracy`` (POPE; ``correct``, an unparsed answer counts as wrong), ``CHAIR_s``,
``CHAIR_i``, ``Recall``, ``Len`` (describe tables), or the name of any numeric column, which is averaged over the
rows (e.g. ``erank_kept_vision``). Reported x100 for the rates, as the paper reports them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from prunelab.errors import UnknownNameError
from prunelab.eval.stats import check_ci, interaction_ratio_diff, paired_ratio_diff, ratio_ci

#: metric -> (numerator column, denominator column or None = number of rows, scale)
METRICS = {
    "Accuracy": ("correct", None, 100.0),
    "CHAIR_s": ("chair_s", None, 100.0),
    "CHAIR_i": ("n_hallucinated", "n_mentions", 100.0),
    "Recall": ("n_gt_covered", "n_gt", 100.0),
    "Len": ("length", None, 1.0),
}
_EXCLUDED_FLAGS = ("not_a_string", "no_ground_truth")  # captions the CHAIR evaluator leaves out


def metric_parts(metric: str, df: pd.DataFrame | None = None) -> tuple[str, str | None, float]:
    """``(numerator, denominator or None, scale)`` of ``metric`` (a key of :data:`METRICS` or a numeric column,
    which is averaged: numerator = the column, denominator = the row count, scale 1)."""
    if metric in METRICS:
        parts = METRICS[metric]
    else:
        parts = (metric, None, 1.0)
    if df is not None:
        for col in parts[:2]:
            if col is not None and col not in df:
                raise UnknownNameError(
                    f"metric {metric!r} needs column {col!r}, which the table lacks; pass a POPE table for Accuracy, "
                    f"a describe table for {', '.join(k for k in METRICS if k != 'Accuracy')}, or a numeric column"
                )
    return parts


def _labels(x) -> list[str]:
    return [x] if isinstance(x, str) else list(x)


def _name(x) -> str:
    labels = _labels(x)
    return labels[0] if len(labels) == 1 else " + ".join(labels)


def image_sums(
    df: pd.DataFrame, metric: str, by: Sequence[str] = ("budget",), *, flagged: bool = False
) -> pd.DataFrame:
    """Per ``by`` x method x image: ``num`` and ``den`` of ``metric`` (sums over the image's rows: questions for
    POPE, the caption for describe). Captions the CHAIR evaluator excludes (``chair_flag`` not_a_string /
    no_ground_truth) are left out, as :func:`prunelab.study.scoring.chair_table` does, unless ``flagged``."""
    num, den, _ = metric_parts(metric, df)
    d = df
    if not flagged and metric in METRICS and metric != "Accuracy" and "chair_flag" in d:
        d = d[~d["chair_flag"].isin(_EXCLUDED_FLAGS)]
    d = d.assign(
        _num=pd.to_numeric(d[num], errors="coerce").astype(float),
        _den=1.0 if den is None else pd.to_numeric(d[den], errors="coerce").astype(float),
    )
    d = d.dropna(subset=["_num", "_den"])
    keys = list(by) + ["method", "image_id"]
    out = d.groupby(keys, sort=False, dropna=False)[["_num", "_den"]].sum().reset_index()
    return out.rename(columns={"_num": "num", "_den": "den"})


def _side(sums: pd.DataFrame, labels: list[str], ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
    s = sums[sums["method"].isin(labels)].groupby("image_id")[["num", "den"]].sum().reindex(ids)
    return s["num"].to_numpy(float), s["den"].to_numpy(float)


def _common_ids(sums: pd.DataFrame, labels: list[str]) -> list[str]:
    ids = None
    for m in labels:
        got = set(sums.loc[sums["method"] == m, "image_id"])
        ids = got if ids is None else ids & got
    return sorted(ids or [])


def compare(
    df: pd.DataFrame,
    a,
    b,
    metric: str,
    *,
    by: Sequence[str] = ("budget",),
    n_boot: int = 2000,
    ci: float = 0.95,
    seed: int = 0,
    flagged: bool = False,
) -> pd.DataFrame:
    """``metric(a) − metric(b)`` on the images both sides have, per group of ``by``, with a seeded paired bootstrap
    over images (see module docstring). ``a`` / ``b``: a method label or a list of labels (pooled). ``flagged``:
    keep the captions the CHAIR evaluator flags (:func:`image_sums`; :func:`prunelab.study.scoring.paired_chair`).

    Columns ``by + [a, b, value_a, value_b, diff, ci_low, ci_high, n]`` (``a``/``b`` hold the side names, lists
    joined with " + "; ``n`` = images). A group where a side has no rows is skipped.
    """
    check_ci(ci)
    la, lb = _labels(a), _labels(b)
    for m in la + lb:
        if not (df["method"] == m).any():
            raise UnknownNameError(f"no rows for method {m!r}; present: {', '.join(map(str, df['method'].unique()))}")
    _, _, scale = metric_parts(metric, df)
    sums = image_sums(df[df["method"].isin(la + lb)], metric, by, flagged=flagged)
    cols = list(by) + ["a", "b", "value_a", "value_b", "diff", "ci_low", "ci_high", "n"]
    rows = []
    groups = sums.groupby(list(by), sort=False, dropna=False) if by else [((), sums)]
    for key, g in groups:
        key = key if isinstance(key, tuple) else (key,)
        ids = _common_ids(g, la + lb)
        if not ids:
            continue
        r = paired_ratio_diff(*_side(g, la, ids), *_side(g, lb, ids), n_boot=n_boot, ci=ci, seed=seed)
        rows.append(
            {
                **dict(zip(by, key)),
                "a": _name(a),
                "b": _name(b),
                "value_a": r.value_a * scale,
                "value_b": r.value_b * scale,
                "diff": r.diff * scale,
                "ci_low": r.ci_low * scale,
                "ci_high": r.ci_high * scale,
                "n": len(ids),
            }
        )
    return pd.DataFrame(rows, columns=cols)


def interaction(
    df: pd.DataFrame,
    a,
    b,
    metric: str,
    *,
    group: str = "split",
    levels: Sequence[str] = ("simple", "complex"),
    by: Sequence[str] = ("budget",),
    n_boot: int = 2000,
    ci: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """Difference of differences between the two image groups ``levels`` of column ``group``:
    ``D_first − D_second`` with ``D = metric(a) − metric(b)`` on the group's images (both sides present),
    per group of ``by``; stratified paired bootstrap (images resampled within each level, seeded).

    Columns ``by + [a, b, diff_<first>, diff_<second>, interaction, ci_low, ci_high, n_<first>, n_<second>]``.
    """
    check_ci(ci)
    if group not in df:
        raise UnknownNameError(f"column {group!r} is not in the table; add it first (e.g. complexity.add_split)")
    if len(levels) != 2:
        raise UnknownNameError(f"levels must name two groups, got {list(levels)!r}")
    la, lb = _labels(a), _labels(b)
    _, _, scale = metric_parts(metric, df)
    sums = image_sums(df[df["method"].isin(la + lb) & df[group].isin(levels)], metric, list(by) + [group])
    l0, l1 = levels
    cols = list(by) + ["a", "b", f"diff_{l0}", f"diff_{l1}", "interaction", "ci_low", "ci_high", f"n_{l0}", f"n_{l1}"]
    rows = []
    groups = sums.groupby(list(by), sort=False, dropna=False) if by else [((), sums)]
    for key, g in groups:
        key = key if isinstance(key, tuple) else (key,)
        parts = {}
        for _k, lev in enumerate(levels):
            gl = g[g[group] == lev]
            ids = _common_ids(gl, la + lb)
            parts[lev] = (ids, *_side(gl, la, ids), *_side(gl, lb, ids))
        if not parts[l0][0] or not parts[l1][0]:
            continue
        r = interaction_ratio_diff(parts[l0][1:], parts[l1][1:], n_boot=n_boot, ci=ci, seed=seed)
        rows.append(
            {
                **dict(zip(by, key)),
                "a": _name(a),
                "b": _name(b),
                f"diff_{l0}": r.diff_first * scale,
                f"diff_{l1}": r.diff_second * scale,
                "interaction": r.interaction * scale,
                "ci_low": r.ci_low * scale,
                "ci_high": r.ci_high * scale,
                f"n_{l0}": len(parts[l0][0]),
                f"n_{l1}": len(parts[l1][0]),
            }
        )
    return pd.DataFrame(rows, columns=cols)


def metric_table(
    df: pd.DataFrame,
    metric: str,
    *,
    by: Sequence[str] = ("method", "budget"),
    n_boot: int = 2000,
    ci: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """``metric`` per group of ``by`` (ratio of sums over the group's rows) with a seeded percentile bootstrap CI
    over images: columns ``by + [value, ci_low, ci_high, n]`` (x100 for rates)."""
    check_ci(ci)
    _, _, scale = metric_parts(metric, df)
    by = list(by)
    if "method" not in by:
        raise UnknownNameError(f"by must include 'method', got {by!r}")
    inner = [c for c in by if c not in ("method",)]
    sums = image_sums(df, metric, inner)
    rows = []
    for key, g in sums.groupby(["method"] + inner, sort=False, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        g = g.sort_values("image_id")
        value, lo, hi = ratio_ci(g["num"].to_numpy(float), g["den"].to_numpy(float), n_boot=n_boot, ci=ci, seed=seed)
        keyd = dict(zip(["method"] + inner, key))
        rows.append(
            {
                **{c: keyd[c] for c in by},
                "value": value * scale,
                "ci_low": lo * scale,
                "ci_high": hi * scale,
                "n": len(g),
            }
        )
    return pd.DataFrame(rows, columns=by + ["value", "ci_low", "ci_high", "n"])


__all__ = ["METRICS", "metric_parts", "image_sums", "compare", "interaction", "metric_table"]

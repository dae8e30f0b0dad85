"""prunelab.eval.stats, the one statistics module: each caller's intervals equal, bit for bit, those of the code it
replaced (transcribed below from main at f392b85: study/analysis.py bootstrap_ci + paired, study/paired.py compare /
interaction / metric_table, study/generation.py paired_chair + _ratio_boot, study/complexity.py separation,
train/toyeval.py paired_bootstrap), plus properties of the bootstrap."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings, strategies as st
from scipy.stats import rankdata

from prunelab.errors import UnknownNameError
from prunelab.eval import stats as S
from prunelab.study import analysis as A, complexity as C, paired as Pd, scoring as SC
from prunelab.train import toyeval as TE


def _same(new: pd.DataFrame, old: pd.DataFrame) -> None:
    """Equal tables, NaN == NaN, floats compared with == (no tolerance)."""
    assert list(new.columns) == list(old.columns)
    assert len(new) == len(old)
    for col in new.columns:
        for x, y in zip(new[col].tolist(), old[col].tolist()):
            assert (x == y) or (isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y)), (
                col,
                x,
                y,
            )


def _same_dict(new: dict, old: dict) -> None:
    assert list(new) == list(old)
    for k in new:
        x, y = new[k], old[k]
        assert x == y or (math.isnan(x) and math.isnan(y)), (k, x, y)


def _chair_rows(n_img=23, seed=1, flagged=()):
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_img):
        for m, lam in (("A", 0.5), ("B", 2.0), ("C", 1.0)):
            for b in (64, 128):
                h, c = int(rng.poisson(lam)), int(rng.integers(0, 4))
                rows.append(
                    {
                        "image_id": f"i{i:02d}",
                        "method": m,
                        "family": m,
                        "budget": b,
                        "n_hallucinated": h,
                        "n_mentions": h + c,
                        "chair_s": int(h > 0),
                        "n_gt": 4,
                        "n_gt_covered": c,
                        "length": 40 + h,
                        "split": "simple" if i % 3 else "complex",
                        "chair_flag": "no_ground_truth" if i in flagged else "",
                    }
                )
    return pd.DataFrame(rows)


def _pope_rows(n_img=17, seed=2):
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_img):
        for m, p in (("A", 0.8), ("B", 0.6), ("C", 0.7)):
            for b in (64, 128):
                for q in range(6):
                    rows.append(
                        {
                            "image_id": f"i{i:02d}",
                            "method": m,
                            "budget": b,
                            "question_id": q,
                            "split": "simple" if i % 2 else "complex",
                            "correct": bool(rng.random() < p),
                        }
                    )
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------- transcriptions


def _old_bootstrap_ci(values, *, n_boot=2000, ci=0.95, seed=0, stat=np.mean):  # analysis.py 321-340
    v = np.asarray([float(x) for x in values], dtype=float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return (math.nan, math.nan, math.nan)
    est = float(stat(v))
    if v.size == 1:
        return (est, est, est)
    rng = np.random.default_rng(seed)
    boots = stat(v[rng.integers(0, v.size, size=(int(n_boot), v.size))], axis=1)
    lo, hi = np.quantile(boots, [(1 - ci) / 2, 1 - (1 - ci) / 2])
    return (est, float(lo), float(hi))


def _old_summarize(df, value, by, *, n_boot=2000, ci=0.95, seed=0):  # analysis.py 343-354
    rows = []
    for key, g in df.groupby(list(by), sort=False, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        est, lo, hi = _old_bootstrap_ci(g[value], n_boot=n_boot, ci=ci, seed=seed)
        rows.append(
            {
                **dict(zip(by, key)),
                "mean": est,
                "ci_low": lo,
                "ci_high": hi,
                "n": int(np.isfinite(g[value].astype(float)).sum()),
            }
        )
    return pd.DataFrame(rows)


def _old_analysis_paired(
    df,
    value,
    a,
    b,
    *,
    by=("image_set", "budget"),
    how="diff",
    key="image_id",
    column="method",
    n_boot=2000,
    ci=0.95,
    seed=0,
):  # analysis.py 357-380
    by = list(by)
    left = df[df[column] == a].set_index(by + [key])[value]
    right = df[df[column] == b].set_index(by + [key])[value]
    both = pd.concat([left.rename("a"), right.rename("b")], axis=1, join="inner").reset_index()
    both["d"] = both["a"] - both["b"] if how == "diff" else both["a"] / both["b"]
    out = _old_summarize(both, "d", by, n_boot=n_boot, ci=ci, seed=seed)
    out.insert(len(by), "a", a)
    out.insert(len(by) + 1, "b", b)
    return out


def _old_ratio(num, den, idx=None):  # paired.py 98-102
    with np.errstate(invalid="ignore", divide="ignore"):
        if idx is None:
            return float(num.sum() / den.sum()) if den.sum() else math.nan
        return num[idx].sum(-1) / den[idx].sum(-1)


def _old_quantiles(v, ci):  # paired.py 105-110
    v = v[np.isfinite(v)]
    if not v.size:
        return (math.nan, math.nan)
    lo, hi = np.quantile(v, [(1 - ci) / 2, 1 - (1 - ci) / 2])
    return float(lo), float(hi)


def _old_compare(df, a, b, metric, *, by=("budget",), n_boot=2000, ci=0.95, seed=0):  # paired.py 118-150
    la, lb = Pd._labels(a), Pd._labels(b)
    _, _, scale = Pd.metric_parts(metric, df)
    sums = Pd.image_sums(df[df["method"].isin(la + lb)], metric, by)
    cols = list(by) + ["a", "b", "value_a", "value_b", "diff", "ci_low", "ci_high", "n"]
    rows = []
    for key, g in sums.groupby(list(by), sort=False, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        ids = Pd._common_ids(g, la + lb)
        if not ids:
            continue
        na, da = Pd._side(g, la, ids)
        nb, db = Pd._side(g, lb, ids)
        va, vb = _old_ratio(na, da), _old_ratio(nb, db)
        lo = hi = math.nan
        if len(ids) >= 2:
            idx = np.random.default_rng(seed).integers(0, len(ids), size=(int(n_boot), len(ids)))
            lo, hi = _old_quantiles(_old_ratio(na, da, idx) - _old_ratio(nb, db, idx), ci)
        rows.append(
            {
                **dict(zip(by, key)),
                "a": Pd._name(a),
                "b": Pd._name(b),
                "value_a": va * scale,
                "value_b": vb * scale,
                "diff": (va - vb) * scale,
                "ci_low": lo * scale,
                "ci_high": hi * scale,
                "n": len(ids),
            }
        )
    return pd.DataFrame(rows, columns=cols)


def _old_interaction(
    df, a, b, metric, *, group="split", levels=("simple", "complex"), by=("budget",), n_boot=2000, ci=0.95, seed=0
):  # paired.py 153-198
    la, lb = Pd._labels(a), Pd._labels(b)
    _, _, scale = Pd.metric_parts(metric, df)
    sums = Pd.image_sums(df[df["method"].isin(la + lb) & df[group].isin(levels)], metric, list(by) + [group])
    l0, l1 = levels
    cols = list(by) + ["a", "b", f"diff_{l0}", f"diff_{l1}", "interaction", "ci_low", "ci_high", f"n_{l0}", f"n_{l1}"]
    rows = []
    for key, g in sums.groupby(list(by), sort=False, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        parts = {}
        for lev in levels:
            gl = g[g[group] == lev]
            ids = Pd._common_ids(gl, la + lb)
            parts[lev] = (ids, *Pd._side(gl, la, ids), *Pd._side(gl, lb, ids))
        if not parts[l0][0] or not parts[l1][0]:
            continue
        point, boots = {}, {}
        rng = np.random.default_rng(seed)
        for lev in levels:
            ids, na, da, nb, db = parts[lev]
            point[lev] = _old_ratio(na, da) - _old_ratio(nb, db)
            if len(ids) >= 2:
                idx = rng.integers(0, len(ids), size=(int(n_boot), len(ids)))
                boots[lev] = _old_ratio(na, da, idx) - _old_ratio(nb, db, idx)
        lo = hi = math.nan
        if len(boots) == 2:
            lo, hi = _old_quantiles(boots[l0] - boots[l1], ci)
        rows.append(
            {
                **dict(zip(by, key)),
                "a": Pd._name(a),
                "b": Pd._name(b),
                f"diff_{l0}": point[l0] * scale,
                f"diff_{l1}": point[l1] * scale,
                "interaction": (point[l0] - point[l1]) * scale,
                "ci_low": lo * scale,
                "ci_high": hi * scale,
                f"n_{l0}": len(parts[l0][0]),
                f"n_{l1}": len(parts[l1][0]),
            }
        )
    return pd.DataFrame(rows, columns=cols)


def _old_metric_table(df, metric, *, by=("method", "budget"), n_boot=2000, ci=0.95, seed=0):  # paired.py 201-224
    _, _, scale = Pd.metric_parts(metric, df)
    by = list(by)
    inner = [c for c in by if c not in ("method",)]
    sums = Pd.image_sums(df, metric, inner)
    rows = []
    for key, g in sums.groupby(["method"] + inner, sort=False, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        g = g.sort_values("image_id")
        num, den = g["num"].to_numpy(float), g["den"].to_numpy(float)
        lo = hi = math.nan
        if len(g) >= 2:
            idx = np.random.default_rng(seed).integers(0, len(g), size=(int(n_boot), len(g)))
            lo, hi = _old_quantiles(_old_ratio(num, den, idx), ci)
        keyd = dict(zip(["method"] + inner, key))
        rows.append(
            {
                **{c: keyd[c] for c in by},
                "value": _old_ratio(num, den) * scale,
                "ci_low": lo * scale,
                "ci_high": hi * scale,
                "n": len(g),
            }
        )
    return pd.DataFrame(rows, columns=by + ["value", "ci_low", "ci_high", "n"])


def _old_ratio_boot(num, den, n_boot, ci, seed):  # generation.py 893-907
    rng = np.random.default_rng(seed)
    n = len(num)
    if n < 2:
        return (math.nan, math.nan)
    idx = rng.integers(0, n, size=(int(n_boot), n))
    s_num = num[idx].sum(1)
    s_den = den[idx].sum(1) if den is not None else np.full(len(idx), n, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        v = s_num / s_den
    v = v[np.isfinite(v)]
    if not v.size:
        return (math.nan, math.nan)
    lo, hi = np.quantile(v, [(1 - ci) / 2, 1 - (1 - ci) / 2])
    return float(lo), float(hi)


def _old_paired_chair(df, a, b, metric, *, by=("budget",), n_boot=2000, ci=0.95, seed=0):  # generation.py 950-987
    num, den = SC._chair_metric_parts(metric)
    scale = 1.0 if metric == "Len" else 100.0
    rows = []
    for key, g in df.groupby(list(by), sort=False, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        cols = [num] + ([den] if den else [])
        A_ = g[g["method"] == a].set_index("image_id")[cols]
        B_ = g[g["method"] == b].set_index("image_id")[cols]
        ids = sorted(set(A_.index) & set(B_.index))
        if not ids:
            continue
        A_, B_ = A_.loc[ids], B_.loc[ids]

        def val(X, idx=None):
            x = X[num].to_numpy(float)
            d = X[den].to_numpy(float) if den else np.ones(len(X))
            if idx is None:
                return x.sum() / d.sum() if d.sum() else math.nan
            with np.errstate(invalid="ignore", divide="ignore"):
                return x[idx].sum(1) / d[idx].sum(1)

        va, vb = val(A_), val(B_)
        lo = hi = math.nan
        if len(ids) >= 2:
            idx = np.random.default_rng(seed).integers(0, len(ids), size=(int(n_boot), len(ids)))
            diffs = val(A_, idx) - val(B_, idx)
            diffs = diffs[np.isfinite(diffs)]
            if diffs.size:
                lo, hi = (float(q) for q in np.quantile(diffs, [(1 - ci) / 2, 1 - (1 - ci) / 2]))
        rows.append(
            {
                **dict(zip(by, key)),
                "a": a,
                "b": b,
                "value_a": va * scale,
                "value_b": vb * scale,
                "diff": (va - vb) * scale,
                "ci_low": lo * scale,
                "ci_high": hi * scale,
                "n": len(ids),
            }
        )
    return pd.DataFrame(rows, columns=list(by) + ["a", "b", "value_a", "value_b", "diff", "ci_low", "ci_high", "n"])


def _old_separation(img, measure, *, label="complexity", n_boot=2000, ci=0.95, seed=0):  # complexity.py 113-153
    def auc(simple, complex_):
        if not len(simple) or not len(complex_):
            return math.nan
        d = complex_[:, None] - simple[None, :]
        return float(((d > 0).sum() + 0.5 * (d == 0).sum()) / d.size)

    s = img.loc[img[label] == "simple", measure].astype(float).dropna().to_numpy()
    c = img.loc[img[label] == "complex", measure].astype(float).dropna().to_numpy()
    out = {
        "measure": measure,
        "n_simple": len(s),
        "n_complex": len(c),
        "mean_simple": float(s.mean()) if len(s) else math.nan,
        "mean_complex": float(c.mean()) if len(c) else math.nan,
    }
    out["diff"] = out["mean_complex"] - out["mean_simple"]
    out["auc"] = auc(s, c)
    lo = {k: math.nan for k in ("diff", "auc")}
    hi = dict(lo)
    if len(s) >= 2 and len(c) >= 2:
        rng = np.random.default_rng(seed)
        si = rng.integers(0, len(s), size=(int(n_boot), len(s)))
        cj = rng.integers(0, len(c), size=(int(n_boot), len(c)))
        diffs = c[cj].mean(1) - s[si].mean(1)
        pooled = np.concatenate([s[si], c[cj]], axis=1)
        r = rankdata(pooled, axis=1)[:, len(s) :].sum(1)
        aucs = (r - len(c) * (len(c) + 1) / 2) / (len(s) * len(c))
        q = [(1 - ci) / 2, 1 - (1 - ci) / 2]
        lo["diff"], hi["diff"] = (float(x) for x in np.quantile(diffs, q))
        lo["auc"], hi["auc"] = (float(x) for x in np.quantile(aucs, q))
    for k in ("diff", "auc"):
        out[f"{k}_low"], out[f"{k}_high"] = lo[k], hi[k]
    return out


def _old_paired_bootstrap(per_image, cond_a, cond_b, metric, complexity="complex", n_boot=2000, seed=0):
    # train/toyeval.py 307-334
    a = {
        p["id"]: p
        for p in per_image
        if p["condition"] == cond_a and (complexity == "all" or p["complexity"] == complexity)
    }
    b = {p["id"]: p for p in per_image if p["condition"] == cond_b and p["id"] in a}
    ids = sorted(b)
    if not ids:
        return {}

    def parts(p):
        said, hall, gt = len(p["mentioned"]), len(p["hallucinated"]), len(p["objects"])
        return (said - hall, gt) if metric == "recall" else (hall, said)

    A_ = np.array([parts(a[i]) for i in ids], dtype=float)
    B_ = np.array([parts(b[i]) for i in ids], dtype=float)

    def val(M, idx):
        return M[idx, 0].sum() / max(1.0, M[idx, 1].sum())

    rng = np.random.default_rng(seed)
    full = np.arange(len(ids))
    boots = [val(B_, s) - val(A_, s) for s in (rng.integers(0, len(ids), len(ids)) for _ in range(n_boot))]
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return {
        "metric": metric,
        "from": cond_a,
        "to": cond_b,
        "complexity": complexity,
        "delta": val(B_, full) - val(A_, full),
        "ci95": [float(lo), float(hi)],
        "significant": bool(lo > 0 or hi < 0),
        "n_images": len(ids),
    }


# ---------------------------------------------------------------------------------------------- bit-identical callers


def test_mean_ci_equals_old_bootstrap_ci():
    rng = np.random.default_rng(4)
    for n, seed, ci in ((2, 0, 0.95), (13, 3, 0.9), (40, 7, 0.95)):
        v = list(rng.normal(size=n)) + [float("nan")]
        assert S.mean_ci(v, n_boot=500, ci=ci, seed=seed) == _old_bootstrap_ci(v, n_boot=500, ci=ci, seed=seed)
        med = S.mean_ci(v, n_boot=300, seed=seed, stat=np.median)
        assert med == _old_bootstrap_ci(v, n_boot=300, seed=seed, stat=np.median)
    assert S.mean_ci([3.0]) == (3.0, 3.0, 3.0)
    assert all(math.isnan(x) for x in S.mean_ci([float("nan")]))
    with pytest.raises(UnknownNameError, match="ci must be in"):
        S.mean_ci([1.0, 2.0], ci=1.5)


def test_mean_ci_covers_true_mean_usually():
    rng = np.random.default_rng(0)
    hits = sum(lo <= 0 <= hi for _, lo, hi in (S.mean_ci(rng.normal(size=40), n_boot=500, seed=s) for s in range(60)))
    assert hits >= 48  # ~95% nominal; percentile bootstrap is slightly narrow at n=40


def test_analysis_paired_and_summarize_equal_old():
    rng = np.random.default_rng(5)
    rows = [
        {"image_id": f"i{i}", "method": m, "budget": b, "image_set": s, "v": float(rng.gamma(2.0)) + 0.1}
        for s in ("toy", "photos")
        for b in (64, 128)
        for m in ("X", "Y")
        for i in range(11)
    ]
    df = pd.DataFrame(rows)
    for how in ("diff", "ratio"):
        _same(
            A.paired(df, "v", "X", "Y", how=how, n_boot=400, seed=2),
            _old_analysis_paired(df, "v", "X", "Y", how=how, n_boot=400, seed=2),
        )
    _same(
        A.summarize(df, "v", ["method", "budget"], n_boot=300, seed=1),
        _old_summarize(df, "v", ["method", "budget"], n_boot=300, seed=1),
    )


def test_compare_interaction_metric_table_equal_old():
    pope, chair = _pope_rows(), _chair_rows(flagged=(4, 9))
    for df, metric in ((pope, "Accuracy"), (chair, "CHAIR_i"), (chair, "Recall"), (chair, "CHAIR_s"), (chair, "Len")):
        for a, b in (("A", "B"), (["A", "C"], "B")):
            _same(Pd.compare(df, a, b, metric, n_boot=300, seed=3), _old_compare(df, a, b, metric, n_boot=300, seed=3))
            _same(
                Pd.interaction(df, a, b, metric, n_boot=300, seed=4),
                _old_interaction(df, a, b, metric, n_boot=300, seed=4),
            )
        _same(Pd.metric_table(df, metric, n_boot=300, seed=5), _old_metric_table(df, metric, n_boot=300, seed=5))
    # a stratum with one image: NaN interval on both paths
    one = pope[(pope["split"] == "simple") | (pope["image_id"] == "i00")]
    _same(Pd.interaction(one, "A", "B", "Accuracy", n_boot=50), _old_interaction(one, "A", "B", "Accuracy", n_boot=50))


def test_paired_chair_equals_old_and_keeps_flagged_rows():
    df = _chair_rows(flagged=(2, 5, 11))
    for metric in ("CHAIR_i", "CHAIR_s", "Recall", "Len"):
        new = SC.paired_chair(df, "A", "B", metric, n_boot=300, seed=6)
        _same(new, _old_paired_chair(df, "A", "B", metric, n_boot=300, seed=6))
        # paired.compare leaves the flagged captions out; paired_chair keeps them (both as before)
        assert (Pd.compare(df, "A", "B", metric)["n"] == 20).all() and (new["n"] == 23).all()
    # zero mentions on every image of a side: NaN point, NaN interval
    z = df.assign(n_mentions=0, n_hallucinated=0)
    _same(SC.paired_chair(z, "A", "B", "CHAIR_i", n_boot=50), _old_paired_chair(z, "A", "B", "CHAIR_i", n_boot=50))


def test_ratio_ci_equals_old_chair_table_bootstrap():
    rng = np.random.default_rng(8)
    for n in (1, 2, 9, 30):
        num = rng.integers(0, 4, n).astype(float)
        den = num + rng.integers(0, 3, n)
        for d in (den, None, np.zeros(n)):
            new, old = S.ratio_ci(num, d, n_boot=400, ci=0.9, seed=n)[1:], _old_ratio_boot(num, d, 400, 0.9, n)
            assert all(x == y or (math.isnan(x) and math.isnan(y)) for x, y in zip(new, old)), (n, new, old)


def test_separation_equals_old():
    rng = np.random.default_rng(9)
    img = pd.DataFrame(
        {
            "image_id": [f"i{i}" for i in range(19)],
            "complexity": ["simple" if i % 2 else "complex" for i in range(19)],
            "m": np.round(rng.normal(size=19), 1),
        }
    )  # rounded: ties in the AUC
    img.loc[3, "m"] = np.nan
    for seed in (0, 5):
        _same_dict(C.separation(img, "m", n_boot=300, seed=seed), _old_separation(img, "m", n_boot=300, seed=seed))
    few = img.iloc[:3]
    _same_dict(C.separation(few, "m", n_boot=50), _old_separation(few, "m", n_boot=50))


def test_toy_paired_bootstrap_equals_old_percent_levels():
    rng = np.random.default_rng(10)
    per = []
    for i in range(21):
        objs = [f"o{k}" for k in range(int(rng.integers(1, 5)))]
        cx = "complex" if i % 3 else "simple"
        for cond, keep in (("full", 0.9), ("b64", 0.5)):
            said = [o for o in objs if rng.random() < keep] + (["x"] if rng.random() < 0.3 else [])
            per.append(
                {
                    "condition": cond,
                    "id": i,
                    "complexity": cx,
                    "mentioned": said,
                    "hallucinated": [o for o in said if o == "x"],
                    "objects": objs,
                }
            )
    per.append(
        {"condition": "full", "id": 99, "complexity": "complex", "mentioned": [], "hallucinated": [], "objects": ["o0"]}
    )  # no mentions: the floor of one on CHAIR_i's denominator
    per.append(
        {"condition": "b64", "id": 99, "complexity": "complex", "mentioned": [], "hallucinated": [], "objects": ["o0"]}
    )
    for metric in ("recall", "chair_i"):
        for cx in ("complex", "all", "simple"):
            new = TE.paired_bootstrap(per, "full", "b64", metric, cx, n_boot=257, seed=3)
            assert new == _old_paired_bootstrap(per, "full", "b64", metric, cx, n_boot=257, seed=3), (metric, cx)
    one = [p for p in per if p["id"] == 0]
    assert TE.paired_bootstrap(one, "full", "b64", "recall", "all", n_boot=20) == _old_paired_bootstrap(
        one, "full", "b64", "recall", "all", n_boot=20
    )


def test_one_draw_serves_both_level_conventions():
    # the trainer drew one replicate per call; the study one matrix: the same indices from the same seed
    for n in (1, 2, 7, 20):
        rng = np.random.default_rng(n)
        rows = np.stack([rng.integers(0, n, n) for _ in range(31)])
        assert (S.resample(n, 31, np.random.default_rng(n)) == rows).all()
    # the levels differ: exactly 2.5 / 97.5 percent vs (1 - ci) / 2 in floats, which moves the low end by bits
    v = np.random.default_rng(0).normal(size=2000)
    assert S.interval(v, 0.95, levels="percent") == tuple(float(x) for x in np.percentile(v, [2.5, 97.5]))
    assert S.interval(v, 0.95) == tuple(float(x) for x in np.quantile(v, [(1 - 0.95) / 2, 1 - (1 - 0.95) / 2]))
    assert S.interval(v, 0.95)[0] != S.interval(v, 0.95, levels="percent")[0]
    with pytest.raises(UnknownNameError, match="unknown interval levels"):
        S.interval(v, 0.95, levels="rows")


# ---------------------------------------------------------------------------------------------- properties

_vals = st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=2, max_size=25)


@settings(max_examples=40, deadline=None)
@given(st.floats(-1e6, 1e6, allow_nan=False), st.integers(1, 30), st.integers(0, 10**6))
def test_constant_data_ci_is_the_point(c, n, seed):
    est, lo, hi = S.mean_ci([c] * n, n_boot=50, seed=seed)
    assert lo <= est <= hi and lo == hi == est
    num = np.full(n, abs(c))
    v, lo, hi = S.ratio_ci(num, np.full(n, 2.0), n_boot=50, seed=seed)
    if n >= 2:
        assert lo == v == hi


@settings(max_examples=40, deadline=None)
@given(_vals, st.integers(0, 10**6), st.sampled_from(["fraction", "percent"]))
def test_swapping_sides_negates_the_difference(xs, seed, levels):
    a = np.abs(np.asarray(xs))
    b = a[::-1] + 1.0
    ab = S.paired_ratio_diff(a, None, b, None, n_boot=60, seed=seed, levels=levels)
    ba = S.paired_ratio_diff(b, None, a, None, n_boot=60, seed=seed, levels=levels)
    # the point negates exactly; interpolated quantiles of negated replicates up to rounding
    assert ab.diff == -ba.diff
    assert ab.ci_low == pytest.approx(-ba.ci_high, abs=1e-9) and ab.ci_high == pytest.approx(-ba.ci_low, abs=1e-9)
    e1, lo1, hi1, _ = S.paired_mean(a, b, n_boot=60, seed=seed)
    e2, lo2, hi2, _ = S.paired_mean(b, a, n_boot=60, seed=seed)
    assert e1 == pytest.approx(-e2) and lo1 == pytest.approx(-hi2) and hi1 == pytest.approx(-lo2)


@settings(max_examples=40, deadline=None)
@given(_vals, st.integers(0, 10**6))
def test_identical_columns_give_zero_with_zero_width(xs, seed):
    a = np.abs(np.asarray(xs)) + 0.5
    assert S.paired_mean(a, a, n_boot=60, seed=seed)[:3] == (0.0, 0.0, 0.0)
    for levels in ("fraction", "percent"):
        r = S.paired_ratio_diff(a, a + 1, a, a + 1, n_boot=60, seed=seed, levels=levels)
        assert (r.diff, r.ci_low, r.ci_high) == (0.0, 0.0, 0.0)
    i = S.interaction_ratio_diff((a, None, a, None), (a[::-1], None, a[::-1], None), n_boot=60, seed=seed)
    assert (i.interaction, i.ci_low, i.ci_high) == (0.0, 0.0, 0.0)


def test_two_sample_and_auc_known_values():
    t = S.two_sample([1.0, 2.0, 3.0], [4.0, 5.0, 6.0], n_boot=200)
    assert t["diff"] == 3.0 and t["auc"] == 1.0 and t["auc_low"] == t["auc_high"] == 1.0 and t["diff_low"] > 0
    assert S.auc([1.0, 2.0], [2.0]) == 0.75 and math.isnan(S.auc([], [1.0]))

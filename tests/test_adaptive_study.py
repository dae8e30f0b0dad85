"""prunelab.study.adaptive_study (chapter 4): method grids, the paper's numbers, the enhancement table, the τ sweep and
the verdict rules in both directions, figures."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from prunelab.errors import UnknownNameError
from prunelab.study import adaptive_study as A

BASES = ["BAT", "VisPruner", "AttnDiv"]
TAUS = [0, 0.05, 0.1, 0.2]


def test_hybrid_grid_names():
    g = A.hybrid_grid(BASES)
    assert g["method"].tolist() == [
        "BAT",
        "BAT+erank",
        "BAT+inverse",
        "VisPruner",
        "VisPruner+erank",
        "VisPruner+inverse",
        "AttnDiv",
        "AttnDiv+erank",
        "AttnDiv+inverse",
    ]
    p = g.set_index("method")["paper_method"]
    assert p["BAT+erank"] == "BAT+adaptive" and p["AttnDiv"] == "DivPrune+FasterVLM" and pd.isna(p["AttnDiv+inverse"])
    with pytest.raises(UnknownNameError, match="no registered 'DivPrune\\+erank'"):
        A.hybrid_grid(["DivPrune"])


def test_tau_grid_labels_and_errors():
    g = A.tau_grid([0.2, 0, 0.1, 0.05])
    assert g["tau"].tolist() == [0.0, 0.05, 0.1, 0.2]
    assert g["method"].tolist() == ["FasterVLM", "AgilePruner(tau_max=0.05)", "AgilePruner", "AgilePruner(tau_max=0.2)"]
    assert g["spec"].iloc[1] == ("AgilePruner", {"tau_max": 0.05})
    for bad in ([-0.1], [0.1, 0.1], ["x"], [float("nan")]):
        with pytest.raises(UnknownNameError):
            A.tau_grid(bad)


def test_study_methods_dedupes_in_order():
    s = A.study_methods(["FasterVLM", "VisPruner", "AgilePruner"], ["VisPruner"], [0, 0.1, 0.3])
    from prunelab.study.runner import resolve_methods

    labels = [r.label for r in resolve_methods(s["pope"])]
    assert labels == [
        "FasterVLM",
        "VisPruner",
        "AgilePruner",
        "VisPruner+erank",
        "VisPruner+inverse",
        "AgilePruner(tau_max=0.3)",
    ]
    assert [r.label for r in resolve_methods(s["describe"])] == [
        "FasterVLM",
        "VisPruner",
        "AgilePruner",
        "AgilePruner(tau_max=0.3)",
    ]


def test_paper_numbers():
    assert A.paper_pope("AgilePruner", 128) == (87.4, "benchmarks")
    assert A.paper_pope("FasterVLM", 64) == (77.4, "hybrid_enhancement")
    assert A.paper_pope("PruMerge+fixed", 64)[0] == 75.7
    assert math.isnan(A.paper_pope("BAT+erank", 16)[0])
    pe = A.paper_enhancement(BASES).set_index(["base", "variant", "budget"])
    assert pe.loc[("BAT", "+erank", 128), "POPE"] == 86.8 and pe.loc[("BAT", "+erank", 128), "Rel%"] == 97.91
    assert pe.loc[("VisPruner", "+inverse", 64), "Rel%"] == 91.83 and math.isnan(
        pe.loc[("AttnDiv", "+inverse", 64), "POPE"]
    )


def test_paper_beaters_match_the_chapter_loop_they_replace():
    # notebook 04 (commit f392b85) looped over the old PAPER_NAMES map, skipping AgilePruner and PruMerge+fixed
    old = {
        "FasterVLM": "FasterVLM",
        "DivPrune": "DivPrune",
        "VisPruner": "VisPruner",
        "VisionZip": "VisionZip",
        "PruMerge+fixed": "PruMerge+",
        "PruMerge+": "PruMerge+",
        "FPS": "FPSPruner",
        "AgilePruner": "AgilePruner",
    }
    want = []
    for b in (64, 128):
        pa = A.paper_pope("AgilePruner", b)[0]
        for m, pn in old.items():
            pm = A.paper_pope(m, b)[0]
            if m not in ("AgilePruner", "PruMerge+fixed") and pm > pa:
                want.append(f"{pn} at T = {b}: {pm:.1f} vs {pa:.1f}")
    assert A.paper_beaters((64, 128)) == want == ["DivPrune at T = 64: 85.5 vs 84.1"]
    assert A.paper_beaters((32,)) == ["DivPrune at T = 32: 81.5 vs 80.1"]


# ---- synthetic runs ------------------------------------------------------------------------------------------


def _accuracy(method: str, reverse: bool) -> float:
    p = {
        "FasterVLM": 0.70,
        "DivPrune": 0.72,
        "VisPruner": 0.74,
        "AgilePruner": 0.85,
        "AgilePruner(tau_max=0.05)": 0.80,
        "AgilePruner(tau_max=0.2)": 0.83,
    }
    if method in p:
        v = p[method]
        return (1.5 - v) if reverse and method != "FasterVLM" and "Agile" in method else v
    base, _, var = method.partition("+")
    v = {"": 0.72, "erank": 0.86, "inverse": 0.64}[var]
    if reverse:
        v = {"": 0.72, "erank": 0.60, "inverse": 0.84}[var]
    return v


def _pope(methods, n_img=30, reverse=False, seed=0, n_q=12):
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_img):
        for m in methods:
            for b in (64, 128):
                for _q in range(n_q):
                    rows.append(
                        {
                            "image_id": f"i{i:02d}",
                            "method": m,
                            "family": "x",
                            "budget": b,
                            "correct": bool(rng.random() < _accuracy(m, reverse)),
                        }
                    )
    return pd.DataFrame(rows)


def _describe(methods, n_img=30, reverse=False, seed=0):
    rng = np.random.default_rng(seed)
    lam = {"FasterVLM": 0.3, "DivPrune": 2.0, "AgilePruner": 0.6}
    rec = {"FasterVLM": 0.4, "DivPrune": 0.8, "AgilePruner": 0.7}
    rows = []
    for i in range(n_img):
        for m in methods:
            h_m, r_m = lam.get(m, 1.0), rec.get(m, 0.6)
            if reverse and m == "AgilePruner":
                h_m, r_m = 3.0, 0.3
            for b in (64, 128):
                h, c = int(rng.poisson(h_m)), int(rng.binomial(5, r_m))
                rows.append(
                    {
                        "image_id": f"i{i:02d}",
                        "method": m,
                        "budget": b,
                        "n_hallucinated": h,
                        "n_mentions": h + c,
                        "chair_s": int(h > 0),
                        "n_gt": 5,
                        "n_gt_covered": c,
                        "length": 40,
                    }
                )
    return pd.DataFrame(rows)


def _vision(grid, n_img=20, reverse=False, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_img):
        base = rng.normal(30, 3)
        for r in grid.itertuples(index=False):
            for b in (64, 128):
                gain = (-1 if reverse else 1) * 20 * r.tau
                rows.append(
                    {
                        "image_id": f"i{i:02d}",
                        "method": r.method,
                        "family": "adaptive",
                        "budget": b,
                        "erank_kept_vision": base + b / 10 + gain + rng.normal(0, 0.2),
                        "attention_mass_kept": 0.8 - r.tau,
                        "n_kept": b,
                        "kept_indices": list(range(b)),
                        "method_stats": json.dumps({"n_filled": int(100 * r.tau), "n_removed_by_threshold": 3}),
                    }
                )
    return pd.DataFrame(rows)


METHODS = ["FasterVLM", "DivPrune", "VisPruner", "AgilePruner"]


def _all(reverse=False):
    grid = A.tau_grid(TAUS)
    pope_methods = list(dict.fromkeys(METHODS + list(A.hybrid_grid(BASES)["method"]) + list(grid["method"])))
    return (
        _pope(pope_methods, reverse=reverse),
        _describe(list(dict.fromkeys(METHODS + list(grid["method"]))), reverse=reverse),
        _vision(grid, reverse=reverse),
    )


def test_enhancement_table_and_layout():
    pope, _, _ = _all()
    t = A.enhancement_table(pope, BASES, n_boot=300)
    assert len(t) == 9 * 2
    er = t[(t["variant"] == "+erank")]
    assert (er["diff_vs_fixed"] > 0).all() and (er["diff_low"] > 0).all()
    assert t[t["variant"] == "fixed"]["diff_vs_fixed"].isna().all()
    r = t[(t["method"] == "BAT+erank") & (t["budget"] == 128)].iloc[0]
    assert r["paper_POPE"] == 86.8 and r["paper_diff_vs_fixed"] == pytest.approx(1.5) and r["paper_Rel%"] == 97.91
    sel = pope[(pope["method"] == "BAT+erank") & (pope["budget"] == 128)]
    assert r["accuracy"] == pytest.approx(100 * sel["correct"].mean())
    lay = A.enhancement_layout(t)
    assert lay.index.tolist()[:3] == [("BAT", "fixed"), ("BAT", "+erank"), ("BAT", "+inverse")]
    assert lay.columns.tolist()[:4] == [
        ("T = 64", "this run"),
        ("T = 64", "Δ fixed"),
        ("T = 64", "paper POPE"),
        ("T = 64", "paper Rel%"),
    ]


def test_tau_table_and_erank_gain():
    pope, desc, vis = _all()
    grid = A.tau_grid(TAUS)
    tab = A.tau_table(grid, vision=vis, pope=pope, describe=desc, n_boot=200)
    assert len(tab) == len(TAUS) * 2 and tab["tau"].tolist()[:4] == TAUS
    r = tab[(tab["tau"] == 0.2) & (tab["budget"] == 64)].iloc[0]
    assert r["n_filled"] == pytest.approx(20) and r["attention_kept"] == pytest.approx(0.6)
    assert r["accuracy_low"] <= r["accuracy"] <= r["accuracy_high"] and math.isfinite(r["CHAIR_i"])
    gain = A.tau_erank_gain(vis, grid, n_boot=200)
    assert len(gain) == 3 * 2 and (gain["ci_low"] > 0).all()
    assert gain.set_index(["tau", "budget"]).loc[(0.2, 64), "mean"] == pytest.approx(4.0, abs=0.3)
    with pytest.raises(UnknownNameError):
        A.tau_table(grid)


def test_claims_replicate_when_the_data_say_so():
    from prunelab.study.verdict import verdict_table

    pope, desc, vis = _all()
    claims = A.finding4_claims(pope, desc, vis, methods=METHODS, bases=BASES, taus=TAUS, n_boot=400)
    t = verdict_table(claims)
    assert len(t) == 6 and (t["outcome"].iloc[:5] == "replicates").all(), t[["claim", "outcome", "this run"]]
    # the τ claim follows from the method's definition: a setup check, last, not counted
    assert t["outcome"].iloc[5] == "setup check: replicates" and t["claim"].iloc[5].startswith("The threshold τ")
    assert "not counted" in t["rule"].iloc[5]
    hal = {k.condition: k for k in claims[4].checks}
    # the paper's CHAIR_i at T=64: AgilePruner 15.9, DivPrune 18.0
    assert hal["CHAIR_i: AgilePruner − DivPrune, T=64"].paper_effect == pytest.approx(-2.1)
    assert all(k.n == 30 for k in claims[0].checks + claims[4].checks)  # images behind each paired difference
    assert "86.8" in t["paper"].iloc[0] and "87.4" in t["paper"].iloc[2]


def test_claims_fail_when_the_data_say_so():
    from prunelab.study.verdict import verdict_table

    pope, desc, vis = _all(reverse=True)
    t = verdict_table(A.finding4_claims(pope, desc, vis, methods=METHODS, bases=BASES, taus=TAUS, n_boot=400))
    assert not t["outcome"].str.contains("replicates").any(), t[["claim", "outcome", "this run"]]
    assert (t["outcome"].iloc[[0, 1, 3, 4]] == "contradicts").all(), t[["claim", "outcome", "this run"]]
    assert t["outcome"].iloc[5] == "setup check: contradicts"


def test_claims_without_the_needed_methods_are_not_tested():
    from prunelab.study.verdict import verdict_table

    pope, _, _ = _all()
    pope = pope[pope["method"].isin(["FasterVLM", "DivPrune", "BAT", "BAT+erank", "BAT+inverse"])]
    t = verdict_table(
        A.finding4_claims(pope, None, None, methods=["FasterVLM", "DivPrune"], bases=["BAT"], taus=[0, 0.1], n_boot=200)
    )
    assert t["outcome"].tolist()[:2] == ["replicates", "replicates"]
    assert (t["outcome"].iloc[2:5] == "not testable here").all()
    assert t["outcome"].iloc[5] == "setup check: not testable here"


def test_figures_draw():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pope, desc, vis = _all()
    t = A.enhancement_table(pope, BASES, n_boot=100)
    d = t[t["variant"] != "fixed"].rename(
        columns={
            "diff_vs_fixed": "diff",
            "diff_low": "ci_low",
            "diff_high": "ci_high",
            "paper_diff_vs_fixed": "paper_diff",
            "method": "label",
        }
    )
    f1 = A.delta_figure(d)
    tab = A.tau_table(A.tau_grid(TAUS), vision=vis, pope=pope, describe=desc, n_boot=100)
    f2 = A.tau_figure(tab)
    assert len(f1.axes) == 2 and len(f2.axes) == 4
    for f in (f1, f2):
        plt.close(f)

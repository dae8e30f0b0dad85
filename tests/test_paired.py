"""prunelab.study.paired: ratio-of-sums metrics compared between methods or pooled families on the same images (known
values, agreement with scoring.paired_chair, stratified interaction, errors)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from prunelab.errors import UnknownNameError
from prunelab.study import paired as Pd


def _pope(n_img=30, p=None, seed=0, n_q=10):
    """POPE-like rows: per image (half simple, half complex) x method x budget, ``n_q`` questions answered correctly
    with probability ``p[(method, split)]``."""
    p = p or {("A", "simple"): 0.9, ("A", "complex"): 0.6, ("B", "simple"): 0.6, ("B", "complex"): 0.9}
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_img):
        split = "simple" if i % 2 == 0 else "complex"
        for (m, s), pr in p.items():
            if s != split:
                continue
            for b in (64, 128):
                for q in range(n_q):
                    ok = bool(rng.random() < pr)
                    rows.append(
                        {
                            "image_id": f"i{i:02d}",
                            "method": m,
                            "family": m,
                            "budget": b,
                            "split": split,
                            "question_id": f"q{q}",
                            "correct": ok,
                        }
                    )
    return pd.DataFrame(rows)


def test_compare_known_values_and_pooling():
    df = pd.DataFrame(
        {
            "image_id": ["x", "x", "y", "y", "x", "y", "x", "y"],
            "budget": [1] * 8,
            "method": ["A", "A", "A", "A", "B", "B", "C", "C"],
            "correct": [1, 1, 1, 0, 0, 1, 1, 1],
        }
    )
    c = Pd.compare(df, "A", "B", "Accuracy", n_boot=200).iloc[0]
    assert (
        c["value_a"] == pytest.approx(75.0) and c["value_b"] == pytest.approx(50.0) and c["diff"] == pytest.approx(25.0)
    )
    assert c["n"] == 2 and c["ci_low"] <= c["diff"] <= c["ci_high"]
    pooled = Pd.compare(df, ["B", "C"], "A", "Accuracy", n_boot=200).iloc[0]
    assert pooled["a"] == "B + C" and pooled["value_a"] == pytest.approx(75.0)  # (0+1+1+1)/4
    # a numeric column is averaged per row
    df["x"] = [1.0, 3.0, 5.0, 7.0, 0.0, 0.0, 0.0, 0.0]
    assert Pd.compare(df, "A", "B", "x").iloc[0]["value_a"] == pytest.approx(4.0)


def test_compare_equals_paired_ratio_diff_on_the_image_arrays():
    from prunelab.eval.stats import paired_ratio_diff

    rng = np.random.default_rng(1)
    rows = []
    for i in range(25):
        for m, lam in (("A", 0.5), ("B", 2.0)):
            for b in (64, 128):
                h, c = int(rng.poisson(lam)), int(rng.integers(0, 4))
                rows.append(
                    {
                        "image_id": f"i{i:02d}",
                        "method": m,
                        "budget": b,
                        "n_hallucinated": h,
                        "n_mentions": h + c,
                        "chair_s": int(h > 0),
                        "n_gt": 4,
                        "n_gt_covered": c,
                        "length": 40 + h,
                    }
                )
    df = pd.DataFrame(rows)
    cols = {
        "CHAIR_i": ("n_hallucinated", "n_mentions"),
        "CHAIR_s": ("chair_s", None),
        "Recall": ("n_gt_covered", "n_gt"),
    }
    for metric, (num, den) in {**cols, "Len": ("length", None)}.items():
        ours = Pd.compare(df, "A", "B", metric, n_boot=300, seed=3)
        for r in ours.itertuples(index=False):
            g = df[df["budget"] == r.budget].sort_values("image_id")
            A, B = g[g["method"] == "A"], g[g["method"] == "B"]
            ref = paired_ratio_diff(
                A[num], A[den] if den else None, B[num], B[den] if den else None, n_boot=300, seed=3
            )
            scale = 1.0 if metric == "Len" else 100.0
            got = (r.value_a, r.value_b, r.diff, r.ci_low, r.ci_high)
            want = (ref.value_a, ref.value_b, ref.diff, ref.ci_low, ref.ci_high)
            assert np.allclose(got, np.array(want) * scale) and r.n == 25, (metric, r.budget)


def test_paired_chair_is_compare_with_the_flagged_captions_kept():
    from prunelab.study.scoring import paired_chair

    df = pd.DataFrame(
        {
            "image_id": ["x", "y", "x", "y"],
            "budget": 1,
            "method": ["A", "A", "B", "B"],
            "n_hallucinated": [1, 9, 0, 0],
            "n_mentions": [2, 9, 2, 2],
            "chair_flag": ["", "no_ground_truth", "", ""],
        }
    )
    r = paired_chair(df, "A", "B", "CHAIR_i").iloc[0]
    assert r["value_a"] == pytest.approx(100 * 10 / 11) and r["value_b"] == 0.0 and r["n"] == 2
    assert Pd.compare(df, "A", "B", "CHAIR_i").iloc[0]["n"] == 1  # compare leaves the flagged caption out
    with pytest.raises(UnknownNameError, match="unknown CHAIR metric"):
        paired_chair(df, "A", "B", "Accuracy")


def test_chair_flags_excluded_as_the_evaluator_does():
    df = pd.DataFrame(
        {
            "image_id": ["x", "y", "x", "y"],
            "budget": 1,
            "method": ["A", "A", "B", "B"],
            "n_hallucinated": [1, 9, 0, 0],
            "n_mentions": [2, 9, 2, 2],
            "chair_flag": ["", "no_ground_truth", "", ""],
        }
    )
    c = Pd.compare(df, "A", "B", "CHAIR_i").iloc[0]
    assert c["value_a"] == pytest.approx(50.0) and c["n"] == 1


def test_interaction_direction_and_ci():
    df = _pope(40)
    r = Pd.interaction(df, "A", "B", "Accuracy", n_boot=500)
    assert len(r) == 2 and set(r["budget"]) == {64, 128}
    for x in r.itertuples(index=False):
        assert x.diff_simple > 0 > x.diff_complex
        assert x.interaction == pytest.approx(x.diff_simple - x.diff_complex)
        assert x.ci_low > 0 and x.n_simple == 20 and x.n_complex == 20
    flipped = Pd.interaction(df, "B", "A", "Accuracy", n_boot=500)
    assert (flipped["ci_high"] < 0).all()
    same = _pope(40, p={(m, s): 0.75 for m in "AB" for s in ("simple", "complex")})
    z = Pd.interaction(same, "A", "B", "Accuracy", n_boot=500)
    assert (z["ci_low"] < 0).all() and (z["ci_high"] > 0).all()


def test_compare_is_seeded_and_per_group():
    df = _pope(20)
    a = Pd.compare(df, "A", "B", "Accuracy", by=("budget", "split"), n_boot=300, seed=5)
    b = Pd.compare(df, "A", "B", "Accuracy", by=("budget", "split"), n_boot=300, seed=5)
    pd.testing.assert_frame_equal(a, b)
    assert len(a) == 4
    simple = a[a["split"] == "simple"]
    assert (simple["diff"] > 0).all()


def test_metric_table_matches_direct_ratios():
    df = _pope(10)
    t = Pd.metric_table(df, "Accuracy", by=("method", "budget", "split"), n_boot=200)
    for r in t.itertuples(index=False):
        sel = df[(df["method"] == r.method) & (df["budget"] == r.budget) & (df["split"] == r.split)]
        assert r.value == pytest.approx(100 * sel["correct"].mean())
        assert r.n == sel["image_id"].nunique() and r.ci_low <= r.value <= r.ci_high


def test_single_image_groups_have_no_interval():
    df = _pope(2)
    c = Pd.compare(df, "A", "B", "Accuracy", by=("budget", "split"))
    assert (c["n"] == 1).all() and c["ci_low"].isna().all()


def test_errors_are_one_line():
    df = _pope(4)
    with pytest.raises(UnknownNameError, match="no rows for method 'Z'"):
        Pd.compare(df, "A", "Z", "Accuracy")
    with pytest.raises(UnknownNameError, match="needs column 'n_hallucinated'"):
        Pd.compare(df, "A", "B", "CHAIR_i")
    with pytest.raises(UnknownNameError, match="ci must be"):
        Pd.compare(df, "A", "B", "Accuracy", ci=95)
    with pytest.raises(UnknownNameError, match="column 'split'"):
        Pd.interaction(df.drop(columns="split"), "A", "B", "Accuracy")
    with pytest.raises(UnknownNameError, match="include 'method'"):
        Pd.metric_table(df, "Accuracy", by=("budget",))

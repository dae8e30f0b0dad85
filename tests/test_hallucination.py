"""prunelab.study.hallucination (chapter 2 helpers): paper numbers, layout, per-image correlations, verdict rules that
follow the data in both directions, figures, examples and the explorer."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from prunelab.study import hallucination as H
from prunelab.study.generation import VANILLA

# method, family, mean hallucinated mentions, recall probability, erank of kept tokens
PROFILE = [
    ("FasterVLM", "attention", 0.4, 0.45, 20.0),
    ("PruMerge+fixed", "attention", 0.5, 0.40, 22.0),
    ("DivPrune", "diversity", 2.0, 0.80, 40.0),
    ("FPS", "diversity", 2.2, 0.78, 42.0),
    ("AgilePruner", "adaptive", 0.6, 0.70, 30.0),
]


def _synth(n_img: int = 40, seed: int = 0, reverse: bool = False) -> pd.DataFrame:
    """A scored describe table with a known structure (``reverse`` swaps hallucination and recall between families)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_img):
        for b in (64, 128):
            for m, fam, lam, rec, er in PROFILE:
                if reverse and fam in ("attention", "diversity"):
                    other = {"attention": PROFILE[2], "diversity": PROFILE[0]}[fam]
                    lam, rec = other[2], other[3]
                n_gt = 4
                h = int(rng.poisson(lam))
                covered = int(rng.binomial(n_gt, rec))
                rows.append(
                    {
                        "image_set": "synthetic",
                        "image_id": f"i{i}",
                        "complexity": "simple",
                        "method": m,
                        "family": fam,
                        "budget": b,
                        "n_mentions": covered + h,
                        "n_hallucinated": h,
                        "chair_s": int(h > 0),
                        "n_gt": n_gt,
                        "n_gt_covered": covered,
                        "length": 50 + h,
                        "erank_kept_projected": er + rng.normal(0, 1),
                        "attention_mass_kept": 0.9 - er / 100,
                    }
                )
    return pd.DataFrame(rows)


def test_paper_chair_matches_the_csv():
    from prunelab.study.verdict import paper_value

    p = H.paper_chair(["Vanilla", "FasterVLM", "PruMerge+fixed", "VisionZip", "FPS"])
    assert set(p["method"]) == {"Vanilla", "FasterVLM", "PruMerge+fixed", "FPS"}  # VisionZip is not in the table
    assert p.loc[p["method"] == "Vanilla", "budget"].tolist() == [576]
    r = p[(p["method"] == "FPS") & (p["budget"] == 64)].iloc[0]
    assert (
        r["paper_method"] == "FPSPruner"
        and r["CHAIR_s"] == paper_value("chair", "FPSPruner", "CHAIR_s", visual_tokens=64) == 58.6
    )
    assert p[(p["method"] == "PruMerge+fixed") & (p["budget"] == 128)]["Recall"].item() == 71.5


def test_paper_chair_default_rows_in_the_papers_order():
    p = H.paper_chair()
    assert list(dict.fromkeys(p["method"])) == [
        "Vanilla",
        "FasterVLM",
        "PruMerge+fixed",
        "VisPruner",
        "DivPrune",
        "FPS",
        "AgilePruner",
    ]
    assert list(dict.fromkeys(p["paper_method"]))[2] == "PruMerge+" and len(p) == 1 + 6 * 2


def test_chair_layout_puts_budgets_side_by_side():
    t = pd.DataFrame(
        {
            "method": ["A", "B", "A", "B", VANILLA],
            "budget": [64, 64, 128, 128, 576],
            **{m: [1.0, 2.0, 3.0, 4.0, 5.0] for m in H.METRICS},
        }
    )
    w = H.chair_layout(t)
    assert list(w.index) == ["A", "B", VANILLA]
    assert list(w.columns.get_level_values(0)) == ["T = 64"] * 4 + ["T = 128"] * 4 + ["all 576"] * 4
    assert w.loc["B", ("T = 128", "CHAIR_i")] == 4.0 and w.loc[VANILLA, ("all 576", "Len")] == 5.0
    assert math.isnan(w.loc["A", ("all 576", "CHAIR_s")])


def test_per_image_correlation_known_values():
    df = pd.DataFrame(
        {
            "image_id": ["a"] * 3 + ["b"] * 3 + ["c"] * 3 + ["a"],
            "budget": [64] * 10,
            "method": ["m1", "m2", "m3"] * 3 + [VANILLA],
            "x": [1, 2, 3, 1, 2, 3, 1, 2, 3, 99],
            "y": [0, 1, 5, 4, 2, 0, 1, 1, 1, -5],
        }
    )
    per = H.per_image_correlations(df, "x", "y").set_index("image_id")
    assert per.loc["a", "rho"] == pytest.approx(1.0) and per.loc["b", "rho"] == pytest.approx(-1.0)
    assert math.isnan(per.loc["c", "rho"])  # nothing varies: undefined, not 0
    assert (per["n_methods"] == 3).all()  # the unpruned row is left out
    ties = pd.DataFrame(
        {"image_id": ["a"] * 4, "budget": [1] * 4, "method": list("pqrs"), "x": [1, 2, 3, 4], "y": [0, 0, 1, 1]}
    )
    assert H.per_image_correlations(ties, "x", "y")["rho"].item() == pytest.approx(
        np.corrcoef([1, 2, 3, 4], [1.5, 1.5, 3.5, 3.5])[0, 1]
    )


def test_claims_replicate_when_the_data_say_so():
    from prunelab.study.verdict import verdict_table

    claims = H.finding2_claims(_synth(), n_boot=400)
    t = verdict_table(claims)
    assert len(t) == 5
    assert list(t["outcome"]) == ["replicates"] * 5, t[["claim", "this run", "outcome"]].to_string()
    assert t["checks"].iloc[0] == "8/8 replicate"  # 2 diversity x 2 attention x 2 budgets
    assert (t["n to resolve"] == "").all()  # every claim resolved
    # the paper's effect on the same scale beside ours: DivPrune − FasterVLM CHAIR_s at T=64 is 57.4 − 45.4
    k = next(k for k in claims[0].checks if k.condition == "DivPrune − FasterVLM, T=64")
    assert k.paper_effect == 12.0 and k.n == 40
    assert "DivPrune − FasterVLM, T=64: " in t["this run"].iloc[0] and ", paper +12.0" in t["this run"].iloc[0]
    assert "DivPrune 57.4" in t["paper"].iloc[0] and "FasterVLM 45.4" in t["paper"].iloc[0]


def test_paper_chair_value_maps_labels():
    assert H.paper_chair_value("PruMerge+fixed", "CHAIR_s", 64) == 45.2
    assert H.paper_chair_value("FPS", "CHAIR_i", 64) == 18.6  # FPSPruner in the paper
    assert math.isnan(H.paper_chair_value("PruMerge+", "CHAIR_s", 64))  # adaptive count: not the paper's row
    assert math.isnan(H.paper_chair_value("DivPrune", "CHAIR_s", 192))  # the paper has no T=192


def test_claims_fail_when_the_data_go_the_other_way():
    from prunelab.study.verdict import verdict_table

    t = verdict_table(H.finding2_claims(_synth(reverse=True), n_boot=400)).set_index("claim")
    for c in t.index[:3]:
        assert t.loc[c, "outcome"] == "contradicts", c
    # the erank <-> hallucination link now runs backwards too
    assert t.iloc[3]["outcome"] == "contradicts"


def test_claims_without_a_family_are_not_tested():
    df = _synth(n_img=6)
    df = df[df["family"] != "diversity"]
    claims = H.finding2_claims(df, n_boot=50)
    assert [c.outcome for c in claims[:3]] == ["not testable here"] * 3
    assert all("AgilePruner" not in c.claim for c in claims)  # no diversity method to compare with


def test_figures_and_examples(chair_parser):
    import matplotlib

    matplotlib.use("Agg")
    from PIL import Image

    df = _synth(n_img=8)
    df["caption"] = "A dog and a cat sit near a bus."
    df["gt_objects"] = [["dog", "bus"]] * len(df)
    df["n_words"] = 9
    df["kept_indices"] = [list(range(0, 576, 9))] * len(df)
    df["n_tokens"] = 576
    df["chair_flag"] = None
    table = pd.DataFrame(
        [
            {**{"method": m, "budget": b, "family": f}, **{k: 10.0 * (j + 1) for j, k in enumerate(H.METRICS)}}
            for m, f, *_ in PROFILE
            for b in (64, 128)
        ]
    )
    assert H.tradeoff_figure(table, df, paper=H.paper_chair(list(df["method"].unique()))).axes
    assert len(H.chair_bars(table, df).axes) == 3
    per, summ = H.correlation_summary(df, n_boot=100)
    assert set(summ["x"]) == {"erank_kept_projected", "attention_mass_kept"} and (summ["n"] == 8).all()
    assert len(H.correlation_figure(per, summ).axes) == 2
    images = {f"i{i}": Image.new("RGB", (64, 64), (i * 20, 90, 30)) for i in range(2)}
    page = H.examples_html(
        df, ["i0", "i1"], budget=64, methods=["FasterVLM", "DivPrune"], images=images, parser=chair_parser
    )
    assert page.count("<table>") == 2 and page.count("hallucinated)") == 4  # "cat" in 2 captions x 2 images
    assert "data:image/jpeg;base64," in page
    box = H.caption_explorer(df, images, image_ids=["i0", "i1"], methods=["FasterVLM", "DivPrune"], parser=chair_parser)
    top = box.children[1]
    assert (
        len(top.children) == 2 and len(top.children[0].children) == 2 and len(top.children[0].children[0].children) == 2
    )
    with pytest.raises(ValueError):
        H.caption_explorer(df, images, image_ids=["i0", "i1"], max_views=3, parser=chair_parser)

"""prunelab.study.complexity (chapter 3): splits, separation of labelled images by a measure, per-split POPE tables,
family gaps and the verdict rules in both directions, figures, and the model-tower encoder (same kept tokens as
the generation loop)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from prunelab.errors import UnknownNameError
from prunelab.eval import stats
from prunelab.study import complexity as C

# method, family, P(correct) on simple images, on complex images
PROFILE = [
    ("FasterVLM", "attention", 0.92, 0.62),
    ("PruMerge+fixed", "attention", 0.90, 0.60),
    ("DivPrune", "diversity", 0.65, 0.90),
    ("FPS", "diversity", 0.62, 0.88),
]


def _img(n=20, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        simple = i % 2 == 0
        rows.append(
            {
                "image_id": f"i{i:02d}",
                "complexity": "simple" if simple else "complex",
                "n_tokens": 576,
                "attention_entropy": (4.6 if simple else 5.4) + rng.normal(0, 0.1),
                "attention_entropy_norm": (0.72 if simple else 0.85) + rng.normal(0, 0.01),
                "erank_full_vision": (35.0 if simple else 88.0) + rng.normal(0, 5),
                "erank_full_projected": 50.0,
            }
        )
    return pd.DataFrame(rows)


def _pope(img, reverse=False, seed=0, n_q=12):
    rng = np.random.default_rng(seed)
    rows = []
    for r in img.itertuples(index=False):
        for m, fam, ps, pc in PROFILE:
            p = ps if r.complexity == "simple" else pc
            if reverse:
                p = pc if r.complexity == "simple" else ps
            for b in (64, 128):
                for q in range(n_q):
                    lab = "yes" if q % 2 == 0 else "no"
                    ok = bool(rng.random() < p)
                    ans = lab if ok else ("no" if lab == "yes" else "yes")
                    rows.append(
                        {
                            "image_id": r.image_id,
                            "complexity": r.complexity,
                            "method": m,
                            "family": fam,
                            "budget": b,
                            "setting": "random",
                            "question_id": f"q{q}",
                            "label": lab,
                            "text": ans,
                            "pred": ans,
                            "correct": ok,
                        }
                    )
    return pd.DataFrame(rows)


def _describe(img, reverse=False, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for r in img.itertuples(index=False):
        simple = (r.complexity == "simple") != reverse
        for m, fam, _, _ in PROFILE:
            att = fam == "attention"
            lam = (0.2 if att else 1.5) if simple else 0.8
            rec = 0.5 if simple else (0.4 if att else 0.8)
            for b in (64, 128):
                h, cov = int(rng.poisson(lam)), int(rng.binomial(5, rec))
                rows.append(
                    {
                        "image_id": r.image_id,
                        "complexity": r.complexity,
                        "method": m,
                        "family": fam,
                        "budget": b,
                        "n_hallucinated": h,
                        "n_mentions": h + cov,
                        "chair_s": int(h > 0),
                        "n_gt": 5,
                        "n_gt_covered": cov,
                        "length": 50,
                    }
                )
    return pd.DataFrame(rows)


def test_assign_split_by_label_and_median():
    img = _img(10)
    lab = C.assign_split(img, "label")
    assert lab.to_dict() == dict(zip(img["image_id"], img["complexity"]))
    er = C.assign_split(img, "erank")
    assert (er == "complex").sum() == 5 and er[img.loc[img["erank_full_vision"].idxmax(), "image_id"]] == "complex"
    ties = pd.DataFrame(
        {
            "image_id": list("abcd"),
            "complexity": None,
            "attention_entropy": [1.0, 1.0, 1.0, 2.0],
            "erank_full_vision": 1.0,
        }
    )
    assert C.assign_split(ties, "entropy").tolist() == ["simple", "simple", "simple", "complex"]
    medium = img.assign(complexity=["medium"] + list(img["complexity"][1:]))
    assert C.assign_split(medium, "label").iloc[0] is None
    with pytest.raises(UnknownNameError, match="split_by='erank'"):
        C.assign_split(img.assign(complexity=None), "label")
    with pytest.raises(UnknownNameError, match="unknown split"):
        C.assign_split(img, "size")


def test_add_split_drops_unsplit_rows():
    df = pd.DataFrame({"image_id": ["a", "a", "b", "c"], "v": [1, 2, 3, 4]})
    out = C.add_split(df, pd.Series({"a": "simple", "b": None, "c": "complex"}))
    assert out["image_id"].tolist() == ["a", "a", "c"] and out["split"].tolist() == ["simple", "simple", "complex"]


def test_separation_known_values():
    img = pd.DataFrame(
        {
            "image_id": list("abcdef"),
            "complexity": ["simple"] * 3 + ["complex"] * 3,
            "m": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
        }
    )
    s = C.separation(img, "m", n_boot=300)
    assert s["mean_simple"] == 2.0 and s["mean_complex"] == 5.0 and s["diff"] == 3.0
    assert s["auc"] == 1.0 and s["auc_low"] == 1.0 and s["auc_high"] == 1.0 and s["diff_low"] > 0
    rev = C.separation(img.assign(m=img["m"][::-1].to_numpy()), "m", n_boot=300)
    assert rev["auc"] == 0.0 and rev["diff"] == -3.0
    flat = C.separation(img.assign(m=1.0), "m", n_boot=300)
    assert flat["auc"] == 0.5 and flat["auc_low"] == 0.5
    # the bootstrap AUC (rank formula) equals the pairwise definition on any resample
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=7), rng.normal(size=5) + 0.5
    from scipy.stats import rankdata

    r = rankdata(np.concatenate([a, b]))[len(a) :].sum()
    assert (r - len(b) * (len(b) + 1) / 2) / (len(a) * len(b)) == pytest.approx(stats.auc(a, b))


def test_split_agreement_and_paper_examples():
    img = _img(20)
    ag = C.split_agreement(img).set_index("split_by")["agreement"]
    assert ag["erank"] == 1.0 and ag["entropy"] == 1.0
    ex = C.paper_examples().set_index("example")
    assert ex.loc["meeting-room", "erank"] == 122 and ex.loc["hollywood-sign", "attention_entropy"] == 4.39
    assert set(ex["split"]) == {"simple", "complex"}


def test_accuracy_table_counts_unparsed_as_wrong():
    img = _img(4)
    pope = C.add_split(_pope(img), C.assign_split(img))
    first = pope.index[(pope["method"] == "FasterVLM") & (pope["budget"] == 64)][0]
    pope.loc[first, ["text", "pred", "correct"]] = ["maybe", None, False]
    t = C.accuracy_table(pope, n_boot=100)
    r = t[(t["method"] == "FasterVLM") & (t["budget"] == 64)]
    sel = pope[(pope["method"] == "FasterVLM") & (pope["budget"] == 64)]
    assert r["n_unparsed"].sum() == 1 and r["n_questions"].sum() == len(sel)
    for x in r.itertuples(index=False):
        s = sel[sel["split"] == x.split]
        assert x.Accuracy == pytest.approx(100 * s["correct"].mean())
    assert list(t["split"][:2]) == ["simple", "complex"] and t["family"].notna().all()


def test_split_layout_and_check_split():
    t = pd.DataFrame(
        {
            "method": ["A", "A", "A", "A", "Vanilla", "Vanilla"],
            "budget": [64, 64, 128, 128, 576, 576],
            "split": ["simple", "complex"] * 3,
            "v": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
        }
    )
    w = C.split_layout(t, ["v"])
    assert w.columns.tolist() == [
        ("T = 64", "simple", "v"),
        ("T = 64", "complex", "v"),
        ("T = 128", "simple", "v"),
        ("T = 128", "complex", "v"),
        ("all 576", "simple", "v"),
        ("all 576", "complex", "v"),
    ]
    assert w.loc["A", ("T = 128", "complex", "v")] == 4.0 and math.isnan(w.loc["Vanilla", ("T = 64", "simple", "v")])
    assert C.check_split("entropy") == "entropy"
    with pytest.raises(UnknownNameError, match="unknown split 'size'"):
        C.check_split("size")
    from prunelab.study.data import ImageItem

    items = [ImageItem(id="a", source="coco:x"), ImageItem(id="b", source="coco:x", complexity="medium")]
    with pytest.raises(UnknownNameError, match="split_by='erank'"):
        C.check_split("label", items)
    assert C.check_split("erank", items) == "erank"
    assert C.check_split("label", items + [ImageItem(id="c", source="photos", complexity="simple")]) == "label"


def test_claims_replicate_when_the_data_say_so():
    from prunelab.study.verdict import verdict_table

    img = _img(24)
    sp = C.assign_split(img)
    claims = C.finding3_claims(
        C.add_split(_pope(img), sp),
        C.add_split(_describe(img), sp),
        img.assign(split=img["image_id"].map(sp)),
        n_boot=400,
    )
    t = verdict_table(claims)
    assert len(t) == 7 and (t["outcome"] == "replicates").all(), t[["claim", "outcome", "this run"]]
    assert claims[0].checks[0].n == 24 and claims[2].checks[0].n == 12  # all images; the simple ones
    assert [c.n for c in claims[4].checks] == [24, 24]  # the interaction uses both splits
    assert not any(c.by_construction for c in claims)  # no image_set column: labels not known to be generated


def test_claims_fail_when_the_data_say_so():
    from prunelab.study.verdict import verdict_table

    img = _img(24)
    sp = C.assign_split(img)
    claims = C.finding3_claims(
        C.add_split(_pope(img, reverse=True), sp),
        C.add_split(_describe(img, reverse=True), sp),
        img.assign(split=img["image_id"].map(sp)),
        n_boot=400,
    )
    t = verdict_table(claims).set_index("claim")
    assert (t["outcome"].iloc[:2] == "replicates").all()  # the images themselves did not change
    assert (t["outcome"].iloc[2:5] == "contradicts").all(), t["outcome"]  # the three POPE rows, resolved against
    assert not (t["outcome"].iloc[2:] == "replicates").any(), t["outcome"]


def test_toy_labels_make_the_measure_claims_setup_checks():
    from prunelab.study.verdict import summary_line, verdict_table

    img = _img(16)
    sp = C.assign_split(img)
    pope = C.add_split(_pope(img), sp).assign(image_set="toyworld:test")
    lab = img.assign(split=img["image_id"].map(sp))
    claims = C.finding3_claims(pope, None, lab, n_boot=200)
    assert [c.by_construction for c in claims] == [True, True, False, False, False]
    assert claims[0].reason == C.TOY_LEVELS_REASON
    assert summary_line(claims) == "3 of 3 claims replicate; not counted: 2 setup checks (all hold)"
    t = verdict_table(claims)
    assert t["outcome"].tolist() == ["replicates"] * 3 + ["setup check: replicates"] * 2
    assert t["claim"].iloc[3].startswith("Complex images have more spread-out")
    # the photos' hand labels are a real test; a median split never is a generated label
    assert not any(c.by_construction for c in C.finding3_claims(pope.assign(image_set="photos"), None, lab, n_boot=50))
    assert not any(
        c.by_construction
        for c in C.finding3_claims(pope, None, lab, split_by="erank", constructed_labels=True, n_boot=50)
    )
    assert C.labels_by_construction("label", pope, None) is True
    assert C.labels_by_construction("label", pope, pope.assign(image_set="photos")) is False
    assert C.labels_by_construction("entropy", pope) is False
    assert C.labels_by_construction("label", pope.drop(columns="image_set")) is False


def test_measure_that_defines_the_split_is_not_tested():
    from prunelab.study.verdict import verdict_table

    img = _img(12)
    sp = C.assign_split(img, "erank")
    claims = C.finding3_claims(
        C.add_split(_pope(img), sp), None, img.assign(split=img["image_id"].map(sp)), split_by="erank", n_boot=200
    )
    t = verdict_table(claims)
    assert len(t) == 5 and t["outcome"].iloc[1] == "not testable here" and "median split" in t["rule"].iloc[1]
    assert not any(c.by_construction for c in claims)  # a median split is not a generated label
    assert t["outcome"].iloc[0] == "replicates"


def test_family_gaps_missing_family_is_empty():
    img = _img(6)
    pope = C.add_split(_pope(img), C.assign_split(img))
    only_att = pope[pope["family"] == "attention"]
    assert C.family_gaps(only_att, "Accuracy").empty and C.family_interactions(only_att, "Accuracy").empty
    assert C.families(pope) == {"attention": ["FasterVLM", "PruMerge+fixed"], "diversity": ["DivPrune", "FPS"]}


def test_figures_draw():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    img = _img(10)
    sp = C.assign_split(img)
    pope = C.add_split(_pope(img), sp)
    desc = C.add_split(_describe(img), sp)
    figs = [
        C.measures_figure(img, C.paper_examples()),
        C.accuracy_figure(C.accuracy_table(pope, n_boot=100)),
        C.gap_figure(
            pd.concat([C.family_gaps(pope, "Accuracy", n_boot=100), C.family_gaps(desc, "CHAIR_i", n_boot=100)])
        ),
    ]
    assert len(figs[0].axes) == 3 and len(figs[2].axes) == 2
    for f in figs:
        plt.close(f)


# ---- the model's own tower in run_vision -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_gm(one_torch_thread):
    from prunelab.models.adapter import LlavaAdapter
    from prunelab.models.loader import from_adapter
    from prunelab.models.prompts import VICUNA_SYSTEM
    from prunelab.models.tiny import ToyTokenizer, tiny_llava

    model = tiny_llava("clip", seed=0, text_layers=2)
    words = ["a", "the", "dog", "cat", "car", "cup", "person", "."] + VICUNA_SYSTEM.split()
    words += "USER: ASSISTANT: Please describe this image in detail.".split()
    return from_adapter(
        LlavaAdapter(model, tokenizer=ToyTokenizer(model, words + [f"w{i}" for i in range(50)]), device="cpu")
    )


def _items(k=4):
    from PIL import Image

    from prunelab.study.data import ImageItem

    def image(seed):
        rng = np.random.default_rng(seed)
        arr = (rng.random((64, 64, 3)) * 255).astype(np.uint8)
        arr[8 * (seed % 4) : 8 * (seed % 4) + 24, 16:40] = [250, 30, 30]
        return Image.fromarray(arr)

    return [
        ImageItem(
            id=f"img{i}",
            source="synthetic",
            labels=["dog", "cat", "cup"],
            complexity=("simple", "complex")[i % 2],
            loader=(lambda i=i: image(i)),
        )
        for i in range(k)
    ]


def test_tower_encoder_keeps_what_generation_keeps(tiny_gm, chair_parser, tmp_path):
    from prunelab.study import generation, runner

    items = _items(4)
    methods = ["FasterVLM", "DivPrune", "AgilePruner", "BAT+erank", "VisPruner+inverse"]
    enc = C.tower_encoder(tiny_gm)
    v = runner.run_vision(items, methods, [6, 12], encoder=enc, cache_dir=tmp_path / "runs", progress=False, n_random=2)
    g = generation.run_generation(
        tiny_gm,
        items,
        methods,
        [6, 12],
        task="describe",
        max_new_tokens=2,
        erank_stats=v.attrs["erank_stats"],
        cache_dir=tmp_path / "gen",
        chair_parser=chair_parser,
        progress=False,
    )
    m = v.merge(g, on=["image_id", "method", "budget"], suffixes=("_v", "_g"))
    assert len(m) == 4 * 5 * 2
    assert (m["kept_indices_v"].map(list) == m["kept_indices_g"].map(list)).all()
    for col in ("erank_full_vision", "attention_entropy"):
        assert np.allclose(m[f"{col}_v"], m[f"{col}_g"], rtol=1e-5)
    assert enc.fingerprint.startswith("tower-of:") and enc.fingerprint == C.tower_encoder(tiny_gm).fingerprint
    img = C.image_table(v)
    assert len(img) == 4 and math.isfinite(img["erank_full_projected"].iloc[0])

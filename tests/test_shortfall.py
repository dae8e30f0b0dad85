"""prunelab.study.shortfall (finding 1): parameters, references and ratios, verdict rules, encoders, figures, saving."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from prunelab.errors import AssetError, BudgetError, PrunelabError, UnknownNameError
from prunelab.eval.metrics import erank
from prunelab.models.encoders import AdapterEncoder
from prunelab.study import shortfall as S, shortfall_figures as SF
from prunelab.study.data import ImageItem
from prunelab.study.runner import methods_for, random_subset_erank
from prunelab.study.verdict import OUTCOMES, verdict_table

# ---------------------------------------------------------------------------------------------- parameters


def test_check_vision_methods():
    from prunelab.study.runner import vision_methods

    assert S.check_vision_methods(None) == vision_methods()
    assert S.check_vision_methods(["fastervlm", "DivPrune", "FasterVLM"]) == ["FasterVLM", "DivPrune"]
    assert S.check_vision_methods("DivPrune") == ["DivPrune"]
    with pytest.raises(UnknownNameError):
        S.check_vision_methods(["NoSuchPruner"])
    for needs_llm in ("CDPruner", "FastV"):
        with pytest.raises(UnknownNameError, match="language model"):
            S.check_vision_methods([needs_llm])
    with pytest.raises(UnknownNameError, match="empty"):
        S.check_vision_methods([])


GOOD = dict(model="toyllava", image_sets=["photos"], n_images=2, methods=None, budgets=[64, 128], seed=0, device="cpu")


def test_validate_parameters_normalises():
    p = S.validate_parameters(**{**GOOD, "budgets": [128, 64, 64], "image_sets": "toyworld"})
    assert p.budgets == [64, 128] and p.image_sets == ["toyworld:test"] and p.device == "cpu"
    assert p.model_path is None  # the embedded model needs no weights for the vision-side analysis
    assert p.results_dir is None and p.methods[0] == "FasterVLM"
    assert S.validate_parameters(**{**GOOD, "results_dir": "~/x"}).results_dir.name == "x"


@pytest.mark.parametrize(
    "change,err,words",
    [
        (dict(n_images=0), UnknownNameError, "n_images"),
        (dict(n_images=True), UnknownNameError, "n_images"),
        (dict(n_images=2.5), UnknownNameError, "n_images"),
        (dict(seed="0"), UnknownNameError, "seed"),
        (dict(budgets=[64, 577]), BudgetError, "1..576"),
        (dict(budgets=[]), UnknownNameError, "budgets"),
        (dict(image_sets=[]), UnknownNameError, "image_sets"),
        (dict(image_sets=["coco:/no/such/folder"]), AssetError, "does not exist"),
        (dict(methods=["CDPruner"]), UnknownNameError, "language model"),
        (dict(methods=["Nope"]), UnknownNameError, "Nope"),
        (dict(model="no-org/no-such-llava-xyz"), AssetError, "local Hugging Face cache"),
        (dict(model=""), UnknownNameError, "model"),
        (dict(results_dir=3), UnknownNameError, "results_dir"),
    ],
)
def test_validate_parameters_one_line_errors(change, err, words):
    with pytest.raises(err) as ei:
        S.validate_parameters(**{**GOOD, **change})
    assert words in str(ei.value) and "\n" not in str(ei.value) and isinstance(ei.value, PrunelabError)


# ---------------------------------------------------------------------------------------------- the study loop


def _items(k=4, seed=0, source="unit"):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(k):
        a = np.full((64, 64, 3), 200, dtype="uint8")
        a += (rng.random((64, 64, 3)) * 40).astype("uint8")  # textured background
        y, x = rng.integers(0, 40, size=2)
        a[y : y + 20, x : x + 20] = rng.integers(0, 255, size=3)  # one salient block
        out.append(
            ImageItem(
                id=f"{source}{i}",
                source=source,
                complexity="simple" if i % 2 else "complex",
                loader=(lambda a=a: Image.fromarray(a)),
            )
        )
    return out


class SeededContextEncoder:
    """Per image id, a seeded self-consistent context (q/k included, so PruMerge can run); images are ignored."""

    fingerprint = "seeded-contexts:n64c16"

    def __call__(self, images, ids):
        from prunelab.methods.testing import make_context

        return [
            make_context(
                n=64,
                c=16,
                d=None,
                seed=int(i[-1]) + (10 if i.startswith("unitB") else 0),
                clusters=4 * (int(i[-1]) % 2),
                image_id=i,
            )
            for i in ids
        ]


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    import prunelab.study.data as D

    sets = {"unitA": _items(4, 0, "unitA"), "unitB": _items(3, 1, "unitB")}
    orig = D.load_image_set
    D.load_image_set = lambda spec, n=None, seed=0: D.select(sets[spec], n, seed)
    try:
        enc = SeededContextEncoder()
        methods = methods_for(["FasterVLM", "PruMerge", "PruMerge+fixed", "DivPrune", "VisPruner"], projected=False)
        run = S.run_study(
            ["unitA", "unitB"],
            methods,
            [12, 6],
            seed=0,
            encoder=enc,
            space="vision",
            n_random=4,
            screen=None,
            cache_dir=tmp_path_factory.mktemp("cache"),
        )
    finally:
        D.load_image_set = orig
    return run, enc, sets


def test_study_tables_and_references(study):
    run, enc, sets = study
    r = run.ratios
    assert set(r["image_set"]) == {"unitA", "unitB"} and sorted(r["budget"].unique()) == [6, 12]
    n_img = 7
    assert (r["method"] == S.RANDOM).sum() == (r["method"] == S.GREEDY).sum() == 2 * n_img
    # references are exactly 1 against themselves
    assert np.allclose(r.loc[r["method"] == S.RANDOM, "ratio_random"], 1.0)
    assert np.allclose(r.loc[r["method"] == S.GREEDY, "ratio_ceiling"], 1.0)
    # PruMerge picks its own count: no ceiling ratio, not fixed-budget; the others are
    assert "PruMerge" not in S.fixed_budget_methods(run.rows)
    assert r.loc[r["method"] == "PruMerge", "ratio_ceiling"].isna().all()
    assert r.loc[r["method"] == "FasterVLM", "ratio_ceiling"].notna().all()
    # the random reference uses the very draws the runner gave every method of that size
    fixed = run.rows[run.rows["method"] == "FasterVLM"].set_index(["image_id", "budget"])["erank_random_vision"]
    ref = r[r["method"] == S.RANDOM].set_index(["image_id", "budget"])["erank_kept_vision"]
    assert np.allclose(fixed.sort_index(), ref.sort_index())


def test_greedy_reference_rows(study):
    run, enc, sets = study
    g = run.refs[run.refs["method"] == S.GREEDY].set_index(["image_id", "budget"])
    items = {it.id: it for s in sets.values() for it in s}
    for iid in ("unitA0", "unitB2"):
        ctx = enc([items[iid].image], [iid])[0]
        small, big = g.loc[(iid, 6), "kept_indices"], g.loc[(iid, 12), "kept_indices"]
        assert big[:6] == small and len(set(big)) == 12  # nested greedy picks
        assert g.loc[(iid, 12), "erank_kept_vision"] == pytest.approx(float(erank(ctx.features[torch.tensor(big)])))
        # the greedy set beats random subsets of its size
        assert g.loc[(iid, 12), "erank_kept_vision"] > random_subset_erank(ctx, 12, 4, 0)["erank_random_vision"]


def test_diversity_table_matches_ratios(study):
    run, _, _ = study
    d = run.diversity
    assert {S.RANDOM, S.GREEDY} <= set(d["method"])
    div = d[d["method"] == "DivPrune(features=vision)"].set_index(["image_id", "budget"])["erank"].sort_index()
    rat = run.ratios[run.ratios["method"] == "DivPrune(features=vision)"].set_index(["image_id", "budget"])
    assert np.allclose(div, rat["erank_kept_vision"].sort_index())
    assert np.allclose(
        d[d["method"] == "DivPrune(features=vision)"]["ratio_ceiling"].sort_values(), rat["ratio_ceiling"].sort_values()
    )
    assert d.loc[d["method"] == "PruMerge", "ratio_ceiling"].isna().all()


def test_pivot_and_lines(study):
    run, _, _ = study
    piv = S.ratio_pivot(run.ratios, "ratio_full")
    assert list(piv.index[-2:]) == [S.RANDOM, S.GREEDY]
    assert list(piv.columns) == [("unitA", "T=6"), ("unitA", "T=12"), ("unitB", "T=6"), ("unitB", "T=12")]
    sub = run.ratios[
        (run.ratios["method"] == "FasterVLM") & (run.ratios["image_set"] == "unitB") & (run.ratios["budget"] == 12)
    ]
    assert piv.loc["FasterVLM", ("unitB", "T=12")] == pytest.approx(sub["ratio_full"].mean(), abs=0.005)
    line = S.family_line(run.ratios, S.GREEDY, "ratio_full")
    assert line.startswith("unitA ") and line.endswith("(T = 6 / 12)")
    assert S.showcase_methods(run.ratios) == ["FasterVLM", "DivPrune(features=vision)", "VisPruner", S.GREEDY]
    ex = S.example_images(run.ratios, per_set=2)
    assert len(ex) == 4 and ex[0].startswith("unitA") and ex[-1].startswith("unitB")
    assert set(run.images(ex[:1])) == {ex[0]}
    line = S.full_erank_line(run.ratios, "vision")
    mean_a = run.rows[run.rows["image_set"] == "unitA"].drop_duplicates("image_id")["erank_full_vision"].mean()
    assert line.startswith(f"unitA {mean_a:.1f} (simple ") and ", unitB " in line
    fam = S.family_table(run.ratios)
    assert list(fam.index) == ["attention", "diversity", "hybrid", S.RANDOM, S.GREEDY]
    assert fam.loc[S.GREEDY, ("kept / erank-greedy", "unitA", "T=6")] == 1.0
    assert fam.loc[S.RANDOM, ("kept / random subset", "unitB", "T=12")] == 1.0
    # attention = per image the mean of FasterVLM and PruMerge+fixed (PruMerge picks its own count), then over images
    r = run.ratios[(run.ratios["image_set"] == "unitA") & (run.ratios["budget"] == 6)]
    per_img = r[r["method"].isin(["FasterVLM", "PruMerge+fixed"])].groupby("image_id")["ratio_full"].mean()
    assert fam.loc["attention", ("kept / all tokens", "unitA", "T=6")] == pytest.approx(per_img.mean(), abs=0.005)


def test_claims_on_the_study_run(study):
    run, _, _ = study
    claims = S.shortfall_claims(run.ratios, "vision", n_boot=200)
    tab = verdict_table(claims)
    assert len(tab) == 3 and set(tab["outcome"]) <= set(OUTCOMES)
    # claim 1: fixed-budget attention methods (FasterVLM, PruMerge+fixed) x 2 budgets x 2 sets
    assert len(claims[0].checks) == 8
    assert len(claims[1].checks) == 4 and len(claims[2].checks) == 4


def test_figures_draw(study):
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    run, _, _ = study
    f1 = SF.erank_overview(run.ratios, "vision")
    f2 = SF.intended_vs_achieved(run.diversity)
    assert len(f1.axes) == 4 and len(f2.axes) == 4
    plt.close("all")


# ---------------------------------------------------------------------------------------------- verdict rules


def _synthetic(att_random=0.8, div_ceiling=0.7, div_over_att=1.3, n=12, seed=0):
    """A ratio table with known means: attention ratio_random, diversity ratio_ceiling, diversity/attention erank."""
    rng = np.random.default_rng(seed)
    rows = []
    for s in ("setA", "setB"):
        for b in (64, 128):
            for i in range(n):
                base = 30 + rng.normal(0, 1)
                noise = lambda: rng.normal(0, 0.01)  # noqa: E731
                rows.append(
                    dict(
                        image_set=s,
                        budget=b,
                        image_id=f"{s}{i}",
                        method="Att",
                        family="attention",
                        fixed_budget=True,
                        erank_kept_vision=base,
                        ratio_random=att_random + noise(),
                        ratio_ceiling=0.6 + noise(),
                    )
                )
                rows.append(
                    dict(
                        image_set=s,
                        budget=b,
                        image_id=f"{s}{i}",
                        method="Div",
                        family="diversity",
                        fixed_budget=True,
                        erank_kept_vision=base * div_over_att,
                        ratio_random=1.2 + noise(),
                        ratio_ceiling=div_ceiling + noise(),
                    )
                )
                rows.append(
                    dict(
                        image_set=s,
                        budget=b,
                        image_id=f"{s}{i}",
                        method="Own",
                        family="attention",
                        fixed_budget=False,
                        erank_kept_vision=99.0,
                        ratio_random=5.0,
                        ratio_ceiling=math.nan,
                    )
                )
    return pd.DataFrame(rows)


def test_claims_replicate_when_the_data_agree():
    claims = S.shortfall_claims(_synthetic(), "vision", n_boot=300)
    assert [c.outcome for c in claims] == ["replicates"] * 3
    assert all(c.n_passed == "4/4" for c in claims)  # the non-fixed method is left out
    assert "Own" not in " ".join(c.condition for c in claims[0].checks)
    assert "0.80" in claims[0].this_run and "1.30" in claims[1].this_run


def test_claims_fail_when_the_data_disagree():
    claims = S.shortfall_claims(_synthetic(att_random=1.2, div_ceiling=0.97, div_over_att=0.9), "vision", n_boot=300)
    assert [c.outcome for c in claims] == ["contradicts"] * 3


def test_claims_mixed_and_threshold_is_conservative():
    t = _synthetic()
    t.loc[(t["image_set"] == "setB") & (t["family"] == "attention") & t["fixed_budget"], "ratio_random"] = 1.05
    claims = S.shortfall_claims(t, "vision", n_boot=300)
    assert claims[0].outcome == "mixed" and claims[0].n_passed == "2/4"  # setB resolved against, setA for
    # a mean just under the threshold whose CI crosses it does not count
    near = _synthetic(div_ceiling=0.897)
    near.loc[near["method"] == "Div", "ratio_ceiling"] += np.random.default_rng(1).normal(
        0, 0.05, (near["method"] == "Div").sum()
    )
    near_claim = S.shortfall_claims(near, "vision", n_boot=300)[2]
    assert near_claim.outcome != "replicates"
    assert near_claim.n_needed is None or near_claim.n_needed > near_claim.n_images


def test_claims_without_a_family_are_not_tested():
    t = _synthetic()
    t = t[t["family"] != "diversity"]
    claims = S.shortfall_claims(t, "vision", n_boot=100)
    assert claims[0].outcome == "replicates"
    assert claims[1].outcome == claims[2].outcome == "not testable here"


def test_per_set_line_known_answer():
    summ = pd.DataFrame({"image_set": ["a", "a", "a", "b"], "budget": [64, 64, 128, 64], "mean": [0.5, 0.7, 0.9, 1.0]})
    assert S.per_set_line(summ) == "a 0.50–0.70 / 0.90, b 1.00 / n/a (T = 64 / 128)"
    assert S.per_set_line(pd.DataFrame()) == "n/a"


# ---------------------------------------------------------------------------------------------- encoders


def test_encoder_for_embedded_model_without_weights(monkeypatch, tmp_path):
    import prunelab.models.toyllava as T

    monkeypatch.setattr(T, "default_dir", lambda variant="toyllava": tmp_path / variant)
    enc, info = S.encoder_for("toyllava", "cpu")
    assert enc.projector is None and info["space"] == "vision" and info["projected"] is False


@pytest.fixture(scope="module")
def tiny_clip_llava():
    from transformers import CLIPImageProcessor

    from prunelab.models.tiny import tiny_llava

    model = tiny_llava("clip", seed=0, image_size=56)  # 4x4 = 16 patches
    proc = CLIPImageProcessor(size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56})
    return model, proc


def test_llava_encoder_matches_the_model(tiny_clip_llava, one_torch_thread):
    model, proc = tiny_clip_llava
    enc = AdapterEncoder.from_model(model, proc, name="tiny", device="cpu", batch_size=2)
    imgs = [it.image for it in _items(3)]
    ctxs = enc(imgs, ["a", "b", "c"])
    assert [c.image_id for c in ctxs] == ["a", "b", "c"] and ctxs[0].features.shape == (16, 32)
    pv = proc(images=imgs, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        out = model.model.vision_tower(pv, output_hidden_states=True, output_attentions=True)
        hs = out.hidden_states[-2][:, 1:]
        att = out.attentions[-2][:, :, 0, 1:].mean(1)  # [CLS] row of layer -2, head mean
        proj = model.model.multi_modal_projector(hs)
    for i, c in enumerate(ctxs):
        assert torch.allclose(c.features, hs[i], atol=1e-5)
        assert torch.allclose(c.space("projected"), proj[i], atol=1e-5)
        assert torch.allclose(c.cls_attention, att[i], atol=1e-5) and -2 in c.keys and -1 in c.queries
    fp = enc.fingerprint
    assert fp.startswith("llava:tiny|") and fp == enc.fingerprint
    from prunelab.models.tiny import tiny_llava

    other = AdapterEncoder.from_model(tiny_llava("clip", seed=1, image_size=56), proc, name="tiny", device="cpu")
    assert other.fingerprint != fp  # different weights, different cache key


def test_llava_encoder_runs_the_loop(tiny_clip_llava, tmp_path, one_torch_thread):
    from prunelab.study.runner import run_vision

    model, proc = tiny_clip_llava
    enc = AdapterEncoder.from_model(model, proc, name="tiny", device="cpu")
    df = run_vision(_items(2), ["FasterVLM", "DivPrune"], [4], cache_dir=tmp_path, encoder=enc, progress=False)
    assert len(df) == 4 and df["erank_kept_projected"].notna().all() and (df["n_kept"] == 4).all()


def test_llava_encoder_from_missing_folder(tmp_path):
    with pytest.raises(AssetError, match="LLaVA checkpoint"):
        AdapterEncoder.from_pretrained(tmp_path / "none", device="cpu")


def test_run_study_restores_thread_count(monkeypatch):
    import prunelab.study.data as D

    monkeypatch.setattr(D, "load_image_set", lambda spec, n=None, seed=0: _items(2, 0, "unitT"))
    before = torch.get_num_threads()
    seen = []

    class Probe(SeededContextEncoder):
        def __call__(self, images, ids):
            seen.append(torch.get_num_threads())
            return super().__call__(images, ids)

    S.run_study(["unitT"], ["FasterVLM"], [4], encoder=Probe(), n_random=2, screen=None, cache_dir=False, cpu_threads=1)
    assert set(seen) == {1} and torch.get_num_threads() == before

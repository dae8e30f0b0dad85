"""prunelab.study.generation: the generation loop (row schema, cache hit, resume, CHAIR and POPE aggregation,
determinism, erank calibration, prompt formats, errors) on tiny random models built here.

Two models: a seeded tiny random llava-hf-style LLaVA (CLIP tower, 8x8 = 64 tokens; prunelab.models.tiny) behind a
whitespace tokenizer whose vocabulary is mostly COCO object words (so random captions mention objects and CHAIR has
something to count), and a tiny ToyLLaVA-format package (ToyLLaVA tokenizer + chat template + vocabulary digest,
DINOv2 tower, 4x4 = 16 tokens) written to a temporary folder and loaded through ``load_generation_model``.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from prunelab.errors import AssetError, BudgetError, DeviceError, UnknownNameError
from prunelab.models import loader as L
from prunelab.study import generation as G, scoring as SC
from prunelab.study.data import ImageItem

WORDS = [
    "a",
    "the",
    "and",
    "there",
    "is",
    "are",
    "two",
    "on",
    "with",
    "next",
    "to",
    ".",
    ",",
    "dog",
    "cat",
    "car",
    "person",
    "man",
    "cup",
    "bottle",
    "chair",
    "table",
    "bus",
    "bird",
    "boat",
    "cake",
    "pizza",
    "horse",
    "sheep",
    "cow",
    "truck",
    "bench",
    "clock",
    "vase",
    "book",
    "bowl",
    "banana",
    "apple",
]
LABELS = [["dog", "cat", "cup"], ["car", "person", "bus", "truck"], ["bird", "boat", "bench"], ["pizza", "cup", "bowl"]]


def _image(seed: int, size: int = 64) -> Image.Image:
    rng = np.random.default_rng(seed)
    arr = (rng.random((size, size, 3)) * 255).astype(np.uint8)
    arr[size // 4 : size // 2, size // 4 : size // 2] = [250, 30, 30]  # a salient block, so attention is not flat
    return Image.fromarray(arr)


def _items(k: int = 3) -> list[ImageItem]:
    return [
        ImageItem(
            id=f"img{i}",
            source="synthetic",
            labels=LABELS[i],
            complexity=("simple", "complex")[i % 2],
            loader=(lambda i=i: _image(i)),
        )
        for i in range(k)
    ]


class _Counting:
    """Wraps adapter.run and adapter.run_shared_image to count generate calls (``calls``: both; ``shared``: the
    shared-image ones)."""

    def __init__(self, adapter):
        self.adapter = adapter
        self.calls = 0
        self.shared = 0

    def __enter__(self):
        real_run, real_shared = self.adapter.run, self.adapter.run_shared_image

        def run(*a, **k):
            self.calls += 1
            return real_run(*a, **k)

        def shared(*a, **k):
            self.calls += 1
            self.shared += 1
            return real_shared(*a, **k)

        self.adapter.run = run
        self.adapter.run_shared_image = shared
        return self

    def __exit__(self, *exc):
        del self.adapter.run
        del self.adapter.run_shared_image


@pytest.fixture(scope="module")
def tiny(one_torch_thread):
    from prunelab.models.adapter import LlavaAdapter
    from prunelab.models.prompts import VICUNA_SYSTEM
    from prunelab.models.tiny import ToyTokenizer, tiny_llava

    model = tiny_llava("clip", seed=0, text_layers=2)
    prompt_words = VICUNA_SYSTEM.split() + "USER: ASSISTANT: Please describe this image in detail.".split()
    tok = ToyTokenizer(model, WORDS + prompt_words + [f"w{i}" for i in range(300)])
    return L.from_adapter(LlavaAdapter(model, tokenizer=tok, device="cpu"))


@pytest.fixture(scope="module")
def toy_package(tmp_path_factory, one_torch_thread):
    """A ToyLLaVA-format folder (tower included) with a DINOv2 tower fed 56-px images: 16 visual tokens. As in
    ToyLLaVA, the tower config's image size (84: a 6x6 position grid) differs from what the processor produces."""
    from transformers import BitImageProcessor, Dinov2Config, LlavaForConditionalGeneration, LlavaProcessor

    from prunelab.models import toyllava as T

    texts = [
        "Please describe this image in detail.",
        "Is there a dog in the image?",
        "Yes",
        "No",
        " ".join(WORDS),
        "In the image there is a dog and a cat .",
    ]
    tok = T.build_tokenizer(texts)
    vision = Dinov2Config(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        image_size=84,
        patch_size=14,
        layerscale_value=1.0,
    )
    cfg = T.build_config(tok, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, vision_config=vision)
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(cfg).eval()
    with torch.no_grad():  # a wider spread than the default init, so pruning changes the text
        g = torch.Generator().manual_seed(0)
        for _name, p in model.named_parameters():
            if p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=g) * 0.25 / max(1.0, (p.shape[1] / 16) ** 0.5))
    ip = BitImageProcessor(
        do_resize=True,
        size={"height": 56, "width": 56},
        resample=3,
        do_center_crop=False,
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=list(T.IMAGENET_MEAN),
        image_std=list(T.IMAGENET_STD),
        do_convert_rgb=True,
    )
    proc = LlavaProcessor(
        image_processor=ip,
        tokenizer=tok,
        patch_size=14,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=T.CHAT_TEMPLATE,
    )
    out = tmp_path_factory.mktemp("toypkg") / "toy"
    model.save_pretrained(out)
    proc.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def described(tiny, chair_parser, tmp_path_factory):
    cache = tmp_path_factory.mktemp("gen-cache")
    df = G.run_generation(
        tiny,
        _items(3),
        [None, "FasterVLM", "DivPrune", "AgilePruner"],
        [8, 16],
        task="describe",
        max_new_tokens=12,
        cache_dir=cache,
        chair_parser=chair_parser,
        progress=False,
    )
    return df, cache


def _comparable(df: pd.DataFrame) -> pd.DataFrame:
    timing = [c for c in df.columns if c.endswith("_s") and c != "chair_s"]
    return df.drop(columns=timing)


# ---- schema -----------------------------------------------------------------------------------------------------


def test_describe_rows_and_columns(described, tiny):
    df, _ = described
    assert len(df) == 3 * (1 + 3 * 2)
    assert list(df.columns[: len(G.BASE_COLUMNS)]) == G.BASE_COLUMNS
    assert set(SC.CHAIR_COLUMNS) <= set(df.columns)
    assert df.groupby(["image_id", "method", "budget"]).size().eq(1).all()
    pruned = df[df["method"] != G.VANILLA]
    assert (pruned["n_kept"] == pruned["budget"]).all()
    assert pruned["kept_indices"].map(len).eq(pruned["budget"]).all()
    van = df[df["method"] == G.VANILLA]
    assert (van["budget"] == tiny.n_image_tokens).all() and (van["n_kept"] == 64).all()
    assert np.allclose(van["erank_kept_vision"], van["erank_full_vision"]) and (van["attention_mass_kept"] == 1.0).all()
    assert pruned["erank_kept_projected"].notna().all() and pruned["attention_mass_kept"].between(0, 1).all()
    assert (df["prompt_len"] < df["prompt_len"].max()).sum() == len(pruned)  # pruned prompts are shorter
    assert df["text"].map(lambda t: isinstance(t, str)).all() and (df["n_generated"] <= 12).all()
    assert set(df["family"]) == {"base", "attention", "diversity", "adaptive"}
    assert df.attrs["task"] == "describe" and df.attrs["prompt_format"] == "llava_v1"
    assert "mean" in next(iter(df.attrs["erank_stats"].values()))
    rho = df[df["method"] == "AgilePruner"]["method_stats"].map(lambda s: json.loads(s)["rho"])
    assert rho.notna().all()
    # CHAIR fields are consistent per row
    assert (df["chair_s"] == (df["n_hallucinated"] > 0).astype(int)).all()
    assert (df["n_mentions"] == df["mentioned"].map(len)).all()
    assert (df["n_gt"] == df["gt_objects"].map(len)).all()
    assert df["n_mentions"].sum() > 0, "the COCO-word vocabulary should make random captions mention objects"


def test_llava_v1_prompt_has_the_vicuna_system_message(tiny):
    from prunelab.models.prompts import VICUNA_SYSTEM

    ids = tiny.prompt_ids("Please describe this image in detail.")
    tok = tiny.tokenizer
    assert ids.count(tiny.adapter.parts.image_token_id) == 1
    text = tok.decode(ids)
    assert text == f"{VICUNA_SYSTEM} USER: <img> Please describe this image in detail. ASSISTANT:"
    assert L.LLAVA_SHORT_ANSWER in tiny.question_prompt("Is there a dog in the image?")


# ---- caching ----------------------------------------------------------------------------------------------------


def test_second_call_generates_nothing(described, tiny, chair_parser):
    df, cache = described
    with _Counting(tiny.adapter) as c:
        again = G.run_generation(
            tiny,
            _items(3),
            [None, "FasterVLM", "DivPrune", "AgilePruner"],
            [8, 16],
            task="describe",
            max_new_tokens=12,
            cache_dir=cache,
            chair_parser=chair_parser,
            progress=False,
        )
    assert c.calls == 0
    pd.testing.assert_frame_equal(_comparable(again), _comparable(df))


def test_resume_after_deleting_one_entry(tiny, chair_parser, tmp_path):
    kw = dict(task="describe", max_new_tokens=8, cache_dir=tmp_path, chair_parser=chair_parser, progress=False)
    first = G.run_generation(tiny, _items(2), ["FasterVLM", "DivPrune"], [8], **kw)
    files = sorted(tmp_path.glob("v*/entries/*.json"))
    assert len(files) == 4
    files[1].unlink()
    with _Counting(tiny.adapter) as c:
        second = G.run_generation(tiny, _items(2), ["FasterVLM", "DivPrune"], [8], **kw)
    assert c.calls == 1
    pd.testing.assert_frame_equal(_comparable(second), _comparable(first))
    # a new method reuses the others' entries
    with _Counting(tiny.adapter) as c:
        G.run_generation(tiny, _items(2), ["FasterVLM", "DivPrune", "VisPruner"], [8], **kw)
    assert c.calls == 2


def test_other_prompt_settings_do_not_hit_the_cache(tiny, chair_parser, tmp_path):
    kw = dict(task="describe", cache_dir=tmp_path, chair_parser=chair_parser, progress=False)
    G.run_generation(tiny, _items(1), ["FasterVLM"], [8], max_new_tokens=6, **kw)
    with _Counting(tiny.adapter) as c:
        G.run_generation(tiny, _items(1), ["FasterVLM"], [8], max_new_tokens=7, **kw)
        G.run_generation(tiny, _items(1), [("FasterVLM", {})], [9], max_new_tokens=6, **kw)
    assert c.calls == 2


def test_determinism_without_cache(tiny, chair_parser):
    kw = dict(task="describe", max_new_tokens=10, cache_dir=False, chair_parser=chair_parser, progress=False)
    a = G.run_generation(tiny, _items(2), ["FasterVLM", "AgilePruner"], [8, 16], **kw)
    b = G.run_generation(tiny, _items(2), ["FasterVLM", "AgilePruner"], [8, 16], **kw)
    pd.testing.assert_frame_equal(_comparable(a), _comparable(b))
    assert SC.chair_table(a).equals(SC.chair_table(b))


def test_memoised_tower_gives_the_same_text_as_a_plain_adapter_call(described, tiny):
    df, _ = described
    it = _items(3)[1]
    ids = tiny.prompt_ids(tiny.describe_prompt)
    stats = next(iter(df.attrs["erank_stats"].values()))
    for method in ("DivPrune", "AgilePruner"):
        out = tiny.adapter.run(
            [torch.tensor(ids)],
            tiny.pixels(it.image),
            method,
            8,
            max_new_tokens=12,
            erank_stats=stats,
            eos_token_id=tiny.tokenizer.eos_token_id,
        )
        row = df[(df["image_id"] == it.id) & (df["method"] == method) & (df["budget"] == 8)].iloc[0]
        assert out.texts[0] == row["text"]
        assert out.records[0]["kept_indices"] == row["kept_indices"]


@pytest.mark.parametrize("keep_bytes,towers_per_image", [(G.KEEP_ENCODINGS_BYTES, 1), (0, 2)])
def test_tower_runs_once_per_image_while_its_output_fits(tiny, chair_parser, monkeypatch, keep_bytes, towers_per_image):
    """Pass 1's tower output is reused by pass 2 while the kept outputs fit KEEP_ENCODINGS_BYTES; beyond it the
    image is encoded again, with the same result."""
    monkeypatch.setattr(G, "KEEP_ENCODINGS_BYTES", keep_bytes)
    calls = []
    handle = tiny.adapter.parts.vision_tower.register_forward_hook(lambda *a: calls.append(1))  # real tower runs
    try:
        df = G.run_generation(
            tiny,
            _items(3),
            [None, "FasterVLM", "AgilePruner"],
            [8],
            task="describe",
            max_new_tokens=6,
            cache_dir=False,
            chair_parser=chair_parser,
            progress=False,
        )
    finally:
        handle.remove()
    assert len(calls) == 3 * towers_per_image
    ref = G.run_generation(
        tiny,
        _items(3),
        [None, "FasterVLM", "AgilePruner"],
        [8],
        task="describe",
        max_new_tokens=6,
        cache_dir=False,
        chair_parser=chair_parser,
        progress=False,
    )
    assert list(df["text"]) == list(ref["text"]) and list(df["kept_indices"]) == list(ref["kept_indices"])


def test_erank_stats_equal_calibrate_erank_on_tower_contexts(described, tiny):
    from prunelab.methods.adaptive import calibrate_erank

    df, _ = described
    pv = torch.cat([tiny.pixels(it.image) for it in _items(3)])
    ref = calibrate_erank(tiny.adapter.contexts(pv))
    got = next(iter(df.attrs["erank_stats"].values()))
    for k in ("mean", "min", "max", "std"):
        assert math.isclose(got[k], ref[k], rel_tol=1e-6)
    assert got["n"] == 3


def test_given_erank_stats_are_used(tiny, chair_parser):
    stats = {"mean": 1.0, "min": 0.5, "max": 2.0, "std": 0.1, "n": 1}
    df = G.run_generation(
        tiny,
        _items(1),
        ["AgilePruner"],
        [8],
        task="describe",
        max_new_tokens=4,
        cache_dir=False,
        erank_stats=stats,
        chair_parser=chair_parser,
        progress=False,
    )
    assert json.loads(df["method_stats"].iloc[0])["erank_avg"] == 1.0


# ---- CHAIR ------------------------------------------------------------------------------------------------------


def test_chair_table_equals_evaluate_chair_per_group(described, chair_parser, tmp_path):
    from prunelab.eval.chair import evaluate_chair
    from prunelab.study.runner import save_table

    df, _ = described
    gt = {it.id: set(it.labels) for it in _items(3)}
    table = SC.chair_table(df)
    assert list(table.columns[:6]) == ["method", "budget", "family", "CHAIR_s", "CHAIR_i", "Recall"]
    assert len(table) == 1 + 3 * 2
    for r in table.itertuples(index=False):
        g = df[(df["method"] == r.method) & (df["budget"] == r.budget)]
        ref = evaluate_chair(list(zip(g["image_id"], g["caption"])), gt, parser=chair_parser, on_bad="flag").summary(
            ndigits=None
        )
        for m in ("CHAIR_s", "CHAIR_i", "Recall", "Len"):
            a, b = getattr(r, m), ref[m]
            assert (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-12), (r.method, r.budget, m)
    # ratios of sums, not means of per-caption ratios
    allr = SC.chair_table(df, by=["task"]).iloc[0]
    assert math.isclose(allr["CHAIR_i"], 100 * df["n_hallucinated"].sum() / df["n_mentions"].sum())
    assert math.isclose(allr["Recall"], 100 * df["n_gt_covered"].sum() / df["n_gt"].sum())
    # the same table after writing and reading the CSV
    back = pd.read_csv(save_table(df.drop(columns=["kept_indices"]), tmp_path, "gen"), dtype={"image_id": str})
    pd.testing.assert_frame_equal(SC.chair_table(back), table, check_dtype=False)


def test_chair_table_with_ci_and_complexity(described):
    df, _ = described
    t = SC.chair_table(df, by=["method", "budget", "complexity"], ci=0.9, n_boot=200)
    assert {"CHAIR_s_low", "CHAIR_s_high", "Len_low", "Len_high"} <= set(t.columns)
    ok = t.dropna(subset=["CHAIR_i_low"])
    assert ((ok["CHAIR_i_low"] <= ok["CHAIR_i"] + 1e-9) & (ok["CHAIR_i"] <= ok["CHAIR_i_high"] + 1e-9)).all()
    assert set(t["complexity"]) == {"simple", "complex"}


def test_chair_table_names_its_text_path(chair_parser):
    """A CHAIR table says which text path scored it, per row and in attrs, and warns off the reference path."""
    from prunelab.eval.textproc import FallbackPathWarning

    df = pd.DataFrame(
        {
            "image_id": [1, 2],
            "text": ["A dog.", "A cat."],
            "method": ["FasterVLM"] * 2,
            "budget": [8, 8],
            "family": ["attention"] * 2,
        }
    )
    with pytest.warns(FallbackPathWarning):
        scored, config = SC.score_chair(df, {1: {"dog"}, 2: {"dog"}}, parser=chair_parser)
    assert list(scored["chair_text_path"]) == ["fallback", "fallback"] and config["text_path"] == "fallback"
    with pytest.warns(FallbackPathWarning, match="CHAIR table: captions scored on the 'fallback' text path"):
        t = SC.chair_table(scored)
    assert t.columns[-1] == "text_path" and list(t["text_path"]) == ["fallback"] and t.attrs["text_path"] == "fallback"
    assert t.iloc[0]["CHAIR_s"] == 50.0
    with pytest.warns(FallbackPathWarning, match="'unknown' text path"):  # a table saved before paths were recorded
        assert list(SC.chair_table(scored.drop(columns=["chair_text_path"]))["text_path"]) == ["unknown"]


def test_pope_scoring_defaults_to_pope_rule():
    """score_pope / pope_table read answers with POPE's evaluate.py rule unless told otherwise (issue 13)."""
    df = pd.DataFrame(
        {
            "text": ["Without a doubt, yes.", "1. No", "Is there a dog? No."],
            "label": ["yes", "no", "no"],
            "method": ["FasterVLM"] * 3,
            "budget": [8] * 3,
            "setting": ["random"] * 3,
        }
    )
    assert list(SC.score_pope(df)["pred"]) == ["yes", "yes", "no"]  # POPE: "1. No" -> first sentence "1" -> yes
    assert list(SC.score_pope(df, parser="robust")["pred"]) == ["yes", "no", "no"]
    t = SC.pope_table(df).iloc[0]
    assert t["n"] == 3 and t["n_unparsed"] == 0 and t["Accuracy"] == pytest.approx(200 / 3)
    assert SC.pope_table(df, parser="robust").iloc[0]["Accuracy"] == 100.0


def test_paired_chair_by_hand():
    rows = []
    for iid, (ha, ma, hb, mb) in {"x": (1, 4, 0, 2), "y": (0, 2, 0, 3), "z": (2, 2, 1, 5)}.items():
        for m, h, n in (("A", ha, ma), ("B", hb, mb)):
            rows.append(
                {
                    "image_id": iid,
                    "method": m,
                    "budget": 64,
                    "n_hallucinated": h,
                    "n_mentions": n,
                    "chair_s": int(h > 0),
                    "n_gt_covered": 1,
                    "n_gt": 2,
                    "length": 10,
                }
            )
    p = SC.paired_chair(pd.DataFrame(rows), "A", "B", "CHAIR_i", n_boot=500).iloc[0]
    assert math.isclose(p["value_a"], 100 * 3 / 8) and math.isclose(p["value_b"], 100 * 1 / 10)
    assert math.isclose(p["diff"], 100 * (3 / 8 - 1 / 10)) and p["n"] == 3
    assert p["ci_low"] <= p["diff"] <= p["ci_high"]
    s = SC.paired_chair(pd.DataFrame(rows), "A", "B", "CHAIR_s", n_boot=100).iloc[0]
    assert math.isclose(s["diff"], 100 * (2 / 3 - 1 / 3))


def test_caption_spans_mark_hallucinated_words(chair_parser):
    cap = "Two dogs sit near a hot dog, and a teddy bear is on the Chair."
    spans = SC.caption_spans(cap, {"dog", "chair"}, parser=chair_parser)
    got = [(cap[s:e], cat, kind) for s, e, cat, kind in spans]
    assert got == [
        ("dogs", "dog", "correct"),
        ("hot dog", "hot dog", "hallucinated"),
        ("teddy bear", "teddy bear", "hallucinated"),
        ("Chair", "chair", "correct"),
    ]
    html = SC.highlight_caption(cap, {"dog", "chair"}, parser=chair_parser)
    assert html.count("<span") == 4 and "hallucinated" in html and html.startswith("Two ")
    parsed = chair_parser.parse(cap)
    assert [m.category for m in parsed.mentions] == [c for _, c, _ in got]


# ---- POPE -------------------------------------------------------------------------------------------------------


def test_pope_table_by_hand_on_four_questions():
    df = pd.DataFrame(
        {
            "method": ["M"] * 4,
            "budget": [64] * 4,
            "setting": ["random"] * 4,
            "label": ["yes", "yes", "no", "no"],
            "text": ["Yes .", "Yes, there is.", "Yes", "No ."],
        }
    )
    df = SC.score_pope(df)
    assert list(df["pred"]) == ["yes", "yes", "yes", "no"] and list(df["correct"]) == [True, True, False, True]
    r = SC.pope_table(df).iloc[0]
    # tp=2 fp=1 tn=1 fn=0
    assert math.isclose(r["Accuracy"], 75.0) and math.isclose(r["Precision"], 200 / 3)
    assert math.isclose(r["Recall"], 100.0) and math.isclose(r["F1"], 80.0) and math.isclose(r["Yes-ratio"], 75.0)
    assert r["n"] == 4 and r["n_unparsed"] == 0


def test_pope_run_on_a_toyllava_package(toy_package, tmp_path):
    gm = L.load_generation_model(str(toy_package), device="cpu")
    assert gm.prompt_format == "toyllava" and gm.n_image_tokens == 16
    from prunelab.models.toyllava import prompt_ids

    q = "Is there a dog in the image?"
    assert gm.prompt_ids(gm.question_prompt(q)) == prompt_ids(gm.tokenizer, q)
    items = _items(4)
    df = G.run_generation(
        gm,
        items,
        [None, "FasterVLM"],
        [4],
        task="pope",
        max_new_tokens=3,
        cache_dir=tmp_path,
        pope_settings=("random", "adversarial"),
        progress=False,
    )
    qs = G.pope_questions_for(items, "synthetic", ("random", "adversarial"))
    n_q = sum(len(v) for v in qs.values())
    assert n_q == 4 * 2 * 6  # every image has >= 3 objects: 3 yes + 3 no per setting
    assert len(df) == n_q * 2
    assert set(G.POPE_QUESTION_COLUMNS + SC.POPE_COLUMNS) <= set(df.columns)
    assert df.groupby(["image_id", "method", "budget", "question_id"]).size().eq(1).all()
    van = df[df["method"] == G.VANILLA]
    assert (van["budget"] == 16).all() and (van["n_kept"] == 16).all()
    t = SC.pope_table(df)
    assert len(t) == 2 * 2
    for r in t.itertuples(index=False):
        g = df[(df["method"] == r.method) & (df["setting"] == r.setting)]
        used = g[g["pred"].notna()]
        assert r.n == len(used) and r.n + r.n_unparsed == len(g) == 4 * 6
        if len(used):
            assert math.isclose(r.Accuracy, 100 * used["correct"].mean())
    with _Counting(gm.adapter) as c:
        G.run_generation(
            gm,
            items,
            [None, "FasterVLM"],
            [4],
            task="pope",
            max_new_tokens=3,
            cache_dir=tmp_path,
            pope_settings=("random", "adversarial"),
            progress=False,
        )
    assert c.calls == 0
    # One shared selection per image x method, and the same answers as asking every question alone.
    with _Counting(gm.adapter) as c:
        one = G.run_generation(
            gm,
            items,
            [None, "FasterVLM"],
            [4],
            task="pope",
            max_new_tokens=3,
            cache_dir=False,
            pope_settings=("random", "adversarial"),
            progress=False,
            pope_batch_size=1,
        )
    assert c.shared == c.calls == 4 * 2
    assert list(one["text"]) == list(df["text"]) and list(one["kept_indices"]) == list(df["kept_indices"])
    with pytest.raises(UnknownNameError, match="pope_batch_size"):
        G.run_generation(gm, items, [None], [4], task="pope", cache_dir=False, progress=False, pope_batch_size=0)


def test_describe_on_a_toyllava_package(toy_package, chair_parser):
    gm = L.load_generation_model(str(toy_package), device="cpu")
    df = G.run_generation(
        gm,
        _items(2),
        ["DivPrune"],
        [4, 8],
        task="describe",
        max_new_tokens=6,
        cache_dir=False,
        chair_parser=chair_parser,
        progress=False,
    )
    assert len(df) == 4 and (df["n_kept"] == df["budget"]).all()
    assert df.attrs["prompt_format"] == "toyllava"


def test_toyworld_pope_questions_are_the_scene_questions():
    from prunelab.study.data import load_image_set
    from prunelab.toyworld import text as tt

    items = load_image_set("toyworld:test", n=2, seed=0)
    qs = G.pope_questions_for(items, "toyworld:test")
    for it in items:
        ref = [q for s in tt.POPE_SETTINGS for q in tt.pope_questions(it.meta["scene"], s)]
        assert [(q.question, q.label, q.setting) for q in qs[it.id]] == [
            (r["question"], r["answer"], r["setting"]) for r in ref
        ]
        for s in tt.POPE_SETTINGS:
            labs = [q.label for q in qs[it.id] if q.setting == s]
            assert labs.count("yes") == labs.count("no") >= 1


# ---- errors -----------------------------------------------------------------------------------------------------


def _one_line(err) -> str:
    msg = str(err.value)
    assert "\n" not in msg
    return msg


def test_errors_are_one_line(tiny, tmp_path):
    with pytest.raises(BudgetError) as e:
        G.run_generation(tiny, _items(1), ["FasterVLM"], [65], cache_dir=False)
    assert "1..64" in _one_line(e)
    with pytest.raises(UnknownNameError) as e:
        G.run_generation(tiny, _items(1), ["NoSuchMethod"], [8], cache_dir=False)
    _one_line(e)
    with pytest.raises(UnknownNameError) as e:
        G.run_generation(tiny, _items(1), ["FasterVLM"], [8], task="caption", cache_dir=False)
    assert "describe" in _one_line(e)
    with pytest.raises(AssetError) as e:
        G.run_generation("no/such-model-anywhere", _items(1), ["FasterVLM"], [8], cache_dir=False)
    assert "neither" in _one_line(e)
    with pytest.raises(AssetError) as e:
        G.run_generation(str(tmp_path), _items(1), ["FasterVLM"], [8], cache_dir=False)
    assert "config.json" in _one_line(e)
    with pytest.raises(UnknownNameError):
        G.run_generation(tiny, _items(1), ["FasterVLM", "FasterVLM"], [8], cache_dir=False)
    with pytest.raises(UnknownNameError):
        G.run_generation(tiny, _items(1), ["FasterVLM"], [8], max_new_tokens=0, cache_dir=False)
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError) as e:
            G.run_generation("toyllava", _items(1), ["FasterVLM"], [8], device="cuda", cache_dir=False)
        assert "cpu" in _one_line(e)
    with pytest.raises(AssetError) as e:  # no ground truth for unlabelled images
        G.run_generation(
            tiny,
            [ImageItem(id="u", source="mine", loader=lambda: _image(9))],
            ["FasterVLM"],
            [8],
            max_new_tokens=2,
            cache_dir=False,
        )
    assert "ground truth" in _one_line(e)


def test_coco_ground_truth_is_found_next_to_the_image_folder(tmp_path, chair_parser):
    from prunelab.study.data import load_image_set

    img_dir = tmp_path / "coco" / "val2014"
    img_dir.mkdir(parents=True)
    for i in (7, 42):
        _image(i).save(img_dir / f"COCO_val2014_{i:012d}.jpg")
    ann = tmp_path / "coco" / "annotations"
    ann.mkdir()
    cats = [{"id": 18, "name": "dog"}, {"id": 3, "name": "car"}]
    images = [{"id": 7}, {"id": 42}]
    (ann / "instances_val2014.json").write_text(
        json.dumps(
            {
                "categories": cats,
                "images": images,
                "annotations": [{"image_id": 7, "category_id": 18}, {"image_id": 42, "category_id": 3}],
            }
        )
    )
    (ann / "captions_val2014.json").write_text(
        json.dumps(
            {
                "images": images,
                "annotations": [
                    {"image_id": 7, "caption": "A dog sleeps on a couch."},
                    {"image_id": 42, "caption": "A red car."},
                ],
            }
        )
    )
    spec = f"coco:{img_dir}"
    items = load_image_set(spec)
    gt = G.ground_truth_for(items, spec)
    assert gt.objects("COCO_val2014_000000000007") == {"dog", "couch"}  # instances + reference-caption objects
    assert gt.objects("COCO_val2014_000000000042") == {"car"}
    (ann / "captions_val2014.json").unlink()
    with pytest.raises(AssetError) as e:
        G.ground_truth_for(items, spec)
    assert "annotations" in _one_line(e)


def test_pope_prefix_cache_gives_the_same_answers_under_its_own_key(tiny, tmp_path):
    """run_generation(pope_prefix_cache=True): the questions' shared prefix is prefilled once; answers equal the
    default path's, and the entries are cached apart from the default ones (both keys coexist)."""
    kw = dict(task="pope", max_new_tokens=3, cache_dir=tmp_path, progress=False)
    plain = G.run_generation(tiny, _items(3), [None, "FasterVLM"], [8], **kw)
    cached = G.run_generation(tiny, _items(3), [None, "FasterVLM"], [8], pope_prefix_cache=True, **kw)
    assert list(cached["text"]) == list(plain["text"]) and len(cached) == len(plain)
    n_entries = len(list(tmp_path.rglob("entries/*.json")))
    assert n_entries == 2 * 3 * 2  # image x method x budget, once per setting of the flag
    again = G.run_generation(tiny, _items(3), [None, "FasterVLM"], [8], **kw)
    assert list(again["text"]) == list(plain["text"]) and len(list(tmp_path.rglob("entries/*.json"))) == n_entries


def test_batched_descriptions_equal_one_by_one_and_are_keyed_by_the_selection_list(tiny, tmp_path, monkeypatch):
    """run_generation(describe_batch_size=k): the image's selections decoded k at a time equal the batch-1 texts
    (fp32), cached under their own keys; a second call decodes nothing; another method list is another entry."""
    kw = dict(task="describe", max_new_tokens=6, cache_dir=tmp_path, progress=False)
    methods = [None, "FasterVLM", "DivPrune"]
    plain = G.run_generation(tiny, _items(2), methods, [4, 8], **kw)
    batched = G.run_generation(tiny, _items(2), methods, [4, 8], describe_batch_size=3, **kw)
    assert list(batched["text"]) == list(plain["text"]) and list(batched["method"]) == list(plain["method"])
    assert list(batched["kept_indices"]) == list(plain["kept_indices"])
    n_entries = len(list(tmp_path.rglob("entries/*.json")))
    assert n_entries == 2 * 5 * 2  # image x (vanilla + 2 methods x 2 budgets) x (batched or not)
    calls = []
    monkeypatch.setattr(tiny.adapter, "run_selections", lambda *a, **k: calls.append(1))
    again = G.run_generation(tiny, _items(2), methods, [4, 8], describe_batch_size=3, **kw)
    assert not calls and list(again["text"]) == list(plain["text"])
    monkeypatch.undo()
    G.run_generation(tiny, _items(2), methods[:2], [4, 8], describe_batch_size=3, **kw)
    assert len(list(tmp_path.rglob("entries/*.json"))) == n_entries + 2 * 3
    with pytest.raises(Exception, match="describe_batch_size must be a positive integer"):
        G.run_generation(tiny, _items(2), methods, [4], describe_batch_size=0, **kw)

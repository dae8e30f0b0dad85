"""The emoji-COCO toy world: categories, scenes, rendering, texts, POPE and the fixed splits."""

from __future__ import annotations

import csv
import json
import re
from collections import Counter

import numpy as np
import pytest

from prunelab.errors import AssetError, PrunelabError, UnknownNameError
from prunelab.paths import REPO_ROOT
from prunelab.toyworld import categories as C, font as F


@pytest.fixture(scope="module")
def tw():
    try:
        F.ensure_emoji_font()
    except AssetError as err:
        pytest.skip(f"emoji font unavailable: {err}")
    from prunelab.toyworld import scenes, splits, text

    return scenes, text, splits


@pytest.fixture(scope="module")
def sample(tw):
    """A few dozen scenes of every complexity."""
    scenes, _, _ = tw
    return [scenes.make_scene("unit", i, 7, c) for c in scenes.COMPLEXITIES for i in range(14)]


# ------------------------------------------------------------------------------------------ categories
def test_category_table():
    assert len(C.CATEGORIES) >= 40
    assert len(set(C.CATEGORY_NAMES)) == len(C.CATEGORIES)
    assert set(C.CATEGORY_NAMES) <= set(C.COCO_CATEGORIES) and len(C.COCO_CATEGORIES) == 80
    cps = [v.codepoint for c in C.CATEGORIES for v in c.variants] + [d.codepoint for d in C.DISTRACTORS]
    assert len(cps) == len(set(cps)), "an emoji is used twice"
    in_context = {c for ctx in C.CONTEXTS for c in ctx.weights}
    assert in_context <= set(C.CATEGORY_NAMES)
    assert in_context == set(C.CATEGORY_NAMES), f"never in any context: {set(C.CATEGORY_NAMES) - in_context}"
    freq = C.category_frequency()
    assert abs(sum(freq.values()) - 1) < 1e-9
    for ctx in C.CONTEXT_NAMES:
        assert abs(sum(C.context_distribution(ctx).values()) - 1) < 1e-9


def test_cooccurrence_reflects_contexts():
    co = C.cooccurrence()
    assert co["knife"]["spoon"] > co["knife"]["giraffe"]
    assert co["elephant"]["zebra"] > co["elephant"]["laptop"]
    assert co["cow"]["sheep"] == pytest.approx(co["sheep"]["cow"])


@pytest.fixture(scope="module")
def chair_parser():
    """The project's real CHAIR caption parser (WordNet lemmas, COCO synonym table), if its assets are here."""
    try:
        from prunelab.eval.mentions import CaptionParser

        return CaptionParser()
    except (ImportError, PrunelabError) as err:
        pytest.skip(f"CHAIR parser unavailable: {err}")


def test_nouns_are_chair_synonyms(chair_parser):
    """Every noun form the descriptions may use is read by CHAIR as exactly its own category."""
    for cat in C.CATEGORIES:
        for noun in cat.all_nouns():
            for form in filter(None, (noun.singular, noun.plural)):
                assert chair_parser.objects(f"I see {form} here.") == {cat.name}, (cat.name, form)
    for d in C.DISTRACTORS:
        assert chair_parser.objects(f"{d.word} and {d.plural}") == set(), d.word
    for ctx in C.CONTEXTS:
        assert chair_parser.objects(ctx.phrase) == set(), ctx.phrase


# ------------------------------------------------------------------------------------------ glyphs, font
def test_every_emoji_renders_in_colour(tw):
    scenes, _, _ = tw
    chroma = []
    for cp in [v.codepoint for c in C.CATEGORIES for v in c.variants] + [d.codepoint for d in C.DISTRACTORS]:
        g = scenes.glyph(cp, 64)
        assert max(g.shape[:2]) == 64 and g[..., 3].max() == 255, cp
        assert (g[..., 3] == 0).any(), f"{cp} is an opaque box (missing glyph?)"
        rgb = g[..., :3][g[..., 3] > 128].astype(int)
        assert len(np.unique(rgb, axis=0)) > 30, f"{cp} is flat (missing glyph?)"
        chroma.append((rgb.max(1) - rgb.min(1)).max())
    # Colour bitmaps, not a monochrome outline font (a few emoji, like the sheep, are grey by design).
    assert np.mean(np.array(chroma) > 60) > 0.9


def test_font_missing_gives_one_line_error(monkeypatch, tmp_path):
    monkeypatch.delenv(F.ENV_VAR, raising=False)
    monkeypatch.setenv("PRUNELAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(F, "SYSTEM_FONT", tmp_path / "nope.ttf")

    def no_network(package, **kw):
        raise AssetError(f"`apt-get download {package}` failed (no network); run apt-get update")

    import prunelab.assets.debian

    monkeypatch.setattr(prunelab.assets.debian, "fetch_deb", no_network)
    with pytest.raises(AssetError) as err:
        F.ensure_emoji_font()
    msg = str(err.value)
    assert "\n" not in msg and "apt-get install fonts-noto-color-emoji" in msg and F.ENV_VAR in msg
    with pytest.raises(AssetError):
        F.ensure_emoji_font(fetch=False)
    monkeypatch.setenv(F.ENV_VAR, str(tmp_path / "missing.ttf"))
    with pytest.raises(AssetError, match="does not exist"):
        F.ensure_emoji_font()


def test_font_lookup_is_idempotent(tw):
    assert F.ensure_emoji_font() == F.ensure_emoji_font()
    assert len(F.font_sha256()) == 64


# ------------------------------------------------------------------------------------------ scenes
def test_scene_is_deterministic(tw):
    scenes, _, _ = tw
    for c in scenes.COMPLEXITIES:
        a, b = scenes.make_scene("unit", 3, 11, c), scenes.make_scene("unit", 3, 11, c)
        assert a.to_record() == b.to_record()
        assert scenes.render_array(a).tobytes() == scenes.render_array(b).tobytes()
        assert scenes.make_scene("unit", 4, 11, c).to_record() != a.to_record()
        assert scenes.make_scene("unit", 3, 12, c).to_record() != a.to_record()


def test_boxes_counts_and_overlap(tw, sample):
    scenes, _, _ = tw
    for s in sample:
        assert s.objects, s.id
        assert sum(s.counts.values()) == len(s.objects)
        assert s.counts == dict(Counter(o.category for o in s.objects))
        boxes = [o.box for o in s.objects + s.distractors]
        for o in s.objects + s.distractors:
            x0, y0, x1, y1 = o.box
            assert 0 <= x0 < x1 <= scenes.CANVAS and 0 <= y0 < y1 <= scenes.CANVAS
            g = scenes.glyph(o.codepoint, o.size, o.flip)
            assert g.shape[:2] == (y1 - y0, x1 - x0)
        for i, a in enumerate(boxes):
            for b in boxes[i + 1 :]:
                iw, ih = min(a[2], b[2]) - max(a[0], b[0]), min(a[3], b[3]) - max(a[1], b[1])
                inter = max(iw, 0) * max(ih, 0)
                small = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
                assert inter <= scenes.MAX_OVERLAP * small + 1e-9
        assert all(o.category in C.BY_NAME for o in s.objects)
        assert all(o.category not in C.BY_NAME for o in s.distractors)


def test_simple_and_complex_differ(tw, sample):
    scenes, _, _ = tw
    by = {c: [s for s in sample if s.complexity == c] for c in scenes.COMPLEXITIES}
    for s in by["simple"]:
        assert 1 <= len(s.objects) <= 2 and not s.distractors
        assert s.background["kind"] in ("plain", "gradient")
        assert min(max(o.box[2] - o.box[0], o.box[3] - o.box[1]) for o in s.objects) >= 80
    for s in by["complex"]:
        assert len(s.objects) >= 5 and s.distractors
        assert s.background["kind"] in ("texture", "photo", "noise", "shapes")
        assert max(o.size for o in s.objects) <= 76
    mean = {c: np.mean([len(s.objects) for s in v]) for c, v in by.items()}
    assert mean["simple"] < mean["medium"] < mean["complex"]

    # Complex backgrounds are busier: more high-frequency energy in the image.
    def busy(s):
        a = scenes.render_array(s).astype(float).mean(2)
        return np.abs(np.diff(a, axis=1)).mean()

    assert np.median([busy(s) for s in by["complex"]]) > 2 * np.median([busy(s) for s in by["simple"]])


def test_record_roundtrip_and_json(tw, sample):
    scenes, _, _ = tw
    for s in sample[::5]:
        rec = json.loads(json.dumps(s.to_record()))
        back = scenes.Scene.from_record(rec)
        assert back == s
        assert np.array_equal(scenes.render_array(back), scenes.render_array(s))


def test_hflip_mirrors_pixels_and_boxes(tw, sample):
    scenes, _, _ = tw
    for s in sample[::7]:
        f = s.hflip()
        assert np.array_equal(scenes.render_array(f), scenes.render_array(s)[:, ::-1])
        assert f.hflip() == s
        assert f.counts == s.counts


def test_render_is_pil_rgb(tw, sample):
    scenes, _, _ = tw
    im = scenes.render(sample[0])
    assert im.mode == "RGB" and im.size == (336, 336)


def test_patch_masks_on_a_hand_built_scene(tw):
    scenes, _, _ = tw
    g = scenes.glyph("1F34E", 28)  # an apple, about two patches wide
    h, w = g.shape[:2]
    obj = scenes.SceneObject("apple", "1F34E", (28, 42, 28 + w, 42 + h), 28)
    s = scenes.Scene(
        "hand-0",
        "hand",
        0,
        0,
        "simple",
        "kitchen",
        {"kind": "plain", "seed": 0, "colour": "white", "phrase": "a plain white background"},
        (obj,),
    )
    m = scenes.patch_masks(s, min_fraction=0)
    assert m.shape == (1, 24, 24)
    rows, cols = np.nonzero(m[0])
    # The box starts exactly on patch (3, 2) and is at most 28 px: patches rows 3..4, cols 2..3 only.
    assert rows.min() >= 3 and rows.max() <= 4 and cols.min() >= 2 and cols.max() <= 3
    assert m[0].sum() >= 3
    cov = scenes.patch_coverage(s)
    assert cov[0].sum() * 196 == pytest.approx(g[..., 3].sum() / 255, rel=1e-4)
    assert scenes.patch_indices(s, 0)[0] == sorted(int(r * 24 + c) for r, c in zip(rows, cols))


def test_every_object_covers_a_patch(tw, sample):
    scenes, _, _ = tw
    for s in sample:
        m = scenes.patch_masks(s)
        assert m.shape == (len(s.objects), 24, 24)
        assert m.reshape(len(s.objects), -1).any(1).all(), s.id
        for o, mk in zip(s.objects, m):
            rows, cols = np.nonzero(mk)
            x0, y0, x1, y1 = o.box
            assert rows.min() >= y0 // 14 and rows.max() <= (y1 - 1) // 14
            assert cols.min() >= x0 // 14 and cols.max() <= (x1 - 1) // 14


def test_bad_names_raise(tw):
    scenes, text, splits = tw
    with pytest.raises(UnknownNameError):
        scenes.make_scene("unit", 0, 0, "hard")
    with pytest.raises(UnknownNameError):
        scenes.make_scene("unit", 0, 0, "simple", context="moon base")
    with pytest.raises(UnknownNameError):
        list(splits.load_split("dev"))
    with pytest.raises(UnknownNameError):
        text.pope_questions(scenes.make_scene("unit", 0), "sneaky")


# ------------------------------------------------------------------------------------------ texts
def test_prompt_constants(tw):
    _, text, _ = tw
    assert text.DESCRIBE_PROMPT == "Please describe this image in detail."
    assert text.POPE_TEMPLATE.format(object="dog") == "Is there a dog in the image?"


def test_descriptions_name_exactly_the_ground_truth(tw, sample):
    _, text, _ = tw
    for s in sample:
        for v in range(2):
            d = text.describe(s, v)
            assert set(text.mentioned_categories(d)) == set(s.counts), (s.counts, d)
            words = set(re.findall(r"[a-z]+", d.lower()))
            for cat, n in s.counts.items():
                if n > 1:
                    assert text.NUMBERS[n] in words, (cat, n, d)
        assert text.describe(s, 0) == text.describe(s, 0)


def test_chair_reads_descriptions_as_ground_truth(tw, sample, chair_parser):
    """CHAIR's own parser finds exactly the scene's categories: no hallucination, full recall."""
    _, text, _ = tw
    for s in sample:
        for v in range(2):
            d = text.describe(s, v)
            assert chair_parser.objects(d) == set(s.counts), (s.counts, d)


def test_descriptions_vary_and_use_synonyms(tw, sample):
    _, text, _ = tw
    texts = [text.describe(s, v) for s in sample for v in range(2)]
    assert len(set(texts)) == len(texts)
    openings = Counter(t.split()[0] for t in texts)
    assert len(openings) >= 4
    vocab = set(re.findall(r"[a-z]+", " ".join(texts).lower()))
    canon = {w for n in C.CATEGORY_NAMES for w in n.split()}
    synonyms = {w for c in C.CATEGORIES for n in c.all_nouns() for w in n.singular.lower().split()} - canon
    assert vocab & synonyms, "no synonym was ever used"
    assert any(re.search(r"\b(two|three|four) \w+", t) for t in texts)


def test_pope_questions(tw, sample):
    scenes, text, _ = tw
    co = C.cooccurrence()
    freq = C.category_frequency()
    for s in sample:
        present = set(s.counts)
        for setting in text.POPE_SETTINGS:
            qs = text.pope_questions(s, setting)
            yes = [q for q in qs if q["answer"] == "yes"]
            no = [q for q in qs if q["answer"] == "no"]
            assert len(yes) == len(no) == min(3, len(present))
            assert all(q["object"] in present for q in yes)
            assert all(q["object"] not in present for q in no)
            assert all(q["question"] == f"Is there a {q['object']} in the image?" for q in qs)
            absent = [c for c in C.CATEGORY_NAMES if c not in present]
            if setting == "popular":
                top = sorted(absent, key=lambda c: -freq[c])[: len(no)]
                assert {q["object"] for q in no} == set(top)
            if setting == "adversarial":
                score = {c: sum(co[g][c] for g in present) for c in absent}
                median = np.median(list(score.values()))
                for q in no:
                    assert score[q["object"]] >= median
                    # shares a context with some ground-truth object: a plausible companion
                    assert any(q["object"] in ctx.weights and present & set(ctx.weights) for ctx in C.CONTEXTS)
        assert text.pope_questions(s, "random") == text.pope_questions(s, "random")


def test_text_record_is_json(tw, sample):
    _, text, _ = tw
    rec = text.text_record(sample[-1], n_descriptions=2)
    json.dumps(rec)
    assert rec["prompt"] == text.DESCRIBE_PROMPT and len(rec["descriptions"]) == 2
    assert set(rec["pope"]) == set(text.POPE_SETTINGS)


# ------------------------------------------------------------------------------------------ splits
def test_split_sizes_schedule_and_disjointness(tw):
    _, _, splits = tw
    assert splits.SPLIT_SIZES["train"] >= 5000 and splits.SPLIT_SIZES["test"] >= 400
    test_levels = Counter(splits.complexity_of("test", i) for i in range(splits.SPLIT_SIZES["test"]))
    assert test_levels == {"simple": 200, "complex": 200}
    train_levels = Counter(splits.complexity_of("train", i) for i in range(splits.SPLIT_SIZES["train"]))
    assert set(train_levels) == {"simple", "medium", "complex"} and min(train_levels.values()) > 1000
    ids = {name: splits.split_ids(name) for name in splits.SPLIT_SIZES}
    all_ids = [i for v in ids.values() for i in v]
    assert len(all_ids) == len(set(all_ids))
    it = splits.load_split("train", limit=3, start=10)
    assert not isinstance(it, list)
    got = list(it)
    assert [s.id for s in got] == ids["train"][10:13]
    # different splits draw different scenes at the same index
    recs = [splits.get_scene(n, 0).to_record() for n in splits.SPLIT_SIZES]
    assert len({json.dumps(r["objects"]) for r in recs}) == 3
    with pytest.raises(UnknownNameError):
        splits.get_scene("test", splits.SPLIT_SIZES["test"])


def test_committed_test_manifest_matches(tw):
    """The ids and the scene-record checksum under data/toyworld still describe the same test scenes."""
    _, _, splits = tw
    d = REPO_ROOT / "data" / "toyworld"
    rows = list(csv.DictReader((d / "test_ids.csv").open()))
    assert len(rows) == splits.SPLIT_SIZES["test"]
    assert Counter(r["complexity"] for r in rows) == {"simple": 200, "complex": 200}
    first = [splits.get_scene("test", i) for i in range(6)]
    for r, s in zip(rows, first):
        assert r["id"] == s.id and int(r["n_objects"]) == len(s.objects) and r["context"] == s.context
    res = splits.verify_test_split(d, images=False)
    assert res["records_ok"]


@pytest.mark.slow
def test_committed_test_images_match(tw):
    _, _, splits = tw
    res = splits.verify_test_split(REPO_ROOT / "data" / "toyworld", images=True, strict=False)
    if res["actual"]["font_sha256"] != res["expected"]["font_sha256"]:
        pytest.skip("a different emoji font is installed; pixels cannot match")
    assert res["records_ok"] and res["images_ok"]


def test_manifest_write_and_verify_roundtrip(tw, tmp_path, monkeypatch):
    _, _, splits = tw
    monkeypatch.setitem(splits.SPLIT_SIZES, "test", 8)
    sums = splits.write_test_manifest(tmp_path)
    assert (tmp_path / "test_ids.csv").is_file() and sums["n_scenes"] == "8"
    assert splits.verify_test_split(tmp_path)["images_ok"]
    text = (tmp_path / "test_checksum.txt").read_text()
    (tmp_path / "test_checksum.txt").write_text(text.replace(sums["images_sha256"], "0" * 64))
    with pytest.raises(AssetError, match="images differ"):
        splits.verify_test_split(tmp_path)
    assert not list(tmp_path.glob("*.part"))


# ------------------------------------------------------------------------------------------ properties, CLI
from hypothesis import (  # noqa: E402
    given,
    settings,
    strategies as st,  # noqa: E402
)


@settings(max_examples=25, deadline=None)
@given(
    index=st.integers(0, 10**6),
    seed=st.integers(0, 2**31 - 1),
    level=st.sampled_from(("simple", "medium", "complex")),
    mirrored=st.booleans(),
)
def test_any_scene_is_consistent(index, seed, level, mirrored):
    from prunelab.toyworld import scenes, text

    s = scenes.make_scene("prop", index, seed, level)
    s = s.hflip() if mirrored else s
    assert s.objects and sum(s.counts.values()) == len(s.objects)
    assert all(0 <= o.box[0] < o.box[2] <= 336 and 0 <= o.box[1] < o.box[3] <= 336 for o in s.objects + s.distractors)
    assert max(s.counts.values()) <= 4
    assert all(C.BY_NAME[c].countable or n == 1 for c, n in s.counts.items())
    assert set(text.mentioned_categories(text.describe(s))) == set(s.counts)
    for q in text.pope_questions(s, "adversarial"):
        assert (q["answer"] == "yes") == (q["object"] in s.counts)


def test_cli_export(tw, tmp_path):
    from prunelab.toyworld.__main__ import main

    out = tmp_path / "val.jsonl"
    assert main(["export", "val", str(out), "--limit", "3", "--descriptions", "2"]) == 0
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in recs] == ["val-00000", "val-00001", "val-00002"]
    assert all(len(r["descriptions"]) == 2 and r["prompt"] == "Please describe this image in detail." for r in recs)

"""LLaVA-NeXT through the study loop (issue #14): a tiny random LLaVA-NeXT folder (written with save_pretrained, loaded
by path) through load_generation_model, run_generation (describe, POPE) and run_vision, against the LLaVA path's
tables; the cache; T = N equal to the unpruned model; POPE's shared selection against one question at a time; what
the family refuses, refused before any generation."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from family_study import SET, counting_generate, run_small as _run
from prunelab.errors import CapabilityError, ImageError
from prunelab.models.llava_next import LlavaNextAdapter, NextImages
from prunelab.models.loader import load_generation_model
from prunelab.models.prompts import VICUNA_SYSTEM
from prunelab.models.tiny_next import TINY_NEXT_TOKENS, save_tiny_llava_next_hf
from prunelab.study import generation as G, runner, scoring as SC
from prunelab.study.complexity import tower_encoder

N = TINY_NEXT_TOKENS  # 336 px -> base tile 8 x 8 + 2 x 2 crops of 8 x 8 = 320 visual tokens
BASE = 64  # the base tile's patches: what the image-level numbers (n_tokens, erank_full_*) count
NEWLINES = 16
MISTRAL = (  # a Mistral-style chat template written for this test ("[INST] <image>\n... [/INST]")
    "{% for m in messages %}[INST] {% for c in m['content'] %}{% if c['type'] == 'image' %}<image>\n"
    "{% else %}{{ c['text'] }}{% endif %}{% endfor %} [/INST]{% endfor %}"
)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return save_tiny_llava_next_hf(
        tmp_path_factory.mktemp("next") / "tiny-llava-next", words=["dog", "cat"], text_layers=4
    )


@pytest.fixture(scope="module")
def gm(folder):
    return load_generation_model(str(folder), device="cpu")


def test_folder_loads_with_vicuna_prompt_processor_and_fingerprint(folder, gm):
    from PIL import Image

    assert isinstance(gm.adapter, LlavaNextAdapter) and gm.prompt_format == "llava_v1"
    assert gm.n_image_tokens == N
    ids = gm.prompt_ids("Please describe this image in detail.")
    assert ids.count(gm.adapter.parts.image_token_id) == 1
    text = gm.tokenizer.decode(ids, skip_special_tokens=False)
    assert text.startswith(f"<s> {VICUNA_SYSTEM.split()[0]}") and "USER : <image> Please" in text
    assert text.endswith("ASSISTANT :") and gm.question_prompt("Is there a dog?").endswith("single word or phrase.")
    pv = gm.pixels(Image.new("RGB", (336, 336)))
    assert isinstance(pv, NextImages) and tuple(pv.pixel_values.shape) == (1, 5, 3, 112, 112) and len(pv) == 1
    assert pv.image_sizes.tolist() == [[336, 336]]
    wide = gm.pixels(Image.new("RGB", (336, 168)))  # another size, another layout: 2 x 1 crops, rows un-padded
    assert gm.adapter.tokens_for(wide) == 64 + 16 * 8 and gm.adapter.layout(wide.size(0)).n_tiles == 3
    again = load_generation_model(str(folder), device="cpu")
    assert again.fingerprint == gm.fingerprint
    other = load_generation_model(str(save_tiny_llava_next_hf(folder.parent / "seed1", seed=1)), device="cpu")
    assert other.fingerprint != gm.fingerprint


def test_a_folder_with_a_chat_template_uses_it(folder):
    path = save_tiny_llava_next_hf(folder.parent / "mistral", words=["dog"], chat_template=MISTRAL)
    gm = load_generation_model(str(path), device="cpu")
    assert gm.prompt_format == "processor_chat"
    ids = gm.prompt_ids("Please describe this image in detail.")
    assert ids.count(gm.adapter.parts.image_token_id) == 1 and ids[0] == gm.tokenizer.bos_token_id
    text = gm.tokenizer.decode(ids, skip_special_tokens=False)
    assert text == "<s> [ INST ] <image> Please describe this image in detail. [ / INST ]"


@pytest.fixture(scope="module")
def llava_columns(tmp_path_factory):
    """The columns of the LLaVA path's tables (a tiny llava-hf folder), per task."""
    from prunelab.models.tiny import save_tiny_llava_hf

    path = save_tiny_llava_hf(tmp_path_factory.mktemp("llava") / "tiny-llava")
    lm = load_generation_model(str(path), device="cpu")
    out = {}
    for task in ("describe", "pope"):
        df = G.run_generation(
            lm, SET, ["FasterVLM"], [8], task=task, n=1, max_new_tokens=2, cache_dir=False, progress=False,
            pope_settings=["random"],
        )  # fmt: skip
        out[task] = list(df.columns)
    return out


METHODS = ["Vanilla", "FasterVLM", "DivPrune", "FastV"]


@pytest.fixture(scope="module")
def tables(gm, tmp_path_factory):
    cache = tmp_path_factory.mktemp("next-gen")
    with counting_generate(gm.adapter.model) as calls:
        out = {task: _run(gm, METHODS, [8, N], task, cache) for task in ("describe", "pope")}
    return out, cache, calls[0]


def test_describe_and_pope_tables_have_the_llava_columns(tables, llava_columns):
    out, _, calls = tables
    desc, pope = out["describe"], out["pope"]
    assert list(desc.columns) == llava_columns["describe"] and list(pope.columns) == llava_columns["pope"]
    assert len(desc) == 2 * (1 + 3 * 2) and desc.attrs["prompt_format"] == "llava_v1"
    n_q = pope.groupby("image_id")["question_id"].nunique()
    assert len(pope) == int(n_q.sum()) * (1 + 3 * 2) and (n_q > 0).all()
    # descriptions one by one; POPE: one batch per image x selection (pope_batch_size 32), FastV per question
    n_img = pope["image_id"].nunique()
    assert calls == len(desc) + n_img * (1 + 2 * 2) + int(n_q.sum()) * 2
    for df in (desc, pope):
        assert (df["n_tokens"] == BASE).all()  # image-level numbers are the base tile's
        pre = df[df["method"].isin(["FasterVLM", "DivPrune"])]
        assert (pre["n_kept"] == pre["budget"]).all()
        assert pre["kept_indices"].map(len).eq(pre["budget"] + NEWLINES).all()  # newlines always kept
        assert (df.loc[df["method"] == G.VANILLA, "budget"] == N).all()
        assert pre["erank_kept_projected"].notna().all() and pre["attention_mass_kept"].between(0, 1).all()
        assert df["prompt_len"].nunique() > 1  # pruning shortens the prompt
        fastv = df[df["method"] == "FastV"]
        assert (fastv["n_kept"] <= fastv["budget"]).all() and (fastv["budget"] <= N + NEWLINES).all()
    assert set(SC.POPE_COLUMNS) <= set(pope.columns) and set(SC.CHAIR_COLUMNS) <= set(desc.columns)


def test_T_equal_N_is_the_unpruned_model(tables):
    out, _, _ = tables
    for df in out.values():
        key = ["image_id"] + (["question_id"] if "question_id" in df else [])
        van = df[df["method"] == G.VANILLA].set_index(key)["text"].sort_index()
        for m in ("FasterVLM", "DivPrune"):
            full = df[(df["method"] == m) & (df["budget"] == N)]
            assert full["kept_indices"].map(sorted).map(list(range(N + NEWLINES)).__eq__).all()
            assert full.set_index(key)["text"].sort_index().equals(van)
            # the base tile keeps all its patches, so its kept erank is its full erank
            assert (full["erank_kept_projected"] - full["erank_full_projected"]).abs().max() < 1e-4
        # guard: pruning to 8 tokens changes some text, so the equality above is not vacuous
        low = df[(df["method"] == "FasterVLM") & (df["budget"] == 8)].set_index(key)["text"].sort_index()
        assert not low.equals(van)


def test_pope_shared_selection_equals_one_question_at_a_time(gm, tables):
    out, _, _ = tables
    pope = out["pope"]
    sub = pope[(pope["method"] == "FasterVLM") & (pope["budget"] == 8)]
    iid = sub["image_id"].iloc[0]
    rows = sub[sub["image_id"] == iid]
    from prunelab.study.data import load_image_set

    item = next(it for it in load_image_set(SET, n=2) if it.id == iid)
    pv = gm.pixels(item.image)
    for _, r in rows.iterrows():
        ids = torch.tensor(gm.prompt_ids(gm.question_prompt(r["question"])))
        one = gm.adapter.run([ids], pv, "FasterVLM", 8, max_new_tokens=5, eos_token_id=gm.tokenizer.eos_token_id)
        assert one.texts[0] == r["text"] and one.records[0]["kept_indices"] == list(r["kept_indices"])


def test_second_call_reads_the_cache(gm, tables):
    out, cache, _ = tables
    with counting_generate(gm.adapter.model) as calls:
        again = {t: _run(gm, METHODS, [8, N], t, cache) for t in ("describe", "pope")}
    assert calls[0] == 0
    for t in out:
        cols = [c for c in out[t].columns if not c.endswith("_s") or c == "chair_s"]
        pd.testing.assert_frame_equal(again[t][cols], out[t][cols])


def test_run_vision_prunes_the_base_tile_generation_reads(gm, tables):
    """run_vision's context is the base tile (its own [CLS], 8 x 8 grid): its image-level numbers are the ones in
    the generation tables, and its kept set equals what the adapter keeps when pruning that tile's context."""
    out, _, _ = tables
    v = runner.run_vision(
        SET, ["FasterVLM", "DivPrune", "VisionZip"], [8], n=2, encoder=tower_encoder(gm), n_random=2,
        cache_dir=False, progress=False,
    )  # fmt: skip
    assert len(v) == 2 * 3 and (v["n_tokens"] == BASE).all() and (v["n_kept"] == 8).all()
    desc = out["describe"].drop_duplicates("image_id").set_index("image_id")
    vis = v.drop_duplicates("image_id").set_index("image_id")
    for iid in desc.index:
        assert abs(vis.loc[iid, "erank_full_projected"] - desc.loc[iid, "erank_full_projected"]) < 1e-4
    from prunelab.methods.base import prune
    from prunelab.study.data import load_image_set

    item = load_image_set(SET, n=2)[0]
    ctx = gm.adapter.context(gm.adapter.encode_images(gm.pixels(item.image), (-2, -1)), 0)
    want = prune(ctx, "FasterVLM", 8).indices.tolist()
    got = v[(v["method"] == "FasterVLM") & (v["image_id"] == item.id)]["kept_indices"].iloc[0]
    assert list(got) == want


def test_batched_descriptions_are_refused_in_one_line_before_generation(gm):
    with counting_generate(gm.adapter.model) as calls, pytest.raises(CapabilityError) as err:
        _run(gm, ["FasterVLM"], [8], "describe", False, describe_batch_size=4)
    msg = str(err.value)
    assert "run_selections is not available for LLaVA-NeXT" in msg and "describe_batch_size=1" in msg
    assert "\n" not in msg and calls[0] == 0


def test_images_need_their_sizes(gm):
    with pytest.raises(ImageError, match="needs image_sizes with pixel_values"):
        gm.adapter.run([torch.tensor([1, 2])], torch.zeros(1, 5, 3, 112, 112), None)
    with pytest.raises(ImageError, match=r"2 images but 1 image sizes"):
        NextImages(torch.zeros(2, 5, 3, 112, 112), torch.tensor([[336, 336]]))


@pytest.mark.parametrize("prefix_cache", [False, True])
def test_shared_selection_on_a_non_square_image_equals_batch_1(gm, prefix_cache):
    """A 420 x 300 image (5 tiles, crop rows un-padded): run_shared_image's one selection and batched decode (with
    or without the shared prefix cache) give each question's batch-1 answer and kept set."""
    import numpy as np
    from PIL import Image

    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 420, 3), dtype=np.uint8))
    pv = gm.pixels(img)
    lay = gm.adapter.layout(pv.size(0))
    assert lay.n_tiles == 5 and lay.rows != (0, 16)  # un-padding drops crop rows
    qs = [torch.tensor(gm.prompt_ids(gm.question_prompt(f"Is there a {w} in the image?"))) for w in ("dog", "cat")]
    kw = dict(max_new_tokens=4, eos_token_id=-1)
    shared = gm.adapter.run_shared_image(qs, pv, "VisPruner", 20, prefix_cache=prefix_cache, **kw)
    assert all(r["shared_selection"] for r in shared.records) and ("prefix_len" in shared.records[0]) == prefix_cache
    for q, seq, rec in zip(qs, shared.sequences, shared.records):
        one = gm.adapter.run([q], pv, "VisPruner", 20, **kw)
        assert one.sequences[0] == seq and one.records[0]["kept_indices"] == rec["kept_indices"]
        assert rec["n_kept"] == 20 and rec["n_image_tokens"] == lay.n_visual

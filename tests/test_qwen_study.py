"""Qwen2.5-VL through the study loop (issue #14): a tiny random Qwen2.5-VL folder (written with save_pretrained,
loaded by path) through load_generation_model, run_generation (describe, POPE) and run_vision, against the LLaVA
path's tables; the cache; T = N equal to the unpruned model; methods the family cannot run refused up front."""

from __future__ import annotations

import re

import pandas as pd
import pytest
import torch

from family_study import SET, counting_generate, run_small as _run
from prunelab.errors import CapabilityError, ImageError
from prunelab.models.loader import load_generation_model
from prunelab.models.qwen2_5_vl import QwenImages, QwenVLAdapter
from prunelab.models.qwen_loading import QWEN_SYSTEM
from prunelab.models.tiny_qwen import save_tiny_qwen2_5_vl_hf
from prunelab.study import generation as G, runner, scoring as SC
from prunelab.study.complexity import tower_encoder

N = 36  # 336 px -> smart_resize to 168 px (the folder's min = max pixels) -> 12 x 12 patches -> 6 x 6 merged


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return save_tiny_qwen2_5_vl_hf(tmp_path_factory.mktemp("qwen") / "tiny-qwen2.5-vl", words=["dog", "cat"])


@pytest.fixture(scope="module")
def gm(folder):
    return load_generation_model(str(folder), device="cpu")


def test_folder_loads_with_qwen_prompt_processor_and_fingerprint(folder, gm):
    assert isinstance(gm.adapter, QwenVLAdapter) and gm.prompt_format == "qwen_chatml"
    assert gm.n_image_tokens == N
    ids = gm.prompt_ids("Please describe this image in detail.")
    assert ids.count(gm.adapter.parts.image_token_id) == 1
    text = gm.tokenizer.decode(ids)
    assert text.startswith(f"<|im_start|> system {QWEN_SYSTEM} <|im_end|> <|im_start|> user <|vision_start|>")
    assert text.endswith("<|im_end|> <|im_start|> assistant")
    assert gm.question_prompt("Is there a dog in the image?").endswith("single word or phrase.")
    from PIL import Image

    pv = gm.pixels(Image.new("RGB", (336, 336)))
    assert isinstance(pv, QwenImages) and pv.image_grid_thw.tolist() == [[1, 12, 12]] and len(pv) == 1
    again = load_generation_model(str(folder), device="cpu")
    assert again.fingerprint == gm.fingerprint
    other = load_generation_model(str(save_tiny_qwen2_5_vl_hf(folder.parent / "seed1", seed=1)), device="cpu")
    assert other.fingerprint != gm.fingerprint


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


@pytest.fixture(scope="module")
def tables(gm, tmp_path_factory):
    cache = tmp_path_factory.mktemp("qwen-gen")
    methods = ["Vanilla", "FasterVLM", "DivPrune"]
    with counting_generate(gm.adapter.model) as calls:
        out = {task: _run(gm, methods, [8, N], task, cache) for task in ("describe", "pope")}
    return out, cache, calls[0]


def test_describe_and_pope_tables_have_the_llava_columns(tables, llava_columns):
    out, _, calls = tables
    desc, pope = out["describe"], out["pope"]
    assert list(desc.columns) == llava_columns["describe"] and list(pope.columns) == llava_columns["pope"]
    assert len(desc) == 2 * (1 + 2 * 2) and desc.attrs["prompt_format"] == "qwen_chatml"
    n_q = pope.groupby("image_id")["question_id"].nunique()
    assert len(pope) == int(n_q.sum()) * (1 + 2 * 2) and (n_q > 0).all()
    assert calls == len(desc) + len(pope)  # batch 1 everywhere: one generate per row
    for df in (desc, pope):
        pruned = df[df["method"] != G.VANILLA]
        assert (pruned["n_kept"] == pruned["budget"]).all() and (df["n_tokens"] == N).all()
        assert pruned["kept_indices"].map(len).eq(pruned["budget"]).all()
        assert (df.loc[df["method"] == G.VANILLA, "budget"] == N).all()
        assert df["erank_kept_projected"].notna().all() and df["attention_mass_kept"].between(0, 1).all()
        assert df["prompt_len"].nunique() > 1  # pruning shortens the prompt
    assert set(SC.POPE_COLUMNS) <= set(pope.columns) and set(SC.CHAIR_COLUMNS) <= set(desc.columns)


def test_T_equal_N_is_the_unpruned_model(tables):
    out, _, _ = tables
    for df in out.values():
        key = ["image_id"] + (["question_id"] if "question_id" in df else [])
        van = df[df["method"] == G.VANILLA].set_index(key)["text"].sort_index()
        for m in ("FasterVLM", "DivPrune"):
            full = df[(df["method"] == m) & (df["budget"] == N)]
            assert full["kept_indices"].map(sorted).map(list(range(N)).__eq__).all()
            assert full.set_index(key)["text"].sort_index().equals(van)
        # guard: pruning to 8 tokens changes some text, so the equality above is not vacuous
        low = df[(df["method"] == "FasterVLM") & (df["budget"] == 8)].set_index(key)["text"].sort_index()
        assert not low.equals(van)


def test_second_call_reads_the_cache(gm, tables):
    out, cache, _ = tables
    with counting_generate(gm.adapter.model) as calls:
        again = {t: _run(gm, ["Vanilla", "FasterVLM", "DivPrune"], [8, N], t, cache) for t in ("describe", "pope")}
    assert calls[0] == 0
    for t in out:
        cols = [c for c in out[t].columns if not c.endswith("_s") or c == "chair_s"]
        pd.testing.assert_frame_equal(again[t][cols], out[t][cols])


def test_run_vision_prunes_the_contexts_generation_prunes(gm, tables):
    out, _, _ = tables
    v = runner.run_vision(
        SET, ["FasterVLM", "DivPrune", "VisPruner"], [8], n=2, encoder=tower_encoder(gm), n_random=2,
        cache_dir=False, progress=False,
    )  # fmt: skip
    assert len(v) == 2 * 3 and (v["n_tokens"] == N).all() and (v["n_kept"] == 8).all()
    desc = out["describe"]
    for m in ("FasterVLM", "DivPrune"):
        gen = desc[(desc["method"] == m) & (desc["budget"] == 8)].set_index("image_id")["kept_indices"]
        vis = v[v["method"] == m].set_index("image_id")["kept_indices"]
        for iid in gen.index:
            assert list(vis[iid]) == list(gen[iid])


@pytest.mark.parametrize(
    ("method", "words"), [("VisionZip", "[CLS]"), ("PruMerge+", "[CLS]"), ("FastV", "M-RoPE"), ("DART", "M-RoPE")]
)
def test_methods_the_family_cannot_run_are_refused_up_front(gm, method, words):
    with counting_generate(gm.adapter.model) as calls, pytest.raises(CapabilityError) as err:
        _run(gm, ["FasterVLM", method], [8], "describe", False)
    msg = str(err.value)
    assert msg.startswith(f"{method} cannot run on this model") and words in msg and "\n" not in msg
    assert calls[0] == 0
    if method in ("VisionZip", "PruMerge+"):
        with pytest.raises(CapabilityError, match=f"^{re.escape(method)} cannot run"):
            runner.run_vision(SET, [method], [8], n=1, encoder=tower_encoder(gm), cache_dir=False, progress=False)


def test_images_and_grid_must_agree(gm):
    with pytest.raises(ImageError, match="image_grid_thw needs 96 patch rows"):
        QwenImages(torch.zeros(10, 1176), torch.tensor([[1, 8, 12]]))
    pv = torch.zeros(96, 1176)
    with pytest.raises(ImageError, match="needs image_grid_thw"):
        gm.adapter.run([torch.tensor([1, 2])], pv, None)

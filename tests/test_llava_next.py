"""LLaVA-NeXT (anyres) through LlavaNextAdapter on a tiny random LlavaNextConfig saved and loaded as an HF folder:
the packed layout against HF's own packing, T = N against unpruned generate, per-tile budgets and [CLS] scores,
newline tokens, hook hygiene, dispatch, and every registered method run or refused in one line."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from prunelab.errors import BudgetError, CapabilityError, PrunelabError
from prunelab.methods.adaptive import calibrate_erank
from prunelab.methods.base import available_methods, get_pruner
from prunelab.models import geometry as G
from prunelab.models.adapter import LlavaAdapter
from prunelab.models.families import make_adapter
from prunelab.models.hooks import count_hooks
from prunelab.models.llava_next import LlavaNextAdapter, NextImages, anyres_layout, split_budget

IMG = 250
PINPOINTS = [[56, 112], [112, 56], [112, 112]]
SIZE = (60, 100)  # (h, w): best resolution 112x112 -> 2x2 crops; un-padding keeps crop rows 2..5 of 0..7
SIDE = 4  # 56 px / 14 px patches


def _config():
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaNextConfig

    vis = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        image_size=56,
        patch_size=14,
        projection_dim=32,
    )
    text = LlamaConfig(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=8,  # SparseVLM's [2, 6, 15] schedule scales to three separate layers [0, 2, 4]
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=2048,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        tie_word_embeddings=False,
    )
    cfg = LlavaNextConfig(
        vision_config=vis,
        text_config=text,
        image_token_id=IMG,
        image_grid_pinpoints=PINPOINTS,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
    )
    cfg.vision_config._attn_implementation = "eager"  # the reference [CLS] attention below reads attentions
    return cfg


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from transformers import LlavaNextForConditionalGeneration

    torch.manual_seed(0)
    m = LlavaNextForConditionalGeneration(_config())
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # spread-out weights (as prunelab.models.tiny): a near-zero init ignores its input
        for name, p in m.named_parameters():
            if p.ndim >= 2:
                fan_in = p.shape[1] if "embed" not in name and "position" not in name else 16
                p.copy_(torch.randn(p.shape, generator=gen) * 0.25 / max(1.0, (fan_in / 16) ** 0.5))
    m.generation_config.pad_token_id, m.generation_config.eos_token_id = 0, 2
    path = tmp_path_factory.mktemp("tiny-llava-next")
    m.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def model(folder):
    from transformers import LlavaNextForConditionalGeneration

    m = LlavaNextForConditionalGeneration.from_pretrained(folder, attn_implementation={"vision_config": "eager"})
    return m.eval()


@pytest.fixture(scope="module")
def adapter(model):
    return LlavaNextAdapter(model)


@pytest.fixture(scope="module")
def inputs():
    from transformers import LlavaNextImageProcessorPil

    ip = LlavaNextImageProcessorPil(
        size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56}, image_grid_pinpoints=PINPOINTS
    )
    from PIL import Image

    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (*SIZE, 3), dtype=np.uint8))
    out = ip(images=[img], return_tensors="pt")
    lay = anyres_layout(_config(), SIZE)
    gen = torch.Generator().manual_seed(3)
    pre, suf = torch.randint(3, 240, (5,), generator=gen), torch.randint(3, 240, (6,), generator=gen)
    ids = torch.cat([torch.tensor([1]), pre, torch.full((lay.n_packed,), IMG), suf])[None]
    return ids, out["pixel_values"], out["image_sizes"]


def _hf_generate(model, ids, pv, sizes, steps=5):
    out = model.generate(
        input_ids=ids,
        pixel_values=pv,
        image_sizes=sizes,
        max_new_tokens=steps,
        do_sample=False,
        output_logits=True,
        return_dict_in_generate=True,
        eos_token_id=-1,
    )
    return out.sequences[0, ids.shape[1] :].tolist(), torch.stack(out.logits, 1)[0].float()


# ------------------------------------------------------------------ layout


def test_layout_is_hf_packing(model):
    """The origin map puts (tile, patch) exactly where transformers' pack_image_features puts that feature."""
    lay = anyres_layout(model.config, SIZE)
    assert (lay.n_tiles, lay.tile_grid, lay.rows, lay.cols) == (5, (2, 2), (2, 6), (0, 8))
    t, n = lay.n_tiles, SIDE * SIDE
    code = (torch.arange(t)[:, None] * 100 + torch.arange(n)[None]).float()[..., None]  # feature = tile*100+patch
    packed, _ = model.model.pack_image_features(
        [code], torch.tensor([SIZE]), "default", image_newline=torch.tensor([-1.0])
    )
    want = torch.where(lay.tile >= 0, lay.tile * 100 + lay.patch, -1).float()
    assert torch.equal(packed[0][:, 0], want)
    geo = G.llava_next_layout(model.config, SIZE)
    assert (lay.n_packed, int(lay.newlines.numel()), lay.n_visual) == (geo.total, geo.newlines, 16 + 4 * 8)


def test_split_budget_rules():
    assert split_budget(10, [16, 8, 8, 8, 8], "proportional") == [3, 2, 2, 2, 1]
    assert split_budget(48, [16, 8, 8, 8, 8], "proportional") == [16, 8, 8, 8, 8]
    assert split_budget(12, [16] * 5, "equal") == [3, 3, 2, 2, 2]
    with pytest.raises(BudgetError, match="tile_budget"):
        split_budget(4, [4], "biggest")


# ------------------------------------------------------------------ T = N and the splice


@pytest.mark.parametrize("method", [None, "FasterVLM", "VisPruner", "DivPrune"])
def test_budget_n_equals_unpruned_generate(model, adapter, inputs, method):
    ids, pv, sizes = inputs
    seq, logits = _hf_generate(model, ids, pv, sizes)
    n = anyres_layout(model.config, SIZE).n_visual
    one = torch.cat([ids[0, :6], torch.tensor([IMG]), ids[0, -6:]])  # one placeholder, expanded by the adapter
    for row in (ids, one[None]):
        out = adapter.run(row, NextImages(pv, sizes), method, n, max_new_tokens=5, output_logits=True, eos_token_id=-1)
        assert out.sequences[0] == seq
        assert torch.allclose(out.logits[0], logits, atol=1e-4)
        r = out.records[0]
        assert r["n_kept"] == n and r["prompt_len"] == ids.shape[1] and r["kept_indices"] == list(range(52))


def test_pruning_changes_the_answer(model, adapter, inputs):
    ids, pv, sizes = inputs
    _, logits = _hf_generate(model, ids, pv, sizes)
    out = adapter.run(ids, NextImages(pv, sizes), "FasterVLM", 8, max_new_tokens=5, output_logits=True, eos_token_id=-1)
    assert not torch.allclose(out.logits[0], logits, atol=1e-3)


# ------------------------------------------------------------------ per-tile budgets, [CLS] scores, newlines


def _tile_cls(model, pv):
    """Per-tile head-mean [CLS] attention of the feature layer, from the tower's own eager attention maps."""
    out = model.model.vision_tower(pv[0, :5], output_attentions=True, return_dict=True)
    return out.attentions[-2][:, :, 0, 1:].mean(1)  # (tiles, N)


@pytest.mark.parametrize("rule", ["proportional", "equal"])
def test_fastervlm_per_tile_budgets_cls_and_newlines(model, adapter, inputs, rule):
    ids, pv, sizes = inputs
    lay = anyres_layout(model.config, SIZE)
    T = 20
    with adapter.tiles_split(rule):
        out = adapter.run(ids, NextImages(pv, sizes), "FasterVLM", T, max_new_tokens=2)
    assert adapter.tile_budget == "proportional"  # restored after the block
    r = out.records[0]
    kept = r["kept_indices"]
    assert set(lay.newlines.tolist()) <= set(kept)  # every newline kept
    assert kept == sorted(kept) and r["n_newlines"] == 4
    assert r["prompt_len"] == ids.shape[1] - lay.n_packed + r["n_kept"] + 4
    cls = _tile_cls(model, pv)
    where = lay.lookup()
    if rule == "proportional":
        assert r["tile_budgets"] == [7, 4, 3, 3, 3] and r["tile_kept"] == r["tile_budgets"] and r["n_kept"] == T
    else:
        assert r["tile_budgets"] == [4, 4, 4, 4, 4] and r["tile_kept"][0] == 4 and r["n_kept"] == sum(r["tile_kept"])
    # Known answer: each tile keeps the top-b patches of its own [CLS] attention (among un-padded patches for
    # "proportional"; over the whole tile for "equal", the ones in the padding then dropped).
    want = set(lay.newlines.tolist())
    for t, b in enumerate(r["tile_budgets"]):
        cand = lay.valid(t)[0] if rule == "proportional" else torch.arange(SIDE * SIDE)
        top = cand[torch.topk(cls[t, cand], b).indices]
        want |= {where[(t, int(p))] for p in top if (t, int(p)) in where}
    assert set(kept) == want


@pytest.mark.parametrize("method", ["FastV", "PDrop", "SparseVLM", "DART", "VisPruner"])
def test_kv_cache_equals_no_cache_reference(adapter, inputs, method):
    """In-LLM methods edit the decoder over the whole packed run (newlines included): cached generation equals the
    no-cache reference, and pruning changes the logits."""
    ids, pv, sizes = inputs
    out = adapter.run(ids, NextImages(pv, sizes), method, 20, max_new_tokens=4, output_logits=True, eos_token_id=-1)
    ref = adapter.reference_no_cache(ids, NextImages(pv, sizes), method, 20, steps=4)
    assert torch.allclose(out.logits[0], ref, atol=1e-4)
    full = adapter.reference_no_cache(ids, NextImages(pv, sizes), None, None, steps=4)
    assert not torch.allclose(ref, full, atol=1e-3)
    counts = out.records[0]["visual_tokens_per_layer"]
    assert counts == sorted(counts, reverse=True) and (counts[0] == 52 or method == "VisPruner")


def test_tiny_budgets_leave_tiles_empty(adapter, inputs):
    ids, pv, sizes = inputs
    r = adapter.run(ids, NextImages(pv, sizes), "FasterVLM", 2, max_new_tokens=1).records[0]
    assert r["tile_budgets"] == [1, 1, 0, 0, 0] and r["n_kept"] == 2 and len(r["kept_indices"]) == 2 + 4
    with adapter.tiles_split("equal"):
        r = adapter.run(ids, NextImages(pv, sizes), "FasterVLM", 3, max_new_tokens=1).records[0]
    assert r["tile_budgets"] == [1, 1, 1, 0, 0] and r["tile_kept"][0] == 1


def test_batch_of_two_sizes_equals_one_by_one(model, adapter):
    """Two images of different shapes (5 and 3 tiles, the processor pads pixel_values to 5): a batch of two gives
    each image's batch-1 answer, and batch 1 gives HF's."""
    from PIL import Image
    from transformers import LlavaNextImageProcessorPil

    ip = LlavaNextImageProcessorPil(
        size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56}, image_grid_pinpoints=PINPOINTS
    )
    rng = np.random.default_rng(5)
    imgs = [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for h, w in [(60, 100), (120, 50)]]
    out = ip(images=imgs, return_tensors="pt")
    pv, sizes = out["pixel_values"], out["image_sizes"]
    lays = [anyres_layout(model.config, s.tolist()) for s in sizes]
    assert [lay.n_tiles for lay in lays] == [5, 3] and pv.shape[1] == 5
    rows = [torch.tensor([1, 7, 8, IMG, 9, 10, 11, 12]), torch.tensor([1, 13, IMG, 14, 15])]
    both = adapter.run(rows, NextImages(pv, sizes), "VisPruner", 10, batch_size=2, max_new_tokens=4, eos_token_id=-1)
    for b in range(2):
        one = adapter.run(
            [rows[b]], NextImages(pv[b : b + 1], sizes[b : b + 1]), "VisPruner", 10, max_new_tokens=4, eos_token_id=-1
        )
        assert both.sequences[b] == one.sequences[0]
        assert both.records[b]["kept_indices"] == one.records[0]["kept_indices"]
        n = lays[b].n_visual
        full = adapter.run(
            [rows[b]], NextImages(pv[b : b + 1], sizes[b : b + 1]), None, n, max_new_tokens=4, eos_token_id=-1
        )
        k = int((rows[b] == IMG).nonzero())
        ids = torch.cat([rows[b][:k], torch.full((lays[b].n_packed,), IMG), rows[b][k + 1 :]])[None]
        assert full.sequences[0] == _hf_generate(model, ids, pv[b : b + 1, : lays[b].n_tiles], sizes[b : b + 1], 4)[0]


def test_tokens_without_a_patch_follow_their_segment(adapter, inputs):
    """VisionZip's [CLS] (index -1) of the base tile follows the base rows; the crop tiles' follow the crop map."""
    ids, pv, sizes = inputs
    r = adapter.run(ids, NextImages(pv, sizes), "VisionZip", 20, max_new_tokens=1).records[0]
    k = r["kept_indices"]
    n_base = r["tile_budgets"][0] - 1  # dominant + contextual rows anchored to base patches
    assert k[n_base] == -1 and all(0 <= p < 16 for p in k[:n_base]) and k[:n_base] == sorted(k[:n_base])
    crop = k[n_base + 1 : len(k) - 4]
    assert all(p >= 16 for p in crop) and crop == sorted(crop) and k[-4:] == [-1] * 4  # one [CLS] per crop tile
    assert r["n_kept"] == 20 and len(k) == 20 + 4


def test_hooks_removed_also_on_error(model, adapter, inputs):
    from prunelab.methods.in_llm import FastV

    class Broken(FastV):  # fails inside the decoder hooks, in the middle of generate
        def edit(self, state, view):
            raise RuntimeError("broken edit")

    ids, pv, sizes = inputs
    before = count_hooks(model)
    adapter.run(ids, NextImages(pv, sizes), "VisPruner", 12, max_new_tokens=2)
    adapter.run(ids, NextImages(pv, sizes), "FastV", 30, max_new_tokens=2)
    with pytest.raises(RuntimeError, match="broken edit"):
        adapter.run(ids, NextImages(pv, sizes), Broken(), 12, max_new_tokens=2)
    assert count_hooks(model) == before


# ------------------------------------------------------------------ dispatch and bad input


def test_dispatch_and_refusals(model, inputs):
    assert isinstance(make_adapter(model), LlavaNextAdapter)
    with pytest.raises(CapabilityError, match="LlavaNextAdapter"):
        LlavaAdapter(model)
    from prunelab.models.tiny import tiny_llava

    tiny = tiny_llava("clip", seed=0)
    assert type(make_adapter(tiny)) is LlavaAdapter
    with pytest.raises(CapabilityError, match="LlavaNextForConditionalGeneration"):
        LlavaNextAdapter(tiny)
    tiny.config.model_type = "llava_onevision"  # a family without an adapter fails up front
    with pytest.raises(CapabilityError, match="llava_onevision.*not supported yet"):
        make_adapter(tiny)
    ids, pv, sizes = inputs
    ad = LlavaNextAdapter(model)
    with pytest.raises(BudgetError, match="1 <= T <= 48"):
        ad.run(ids, NextImages(pv, sizes), "FasterVLM", 49)
    with pytest.raises(PrunelabError, match="image_sizes"):
        ad.run(ids, NextImages(pv[:, 0], sizes), "FasterVLM", 8)
    with pytest.raises(PrunelabError, match="needs image_sizes with pixel_values"):
        ad.run(ids, pv, "FasterVLM", 8)
    with pytest.raises(CapabilityError, match="run_selections is not available for LLaVA-NeXT"):
        ad.run_selections(ids, NextImages(pv, sizes), [("FasterVLM", 8)])
    with pytest.raises(CapabilityError, match="takes no option"):
        LlavaAdapter(tiny_llava("clip", seed=0), tile_budget="equal")
    with pytest.raises(BudgetError, match="tile_budget"):
        LlavaNextAdapter(model, tile_budget="biggest")


# ------------------------------------------------------------------ every registered method x LLaVA-NeXT

#: Methods refused on LLaVA-NeXT, and the words their one-line reason must contain (none at present).
REFUSED: dict[str, str] = {}


@pytest.mark.parametrize("method", [m for m in available_methods() if not m.startswith("_")])
def test_every_method_runs_or_refuses(model, adapter, inputs, method):
    ids, pv, sizes = inputs
    stats = calibrate_erank(adapter.contexts(pv[0]))
    T = 16
    try:
        out = adapter.run(ids, NextImages(pv, sizes), method, T, max_new_tokens=2, erank_stats=stats)
    except CapabilityError as err:
        msg = str(err)
        assert method in REFUSED, f"{method} refused: {msg}"
        assert "\n" not in msg and REFUSED[method] in msg and method in msg
        return
    assert method not in REFUSED, f"{method} ran but is listed as refused"
    r = out.records[0]
    assert len(out.sequences[0]) == 2
    if r["stage"] == "in_llm":
        assert r["visual_tokens_per_layer"][0] == 52 and r["n_kept"] <= 52
    else:
        assert set(anyres_layout(model.config, SIZE).newlines.tolist()) <= set(r["kept_indices"])
        assert r["n_kept"] == sum(r["tile_kept"]) and r["prompt_len"] == ids.shape[1] - 52 + r["n_kept"] + 4
        if not get_pruner(method).adaptive:
            assert r["n_kept"] == T


@pytest.mark.parametrize("hw,total", [((480, 640), 2340), ((336, 336), 1176), ((672, 336), 1776)])
def test_7b_config_layout_without_weights(hw, total):
    """llava-v1.6 defaults (CLIP-L/14 at 336 px): the origin map's length and newlines match geometry's count."""
    from transformers import LlavaNextConfig

    cfg = LlavaNextConfig()
    lay, geo = anyres_layout(cfg, hw), G.llava_next_layout(cfg, hw)
    assert lay.n_packed == geo.total == total and int(lay.newlines.numel()) == geo.newlines
    assert sum(int(lay.valid(t)[0].numel()) for t in range(lay.n_tiles)) == lay.n_visual

"""Qwen2.5-VL through prunelab.models.qwen2_5_vl on a tiny random config saved as an HF folder: the merged tokens
and their scores, T = N equal to the model's own generate, M-RoPE positions after pruning, hooks removed, and
every registered method either running or refusing in one line."""

from __future__ import annotations

import pytest
import torch
import transformers

from prunelab.errors import BudgetError, CapabilityError
from prunelab.methods.base import available_methods, get_pruner
from prunelab.models.families import make_adapter
from prunelab.models.hooks import count_hooks
from prunelab.models.parts import UNSUPPORTED_FAMILIES, resolve_parts
from prunelab.models.qwen2_5_vl import QwenImages, QwenParts, QwenVLAdapter, block_attention, refusal

IMG, VSTART, VEND = 190, 192, 193
GRID = torch.tensor([[1, 8, 12]])  # 8 x 12 patches -> 4 x 6 = 24 merged tokens in two windows (4x4, 4x2)
N = 24


def _config():
    return transformers.Qwen2_5_VLConfig(
        vision_config=dict(
            depth=3,
            hidden_size=32,
            intermediate_size=64,
            num_heads=2,
            out_hidden_size=32,
            fullatt_block_indexes=[1],
            window_size=112,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
        ),
        text_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=200,
            max_position_embeddings=512,
            rope_parameters={"rope_type": "default", "mrope_section": [2, 1, 1], "rope_theta": 10000.0},
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=0,
        ),
        image_token_id=IMG,
        video_token_id=191,
        vision_start_token_id=VSTART,
        vision_end_token_id=VEND,
    )


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    torch.manual_seed(0)
    model = transformers.Qwen2_5_VLForConditionalGeneration(_config())
    model.generation_config.eos_token_id = 2
    model.generation_config.pad_token_id = 0
    path = tmp_path_factory.mktemp("tiny_qwen25vl")
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def model(folder):
    m = transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(folder, dtype=torch.float32).eval()
    assert m.config.model_type == "qwen2_5_vl"
    return m


@pytest.fixture(scope="module")
def adapter(model):
    return make_adapter(model)


def _inputs(seed=0, question=(7, 8, 9, 10)):
    g = torch.Generator().manual_seed(seed)
    pv = torch.randn(int(GRID.prod()), 3 * 2 * 14 * 14, generator=g)
    ids = torch.tensor([5, 6, VSTART] + [IMG] * N + [VEND, *question])
    return ids, pv


def test_dispatch_and_unsupported_families(model, adapter):
    assert isinstance(adapter, QwenVLAdapter) and isinstance(resolve_parts(model), QwenParts)
    assert "qwen2_5_vl" not in UNSUPPORTED_FAMILIES
    from prunelab.models.adapter import LlavaAdapter

    with pytest.raises(CapabilityError, match="not a LLaVA model.*make_adapter"):
        LlavaAdapter(model)
    with pytest.raises(CapabilityError, match="score_layer=7 is outside"):
        QwenVLAdapter(model, score_layer=7)
    with pytest.raises(CapabilityError, match="merge='median' is unknown"):
        QwenVLAdapter(model, merge="median")


def test_features_project_to_pooler_output_in_raster_order(model, adapter):
    ids, pv = _inputs()
    enc = adapter.encode_image(pv, GRID[0])
    ref = model.model.get_image_features(pv, GRID).pooler_output[0]
    assert enc["features"].shape == (N, 4 * 32) and enc["grid"] == (4, 6)
    torch.testing.assert_close(enc["projected"], ref.float())
    torch.testing.assert_close(adapter.project(enc["features"]), ref.float(), rtol=1e-5, atol=1e-5)
    # the window permutation is not the identity here, so raster order is really being restored
    assert not torch.equal(adapter._window_index(GRID), torch.arange(N))


def test_recomputed_attention_reproduces_the_block_output(model, adapter):
    """The probabilities the score is read from, times the block's values and output projection, give the block's
    attention output exactly (the full-attention block 1 and the windowed block 2)."""
    _, pv = _inputs()
    p = adapter.parts
    for li in (1, 2):
        attn = p.blocks[li].attn
        got = {}

        def pre(_m, args, kw, got=got):
            got["x"], got["cu"], got["pe"] = args[0], kw["cu_seqlens"], kw["position_embeddings"]

        def post(_m, _a, out, got=got):
            got["out"] = out

        h1 = attn.register_forward_pre_hook(pre, with_kwargs=True)
        h2 = attn.register_forward_hook(post)
        try:
            with torch.no_grad():
                p.visual(pv, grid_thw=GRID)
        finally:
            h1.remove()
            h2.remove()
        probs = block_attention(attn, got["x"], got["cu"], got["pe"])
        s = got["x"].shape[0]
        v = attn.qkv(got["x"]).reshape(s, 3, attn.num_heads, -1)[:, 2].transpose(0, 1)  # (H, S, d)
        mine = attn.proj((probs @ v).transpose(0, 1).reshape(s, -1))
        torch.testing.assert_close(mine, got["out"], rtol=1e-4, atol=1e-5)
        assert (probs.sum(-1) - 1).abs().max() < 1e-5
        if li == 2:  # windowed: no attention across windows
            assert int((probs > 0).sum()) < probs.numel()


def test_scores_are_received_attention_of_the_last_full_block(adapter):
    _, pv = _inputs()
    enc = adapter.encode_image(pv, GRID[0])
    assert adapter.score_layer == 1 and enc["scores_heads"].shape == (2, N)
    # mean over 4 patches of a distribution over all 96 patches: the merged scores sum to 1/4
    torch.testing.assert_close(enc["scores_heads"].sum(-1), torch.full((2,), 0.25), rtol=1e-5, atol=1e-6)
    by_sum = QwenVLAdapter(adapter.model, merge="sum").encode_image(pv, GRID[0])["scores_heads"]
    torch.testing.assert_close(by_sum, 4 * enc["scores_heads"], rtol=1e-5, atol=1e-6)


def test_T_equal_N_matches_unpruned_generate_token_for_token(model, adapter):
    for seed in (0, 1):
        ids, pv = _inputs(seed)
        ref = model.generate(
            input_ids=ids[None],
            attention_mask=torch.ones(1, ids.numel(), dtype=torch.long),
            pixel_values=pv,
            image_grid_thw=GRID,
            mm_token_type_ids=(ids == IMG).int()[None],
            max_new_tokens=8,
            do_sample=False,
            eos_token_id=None,
        )[0, ids.numel() :].tolist()
        full = adapter.run([ids], QwenImages(pv, GRID), None, max_new_tokens=8, eos_token_id=-1)
        dz = adapter.run([ids], QwenImages(pv, GRID), "DivPrune", N, max_new_tokens=8, eos_token_id=-1)
        assert full.sequences[0] == ref == dz.sequences[0]
        assert dz.records[0]["n_kept"] == N


def test_one_dimensional_positions_would_be_wrong(model, adapter):
    """Guard for the test above: the same embeddings with the 1-D positions inputs_embeds alone gets give other
    logits, so matching generate really depends on the gathered M-RoPE positions."""
    ids, pv = _inputs()
    emb, pos, _ = adapter._prepare(ids, pv, GRID[0], None, None, False, None, None)
    with torch.no_grad():
        good = model(inputs_embeds=emb[None], position_ids=pos[:, None]).logits[0, -1]
        flat = model(inputs_embeds=emb[None], position_ids=torch.arange(emb.shape[0])[None]).logits[0, -1]
    assert (good - flat).abs().max() > 1e-4


def test_pruned_positions_are_the_gathered_unpruned_columns(model, adapter):
    ids, pv = _inputs()
    seen = []

    def spy(_m, _a, kw):
        seen.append(kw["position_ids"].clone())

    h = model.model.language_model.register_forward_pre_hook(spy, with_kwargs=True)
    try:
        out = adapter.run([ids], QwenImages(pv, GRID), "FasterVLM", 6, max_new_tokens=3, eos_token_id=-1)
    finally:
        h.remove()
    rec = out.records[0]
    kept = torch.tensor(rec["kept_indices"])
    full = adapter.full_positions(ids, GRID[0])
    start = 3
    cols = torch.cat([torch.arange(start), start + kept, torch.arange(start + N, ids.numel())])
    assert rec["n_kept"] == 6 and rec["prompt_len"] == ids.numel() - N + 6
    assert torch.equal(torch.tensor(rec["position_ids"]), full[:, cols])
    assert torch.equal(seen[0][1:, 0], full[:, cols])  # what the decoder got at prefill (rows t, h, w)
    # kept tokens sit at their (row, col) of the 4 x 6 grid, offset by the text before the image
    assert torch.equal(full[1, start + kept] - start, kept // 6) and torch.equal(
        full[2, start + kept] - start, kept % 6
    )
    # decoding continues at the unpruned model's positions: max + 1, + 2 (its rope_deltas)
    top = int(full.max())
    assert [int(s[1, 0, -1]) for s in seen[1:]] == [top + 1, top + 2]
    assert all(torch.equal(s[1, 0], s[2, 0]) and torch.equal(s[1, 0], s[3, 0]) for s in seen[1:])


def test_kept_counts_and_hooks_removed(model, adapter):
    ids, pv = _inputs()
    before = count_hooks(model)
    for method, t in (("FasterVLM", 5), ("DivPrune", 9), ("VisPruner", 12)):
        out = adapter.run([ids], QwenImages(pv, GRID), method, t, max_new_tokens=2, eos_token_id=-1)
        rec = out.records[0]
        assert rec["n_kept"] == t == len(set(rec["kept_indices"])) and rec["n_image_tokens"] == N
        assert count_hooks(model) == before
    with pytest.raises(BudgetError):
        adapter.run([ids], QwenImages(pv, GRID), "FasterVLM", N + 1, max_new_tokens=2)
    with pytest.raises(CapabilityError):
        adapter.run([ids], QwenImages(pv, GRID), "VisionZip", 8, max_new_tokens=2)
    assert count_hooks(model) == before


def test_faster_vlm_keeps_the_top_scores(adapter):
    ids, pv = _inputs()
    score = adapter.encode_image(pv, GRID[0])["scores_heads"].mean(0)
    kept = adapter.run([ids], QwenImages(pv, GRID), "FasterVLM", 5, max_new_tokens=1).records[0]["kept_indices"]
    assert sorted(kept) == sorted(torch.topk(score, 5).indices.tolist())


#: Methods that refuse on Qwen2.5-VL, and the words their one-line reason must hold.
EXPECTED_REFUSALS = {
    "VisionZip": "[CLS]",
    "PruMerge": "[CLS]",
    "PruMerge+": "[CLS]",
    "PruMerge+fixed": "[CLS]",
    "FastV": "M-RoPE",
    "PDrop": "M-RoPE",
    "SparseVLM": "M-RoPE",
    "DART": "M-RoPE",
}
ERANK = {"mean": 5.0, "min": 2.0, "max": 8.0}


@pytest.mark.parametrize("name", available_methods())
def test_every_registered_method_runs_or_refuses(adapter, name):
    ids, pv = _inputs()
    pruner = get_pruner(name)
    why = refusal(pruner)
    if name in EXPECTED_REFUSALS:
        assert why is not None and EXPECTED_REFUSALS[name] in why and "\n" not in why
        with pytest.raises(CapabilityError, match="Qwen2.5-VL"):
            adapter.run([ids], QwenImages(pv, GRID), name, 8, max_new_tokens=1)
        return
    assert why is None
    out = adapter.run([ids], QwenImages(pv, GRID), name, 8, max_new_tokens=2, erank_stats=ERANK, eos_token_id=-1)
    rec = out.records[0]
    assert 1 <= rec["n_kept"] <= N and len(out.sequences[0]) == 2
    if not pruner.adaptive:
        assert rec["n_kept"] == 8

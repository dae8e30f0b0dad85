"""LlavaAdapter on tiny seeded LLaVA models (CLIP tower and DINOv2 tower): index bookkeeping, equality with
the unpruned HF model, kept counts and order policies, batching, hook hygiene, prompts, bad input."""

from __future__ import annotations

import re
import types

import numpy as np
import pytest
import torch

from prunelab.device import resolve_device
from prunelab.errors import BudgetError, CapabilityError, DeviceError, ImageError, PrunelabError, UnknownNameError
from prunelab.methods.base import Pruner, PruneResult, available_methods, get_pruner, register
from prunelab.models.adapter import LlavaAdapter
from prunelab.models.hooks import HookScope, count_hooks, hook_ids, state_fingerprint
from prunelab.models.parts import expand_image_placeholder, find_image_span, llm_flops, parse_requires
from prunelab.models.prompts import VICUNA_SYSTEM, DecodeSettings, build_prompt, tokenize_with_image
from prunelab.models.tiny import ToyTokenizer, tiny_inputs, tiny_llava

N = 64  # 8x8 patches in the tiny models


@pytest.fixture(scope="module", params=["clip", "dinov2"])
def tower(request):
    return request.param


@pytest.fixture(scope="module")
def models():
    return {t: tiny_llava(t, seed=0) for t in ("clip", "dinov2")}


@pytest.fixture(scope="module")
def model(models, tower):
    return models[tower]


@pytest.fixture(scope="module")
def adapter(model):
    return LlavaAdapter(model)


@register("_TestEveryFourth")
class EveryFourth(Pruner):
    """Test-only pre-LLM pruner: the first T patches of the raster order 0, 4, 8, ... (wrapping to 1, 5, ...)."""

    family = "test"

    def __init__(self):
        super().__init__()

    def select(self, ctx, budget):
        order = torch.cat([torch.arange(s, ctx.n_tokens, 4) for s in range(4)])
        return PruneResult(indices=torch.sort(order[:budget]).values)


class Boom(Pruner):
    family = "test"

    def select(self, ctx, budget):
        raise RuntimeError("boom")


def native_logits(model, ids, pv, steps):
    out = model.generate(
        input_ids=ids,
        pixel_values=pv,
        max_new_tokens=steps,
        do_sample=False,
        output_logits=True,
        return_dict_in_generate=True,
    )
    return out.sequences[0, ids.shape[1] :].tolist(), torch.stack(out.logits, 1)[0].float()


# ------------------------------------------------------------------ devices and prompts


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    bad = "cuda:99" if torch.cuda.is_available() else "cuda"
    with pytest.raises(DeviceError) as e:
        resolve_device(bad)
    assert "\n" not in str(e.value) and "device" in str(e.value)
    with pytest.raises(UnknownNameError):
        resolve_device("tpu")


def test_prompt_llava_v1_exact():
    p = build_prompt("What is this?")
    assert p == VICUNA_SYSTEM + " USER: <image>\nWhat is this? ASSISTANT:"
    assert build_prompt(" Hi ", template="hf_chat") == "USER: <image>\nHi ASSISTANT:"
    assert DecodeSettings().generate_kwargs() == {"max_new_tokens": 512, "do_sample": False, "num_beams": 1}
    with pytest.raises(UnknownNameError):
        build_prompt("x", template="chatml")


def test_tokenize_with_image(models):
    tok = ToyTokenizer(models["clip"], words=["USER:", "ASSISTANT:", "hello", "dog"])
    ids = tokenize_with_image(tok, "USER: <image>\nhello dog ASSISTANT:", image_token_id=250, n_image_tokens=3)
    v = tok.vocab
    assert ids == [1, v["USER:"], 250, 250, 250, v["hello"], v["dog"], v["ASSISTANT:"]]
    with pytest.raises(UnknownNameError):
        tokenize_with_image(tok, "no image here", 250)


# ------------------------------------------------------------------ vision bookkeeping


def test_recomputed_cls_attention_matches_eager(model, adapter):
    _, pv = tiny_inputs(model, batch=2, seed=3)
    out = adapter.parts.vision_tower(pv, output_hidden_states=True, output_attentions=True)
    hooks_before = hook_ids(model)
    enc = adapter.encode_images(pv, qk_layers=(-1, -2))
    eager = out.attentions[-2][:, :, 0, 1:]
    assert torch.allclose(enc["cls_attention_heads"], eager.float(), atol=1e-6)
    assert torch.equal(enc["features"], out.hidden_states[-2][:, 1:])
    assert torch.equal(enc["cls_feature"], out.hidden_states[-2][:, 0])
    # keys[-1] are the last layer's raw k projections, CLS first, split per head.
    k_last = adapter.parts.vision_qk(adapter.parts.n_vision_layers - 1)[1]
    ln_in = {}
    with HookScope() as s:
        s.forward_pre(k_last, lambda m, a: ln_in.__setitem__("x", a[0]))
        adapter.parts.vision_tower(pv)
    ref = k_last(ln_in["x"]).reshape(2, N + 1, adapter.parts.vision_heads, -1).transpose(1, 2)
    assert torch.allclose(enc["keys"][-1], ref, atol=1e-6)
    assert hook_ids(model) == hooks_before


def test_parse_requires():
    assert parse_requires(("attention", "keys[-1]", "queries[-2]", "projected")) == ({-1, -2}, False)
    assert parse_requires(("text",)) == (set(), True)
    with pytest.raises(CapabilityError):
        parse_requires(("llm_attention",))


def test_image_span_and_placeholder():
    ids = torch.tensor([1, 5, 9, 9, 9, 6])
    assert find_image_span(ids, 9) == (2, 3)
    assert expand_image_placeholder(torch.tensor([1, 9, 6]), 9, 4).tolist() == [1, 9, 9, 9, 9, 6]
    with pytest.raises(ImageError):
        expand_image_placeholder(torch.tensor([1, 9, 9, 6]), 9, 4)
    with pytest.raises(ImageError):
        find_image_span(torch.tensor([1, 9, 5, 9]), 9)
    with pytest.raises(ImageError):
        find_image_span(torch.tensor([1, 5]), 9)


# ------------------------------------------------------------------ equality with the unpruned model


def test_unpruned_path_equals_native_generate(model, adapter):
    ids, pv = tiny_inputs(model, seed=1)
    seq, logits = native_logits(model, ids, pv, 6)
    out = adapter.run(ids, pv, None, max_new_tokens=6, output_logits=True, eos_token_id=-1)
    assert out.sequences[0] == seq
    assert torch.allclose(out.logits[0], logits, atol=1e-4)
    r = out.records[0]
    assert r["n_kept"] == N and r["prompt_len"] == ids.shape[1] and r["equivalent_tokens"] == N


def _selection_methods():
    # Pure-selection pre-LLM methods (no merged tokens); calibration-dependent ones get stats in the test.
    return [m for m in available_methods("pre_llm") if not m.startswith("_")]


@pytest.mark.parametrize("method", _selection_methods())
def test_budget_equal_n_is_the_unpruned_model(models, method):
    """T = N: every pure-selection method keeps every patch in raster order, so the greedy text and the logits
    equal the unpruned HF model's. Merging methods (VisionZip's CLS + contextual tokens, PruMerge's and BAT's
    merged tokens) feed other rows by design; for them the prompt length must still match their output."""
    model = models["clip"]
    ad = LlavaAdapter(model)
    ids, pv = tiny_inputs(model, seed=2)
    stats = _erank_stats(ad, pv)
    out = ad.run(ids, pv, method, N, max_new_tokens=5, output_logits=True, erank_stats=stats, eos_token_id=-1)
    rec = out.records[0]
    ctx = ad.contexts(pv, erank_stats=stats)[0]
    start, _ = find_image_span(ids[0], model.config.image_token_id)
    ctx.text_embeds = ad.parts.embed(ids[0, start + N :]).float()
    res = get_pruner(method)(ctx, N)
    if res.tokens is None:
        assert res.indices.tolist() == list(range(N))
        seq, logits = native_logits(model, ids, pv, 5)
        assert out.sequences[0] == seq
        assert torch.allclose(out.logits[0], logits, atol=1e-4)
        assert rec["kept_indices"] == list(range(N))
    else:
        # A merging method (VisionZip, PruMerge family, BAT): its rows differ from the patches by design.
        assert res.tokens is not None
        assert rec["prompt_len"] == ids.shape[1] - N + res.n_kept


def _erank_stats(ad, pv):
    from prunelab.methods.adaptive import calibrate_erank

    _, more = tiny_inputs(ad.model, batch=3, seed=99)
    return calibrate_erank(ad.contexts(torch.cat([pv, more])))


@pytest.mark.parametrize(
    "method,budget",
    [("FasterVLM", 16), ("DivPrune", 24), ("_TestEveryFourth", 20), ("CDPruner", 16), ("VisionZip", 16)],
)
def test_kept_count_order_and_prompt_length(model, adapter, method, budget):
    ids, pv = tiny_inputs(model, seed=4)
    out = adapter.run(ids, pv, method, budget, max_new_tokens=3)
    r = out.records[0]
    assert r["n_kept"] == budget
    assert r["prompt_len"] == ids.shape[1] - N + budget
    assert r["positions"] == "contiguous"
    assert r["visual_tokens_per_layer"] == [budget] * len(adapter.parts.text_layers)
    kept = [i for i in r["kept_indices"] if i >= 0]
    if r["order"] == "raster":
        assert kept == sorted(set(kept))
    assert all(0 <= i < N for i in kept)
    if method == "_TestEveryFourth":
        assert kept == sorted(list(range(0, N, 4)) + [1, 5, 9, 13])
    for key in (
        "vision_s",
        "select_s",
        "prefill_s",
        "decode_s",
        "flops_prefill",
        "flops_decode",
        "flops_vision",
        "erank_kept_projected",
    ):
        assert np.isfinite(r[key]) and r[key] >= 0, key


def test_pruned_tokens_are_what_the_llm_reads(model, adapter):
    """The LLM input equals [text before, projector(features[kept]), text after] — checked at the embedding
    layer of the decoder with a scoped hook."""
    ids, pv = tiny_inputs(model, seed=5)
    seen = {}

    def grab(_m, a, kw):
        seen.setdefault("h", (a[0] if a else kw["hidden_states"]).clone())

    with HookScope() as s:
        s.forward_pre(adapter.parts.decoder.layers[0], grab, with_kwargs=True)
        out = adapter.run(ids, pv, "FasterVLM", 8, max_new_tokens=1)
    kept = torch.tensor(out.records[0]["kept_indices"])
    enc = adapter.encode_images(pv)
    proj = adapter.parts.projector(enc["features"][0, kept])
    emb = adapter.parts.embed(ids[0])
    start, _ = find_image_span(ids[0], model.config.image_token_id)
    expect = torch.cat([emb[:start], proj, emb[start + N :]])
    assert torch.allclose(seen["h"][0], expect, atol=1e-5)


def test_single_placeholder_equals_expanded(model, adapter):
    ids, pv = tiny_inputs(model, seed=6)
    ids1, _ = tiny_inputs(model, seed=6, one_placeholder=True)
    a = adapter.run(ids, pv, "FasterVLM", 12, max_new_tokens=4)
    b = adapter.run(ids1, pv, "FasterVLM", 12, max_new_tokens=4)
    assert a.sequences == b.sequences and a.records[0]["kept_indices"] == b.records[0]["kept_indices"]


# ------------------------------------------------------------------ batching


@pytest.mark.parametrize("method,budget", [(None, None), ("FasterVLM", 12), ("PruMerge", 16)])
def test_batched_left_padding_gives_batch1_text(model, adapter, method, budget):
    rows, pvs = [], []
    for k, (pre, suf) in enumerate([(3, 4), (9, 2), (5, 8)]):
        ids, pv = tiny_inputs(model, prefix=pre, suffix=suf, seed=10 + k)
        rows.append(ids[0])
        pvs.append(pv)
    pv = torch.cat(pvs)
    single = adapter.run(rows, pv, method, budget, max_new_tokens=6, batch_size=1, output_logits=True, eos_token_id=-1)
    batched = adapter.run(rows, pv, method, budget, max_new_tokens=6, batch_size=3, output_logits=True, eos_token_id=-1)
    assert single.sequences == batched.sequences
    for a, b in zip(single.logits, batched.logits):
        assert torch.allclose(a, b, atol=1e-3)
    assert [r["batch_size"] for r in batched.records] == [3, 3, 3]
    lens = {r["prompt_len"] for r in batched.records}
    assert len(lens) > 1  # the batch really needed padding


@pytest.mark.parametrize("method,budget", [(None, None), ("FasterVLM", 12), ("DivPrune", 10), ("PruMerge", 16)])
def test_shared_image_prompts_give_per_prompt_text(model, adapter, method, budget):
    """Several prompts about one image: one selection, left-padded batches == each prompt alone through run()."""
    _, pv = tiny_inputs(model, seed=21)
    rows = [
        tiny_inputs(model, prefix=pre, suffix=suf, seed=30 + k)[0][0]
        for k, (pre, suf) in enumerate([(3, 4), (9, 2), (5, 8), (2, 11)])
    ]
    alone = [adapter.run([r], pv, method, budget, max_new_tokens=5, eos_token_id=-1) for r in rows]
    shared = adapter.run_shared_image(rows, pv, method, budget, max_new_tokens=5, batch_size=3, eos_token_id=-1)
    assert shared.sequences == [o.sequences[0] for o in alone]
    assert [r["kept_indices"] for r in shared.records] == [o.records[0]["kept_indices"] for o in alone]
    assert [r["prompt_len"] for r in shared.records] == [o.records[0]["prompt_len"] for o in alone]
    assert [r["batch_size"] for r in shared.records] == [3, 3, 3, 1]
    assert all(r["shared_selection"] for r in shared.records)
    assert [r["sample"] for r in shared.records] == [0, 1, 2, 3]


@pytest.mark.parametrize("method,budget", [(None, None), ("FasterVLM", 12), ("PruMerge", 16)])
def test_shared_prefix_cache_gives_the_uncached_answers(model, adapter, method, budget):
    """POPE-like prompts (same text before the image, different questions): the shared prefix is prefilled once
    and its KV cache reused; tokens equal the uncached batches and each prompt alone, logits within rounding."""
    ids, pv = tiny_inputs(model, prefix=5, suffix=3, seed=24)
    head = ids[0][: 1 + 5 + N]  # BOS, the shared text, the image run
    gen = torch.Generator().manual_seed(7)
    rows = [torch.cat([head, torch.randint(3, 200, (k,), generator=gen)]) for k in (2, 6, 4, 9, 3)]
    plain = adapter.run_shared_image(rows, pv, method, budget, max_new_tokens=5, batch_size=3, eos_token_id=-1)
    cached = adapter.run_shared_image(
        rows, pv, method, budget, max_new_tokens=5, batch_size=3, eos_token_id=-1, prefix_cache=True
    )
    alone = [adapter.run([r], pv, method, budget, max_new_tokens=5, eos_token_id=-1, output_logits=True) for r in rows]
    assert cached.sequences == plain.sequences == [o.sequences[0] for o in alone]
    n_vis = cached.records[0]["n_kept"]  # PruMerge chooses its own count
    assert {r["prefix_len"] for r in cached.records} == {1 + 5 + n_vis}  # BOS + text + kept rows (no common question)
    assert all(r["prefix_s"] > 0 for r in cached.records) and "prefix_len" not in plain.records[0]
    assert [r["kept_indices"] for r in cached.records] == [o.records[0]["kept_indices"] for o in alone]
    # first-step logits of each prompt, recomputed through the cache, against the prompt alone
    c = cached.records[0]["prefix_len"]
    s = adapter._prepare(
        rows[3:4],
        [0],
        pv,
        adapter._method(method, None),
        adapter._method_budget(adapter._method(method, None), budget, pv),
        False,
        *adapter._inputs([rows[3]], method, None, 1)[3:],
        None,
        None,
    )[0]
    with torch.no_grad():
        pre = adapter.model(inputs_embeds=s.embeds[None, :c], use_cache=True).past_key_values
        step = adapter.model(inputs_embeds=s.embeds[None, c:], past_key_values=pre).logits[0, -1]
    assert torch.allclose(step, alone[3].logits[0][0], atol=1e-4)


def test_shared_prefix_cache_with_nothing_shared_falls_back(model, adapter):
    _, pv = tiny_inputs(model, seed=25)
    rows = [tiny_inputs(model, prefix=pre, suffix=3, seed=50 + pre)[0][0] for pre in (4, 6)]  # different first ids
    out = adapter.run_shared_image(rows, pv, "FasterVLM", 8, max_new_tokens=3, eos_token_id=-1, prefix_cache=True)
    plain = adapter.run_shared_image(rows, pv, "FasterVLM", 8, max_new_tokens=3, eos_token_id=-1)
    assert out.sequences == plain.sequences
    assert all(r.get("prefix_len", 1) >= 1 for r in out.records)  # BOS at least is common, or no cache at all


def test_selections_of_one_image_batched_equal_each_alone(model, adapter):
    """Every method x budget of one prompt and image in left-padded batches == each through run() alone; the
    tower runs once; in-LLM methods run alone; records keep the order of the selections."""
    ids, pv = tiny_inputs(model, seed=26)
    sel = [
        (None, None),
        ("FasterVLM", 8),
        ("FasterVLM", 24),
        ("DivPrune", 12),
        ("FastV", 16),
        ("CDPruner", 10),
        ("PruMerge", 16),
    ]
    calls = []
    real = adapter.encode_images
    adapter.encode_images = lambda *a, **k: (calls.append(1), real(*a, **k))[1]
    try:
        out = adapter.run_selections(ids[0], pv, sel, max_new_tokens=5, batch_size=4, eos_token_id=-1)
    finally:
        del adapter.encode_images
    assert len(calls) == 2  # once for the batched selections, once inside FastV's own run()
    alone = [adapter.run(ids, pv, m, b, max_new_tokens=5, eos_token_id=-1) for m, b in sel]
    assert out.sequences == [o.sequences[0] for o in alone]
    for r, o in zip(out.records, alone):
        assert r["kept_indices"] == o.records[0]["kept_indices"] and r["method"] == o.records[0]["method"]
    assert [r["selection"] for r in out.records] == list(range(len(sel)))
    order = sorted((i for i, (m, _) in enumerate(sel) if m != "FastV"), key=lambda i: out.records[i]["prompt_len"])
    expected = {i: len(order[c : c + 4]) for c in range(0, len(order), 4) for i in order[c : c + 4]}
    assert [r["batch_size"] for r in out.records] == [expected.get(i, 1) for i in range(len(sel))]
    assert order[-1] == 0  # the unpruned prompt (longest) sits in the last batch
    with pytest.raises(BudgetError, match="one per selection"):
        adapter.run_selections(ids[0], pv, sel[:2], erank_stats=[None])
    with pytest.raises(ImageError, match="one image"):
        adapter.run_selections(ids[0], torch.cat([pv, pv]), sel[:2])


def test_shared_image_runs_prompt_dependent_methods_one_by_one(model, adapter):
    _, pv = tiny_inputs(model, seed=22)
    rows = [tiny_inputs(model, prefix=3, suffix=s, seed=40 + s)[0][0] for s in (4, 7)]
    shared = adapter.run_shared_image(rows, pv, "FastV", 16, max_new_tokens=4, eos_token_id=-1)
    alone = [adapter.run([r], pv, "FastV", 16, max_new_tokens=4, eos_token_id=-1) for r in rows]
    assert shared.sequences == [o.sequences[0] for o in alone]
    assert [r["shared_selection"] for r in shared.records] == [False, False]
    assert [r["batch_size"] for r in shared.records] == [1, 1]


def test_shared_image_refuses_several_images_and_bad_batch(model, adapter):
    ids, pv = tiny_inputs(model, batch=2, seed=23)
    with pytest.raises(ImageError, match="one image"):
        adapter.run_shared_image(list(ids), pv, "FasterVLM", 8)
    with pytest.raises(BudgetError, match="batch_size"):
        adapter.run_shared_image(list(ids[:1]), pv[:1], "FasterVLM", 8, batch_size=0)
    with pytest.raises(BudgetError):
        adapter.run_shared_image(list(ids[:1]), pv[:1], "FasterVLM", N + 1)


# ------------------------------------------------------------------ hook hygiene


def test_model_is_unchanged_after_runs_and_errors(model, adapter):
    ids, pv = tiny_inputs(model, seed=8)
    before_w = state_fingerprint(model)
    before = model(input_ids=ids, pixel_values=pv).logits
    adapter.run(ids, pv, None, max_new_tokens=1)  # let transformers install its own capture hooks first
    hooks_before = hook_ids(model)
    adapter.run(ids, pv, "FasterVLM", 8, max_new_tokens=2)
    adapter.run(ids, pv, "FastV", 8, max_new_tokens=2)
    with pytest.raises(RuntimeError, match="boom"):
        adapter.run(ids, pv, Boom(), 8, max_new_tokens=2)

    class BadEdit(get_pruner("FastV").__class__):
        def edit(self, state, view):
            raise RuntimeError("boom in layer")

    with pytest.raises(RuntimeError, match="boom in layer"):
        adapter.run(ids, pv, BadEdit(), 8, max_new_tokens=2)
    assert hook_ids(model) == hooks_before
    after = model(input_ids=ids, pixel_values=pv).logits
    assert torch.equal(before, after)
    after_w = state_fingerprint(model)
    assert before_w.keys() == after_w.keys() and all(torch.equal(before_w[k], after_w[k]) for k in before_w)


def test_hook_scope_removes_on_exception():
    lin = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError):
        with HookScope() as s:
            s.forward_pre(lin, lambda m, a: None)
            s.forward(lin, lambda m, a, o: None)
            assert count_hooks(lin) == 2
            raise ValueError("x")
    assert count_hooks(lin) == 0


# ------------------------------------------------------------------ efficiency accounting


def test_flops_estimate_known_answer(models):
    model = models["clip"]
    ad = LlavaAdapter(model)
    tc = model.config.text_config
    layers = ad.parts.text_layers
    p = sum(x.numel() for x in layers[0].parameters())
    d = tc.hidden_size
    pre, dec = llm_flops(ad.parts, [10] * len(layers), decode_steps=2)
    head = 2 * d * tc.vocab_size
    assert pre == pytest.approx(len(layers) * (2 * p * 10 + 4 * 100 * d) + head)
    assert dec == pytest.approx(len(layers) * ((2 * p + 4 * 11 * d) + (2 * p + 4 * 12 * d)) + 2 * head)
    ids, pv = tiny_inputs(model, seed=9)
    full = ad.run(ids, pv, None, max_new_tokens=2).records[0]
    pruned = ad.run(ids, pv, "FasterVLM", 16, max_new_tokens=2).records[0]
    assert pruned["flops_prefill"] < full["flops_prefill"]
    assert pruned["flops_vision"] == full["flops_vision"] > 0


# ------------------------------------------------------------------ text interface


def test_generate_from_images_and_questions(models):
    from transformers import CLIPImageProcessor

    model = models["dinov2"]
    tok = ToyTokenizer(
        model,
        words=VICUNA_SYSTEM.split() + ["USER:", "ASSISTANT:", "Please", "describe", "this", "image", "in", "detail."],
    )
    proc = types.SimpleNamespace(
        tokenizer=tok,
        image_processor=CLIPImageProcessor(size={"shortest_edge": 112}, crop_size={"height": 112, "width": 112}),
    )
    ad = LlavaAdapter(model, processor=proc)
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 255, (120, 130, 3), dtype=np.uint8) for _ in range(2)]
    out = ad.generate(
        imgs, ["Please describe this image in detail."] * 2, "FasterVLM", 16, max_new_tokens=4, batch_size=2
    )
    assert len(out.texts) == 2 and all(isinstance(t, str) for t in out.texts)
    ids, _ = ad.build_inputs(imgs[:1], ["Please describe this image in detail."])
    start, n = find_image_span(ids[0], model.config.image_token_id)
    assert n == N and start == 1 + len(VICUNA_SYSTEM.split()) + 1  # BOS, system words, "USER:"
    assert out.records[0]["text"] == out.texts[0]


# ------------------------------------------------------------------ bad input


def _one_line(err):
    return isinstance(err, PrunelabError) and "\n" not in str(err)


def test_bad_inputs(models):
    from transformers import LlamaConfig, LlamaForCausalLM

    model = models["clip"]
    ad = LlavaAdapter(model)
    ids, pv = tiny_inputs(model, seed=11)
    with pytest.raises(CapabilityError) as e:
        LlavaAdapter(
            LlamaForCausalLM(
                LlamaConfig(
                    vocab_size=16, hidden_size=8, intermediate_size=8, num_hidden_layers=1, num_attention_heads=2
                )
            )
        )
    assert _one_line(e.value)
    with pytest.raises(BudgetError) as e:
        ad.run(ids, pv, "FasterVLM", N + 1)
    assert _one_line(e.value)
    with pytest.raises(BudgetError):
        ad.run(ids, pv, "FasterVLM", None)
    with pytest.raises(CapabilityError) as e:
        ad.run(ids, pv, "FastV", 8, batch_size=2)
    assert _one_line(e.value)
    with pytest.raises(CapabilityError) as e:
        ad.encode_images(pv, qk_layers=(-9,))
    assert _one_line(e.value)
    with pytest.raises(ImageError):
        ad.run(ids, torch.cat([pv, pv]), "FasterVLM", 8)
    with pytest.raises(UnknownNameError):
        ad.run(ids, pv, "NoSuchMethod", 8)
    full = tiny_llava("clip", seed=0)
    full.config.vision_feature_select_strategy = "full"
    with pytest.raises(CapabilityError) as e:
        LlavaAdapter(full)
    assert _one_line(e.value)
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError) as e:
            LlavaAdapter(tiny_llava("clip", seed=0), device="cuda")
        assert _one_line(e.value)


def test_tower_without_qk_projections_is_a_capability_error(models):
    """A tower whose attention has no q/k projections cannot give [CLS] attention: one clear error."""
    model = tiny_llava("clip", seed=0)
    ad = LlavaAdapter(model)
    layer = ad.parts.vision_layers[ad.parts.n_vision_layers - 2]
    layer.self_attn = torch.nn.Identity()
    ids, pv = tiny_inputs(model, seed=12)
    with pytest.raises(CapabilityError) as e:
        ad.run(ids, pv, "FasterVLM", 8)
    assert _one_line(e.value) and "query/key" in str(e.value)


def test_budget_is_checked_against_the_processed_resolution():
    """ToyLLaVA's DINOv2 config says 518 px while its processor gives 336 px: the token count (and the budget
    check) must follow the pixels actually passed, not the config."""
    from prunelab.errors import BudgetError
    from prunelab.models.adapter import LlavaAdapter
    from prunelab.models.tiny import tiny_llava

    m = tiny_llava("dinov2", seed=3)  # config: 112 px -> 64 tokens
    ad = LlavaAdapter(m)
    pv = torch.randn(1, 3, 84, 84)  # 6 x 6 = 36 tokens (DINOv2 interpolates its position embeddings)
    assert ad.n_image_tokens == 64 and ad.tokens_for(pv) == 36
    ids = torch.cat([torch.tensor([1, 5, 6]), torch.full((36,), m.config.image_token_id), torch.tensor([7, 8])])[None]
    out = ad.run(ids, pv, "FasterVLM", 36, max_new_tokens=2)
    assert out.records[0]["n_image_tokens"] == 36 and out.records[0]["n_kept"] == 36
    with pytest.raises(BudgetError, match="1..36"):
        ad.run(ids, pv, "FasterVLM", 40, max_new_tokens=2)


@pytest.mark.parametrize("family", ["llava_onevision"])
def test_unsupported_families_are_refused_up_front(family):
    """A family without an adapter is refused by name before anything runs (before, LLaVA-NeXT passed resolve_parts
    and failed inside generate with 'too many values to unpack'). Qwen2.5-VL and LLaVA-NeXT have their own adapters
    (tests/test_qwen2_5_vl.py, tests/test_llava_next.py)."""
    import transformers

    from prunelab.models.parts import UNSUPPORTED_FAMILIES, resolve_parts

    cls, cfg_cls = {
        "llava_onevision": (transformers.LlavaOnevisionForConditionalGeneration, transformers.LlavaOnevisionConfig)
    }[family]
    with torch.device("meta"):  # the 7B default configs, no weights
        model = cls(cfg_cls())
    with pytest.raises(CapabilityError, match=f"not supported yet.*{re.escape(UNSUPPORTED_FAMILIES[family])}"):
        resolve_parts(model)
    with pytest.raises(CapabilityError, match="not supported yet"):
        LlavaAdapter(model)


def test_llava_next_is_sent_to_its_own_adapter():
    """resolve_parts reads a LLaVA-NeXT model; the LLaVA-1.5 adapter refuses it up front, naming LlavaNextAdapter
    (its anyres run would fail inside generate)."""
    import transformers

    from prunelab.models.parts import resolve_parts

    with torch.device("meta"):
        model = transformers.LlavaNextForConditionalGeneration(transformers.LlavaNextConfig())
    assert resolve_parts(model).image_token_id == model.config.image_token_id
    with pytest.raises(CapabilityError, match="LlavaNextAdapter"):
        LlavaAdapter(model)

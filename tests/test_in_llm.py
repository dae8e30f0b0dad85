"""In-LLM methods (FastV, PDrop, SparseVLM, DART) through the adapter's scoped decoder hooks: independent
score checks against eager attention, position policies, KV cache vs no-cache reference, schedules."""

from __future__ import annotations

import math

import pytest
import torch

from prunelab.errors import BudgetError, CapabilityError
from prunelab.methods.base import get_pruner, prune
from prunelab.methods.in_llm import PDrop, SparseVLM, dart_select, scale_layers
from prunelab.models.adapter import LlavaAdapter
from prunelab.models.hooks import HookScope
from prunelab.models.parts import find_image_span
from prunelab.models.tiny import tiny_inputs, tiny_llava

N = 64
IN_LLM = ["FastV", "PDrop", "SparseVLM", "DART"]


@pytest.fixture(scope="module")
def model():
    return tiny_llava("clip", seed=0)


@pytest.fixture(scope="module")
def adapter(model):
    return LlavaAdapter(model)


@pytest.fixture(scope="module")
def inputs(model):
    return tiny_inputs(model, seed=21)


def _eager_twin():
    m = tiny_llava("clip", seed=0)
    m.model.language_model.config._attn_implementation = "eager"
    m.config.text_config._attn_implementation = "eager"
    return m


@pytest.mark.parametrize("method", IN_LLM)
def test_kv_cache_generation_equals_no_cache_reference(adapter, inputs, method):
    ids, pv = inputs
    out = adapter.run(ids, pv, method, 16, max_new_tokens=5, output_logits=True, eos_token_id=-1)
    ref = adapter.reference_no_cache(ids, pv, method, 16, steps=5)
    assert torch.allclose(out.logits[0], ref, atol=1e-4)
    full = adapter.run(ids, pv, None, max_new_tokens=5, output_logits=True, eos_token_id=-1)
    assert not torch.allclose(out.logits[0], full.logits[0], atol=1e-3)  # pruning really changed something
    r = out.records[0]
    counts = r["visual_tokens_per_layer"]
    assert len(counts) == 8 and counts[0] == N and counts == sorted(counts, reverse=True)
    # KV cache: each layer holds its own prefill length + the decoded tokens.
    L = ids.shape[1]
    lens = [L - N + c for c in counts]
    assert r["kv_len_per_layer"] == [n + 4 for n in lens]  # 5 tokens generated, the last one not yet cached
    assert r["equivalent_tokens"] == pytest.approx(sum(counts) / 8)


def test_fastv_scores_equal_eager_attention(adapter, inputs):
    """FastV keeps the top-T image columns of layer K-1's eager attention row of the last prompt token."""
    ids, pv = inputs
    twin = _eager_twin()
    tw = LlavaAdapter(twin)
    emb = tw._prepare([ids[0]], [0], pv, None, None, False, set(), False, None, None)[0].embeds[None]
    att = twin.model.language_model(inputs_embeds=emb, output_attentions=True).attentions[1]  # layer K-1 = 1
    start, _ = find_image_span(ids[0], twin.config.image_token_id)
    score = att[0, :, -1, start : start + N].mean(0)
    expect = torch.sort(torch.topk(score, 16).indices).values.tolist()
    out = adapter.run(ids, pv, "FastV", 16, max_new_tokens=1)
    r = out.records[0]
    assert r["kept_indices"] == expect
    assert r["visual_tokens_per_layer"] == [N, N] + [16] * 6
    assert r["equivalent_tokens"] == pytest.approx((2 * N + 6 * 16) / 8)


def test_eager_text_attention_gives_same_result(adapter, inputs):
    """With a materialised 4-D causal mask (eager text attention) the hooks rebuild the mask for the shorter
    sequence: same logits as SDPA."""
    ids, pv = inputs
    tw = LlavaAdapter(_eager_twin())
    for method in ("FastV", "SparseVLM"):
        a = adapter.run(ids, pv, method, 16, max_new_tokens=3, output_logits=True, eos_token_id=-1)
        b = tw.run(ids, pv, method, 16, max_new_tokens=3, output_logits=True, eos_token_id=-1)
        assert a.records[0]["kept_indices"] == b.records[0]["kept_indices"]
        assert torch.allclose(a.logits[0], b.logits[0], atol=1e-4)


@pytest.mark.parametrize(
    "method,policy", [("FastV", "original"), ("DART", "original"), ("PDrop", "contiguous"), ("SparseVLM", "contiguous")]
)
def test_position_policy(adapter, model, inputs, method, policy):
    ids, pv = inputs
    seen = {}
    k = 2 if method in ("FastV", "DART") else None

    def grab(i):
        def hook(_m, _a, kw):
            if kw["hidden_states"].shape[1] > 1:
                seen[i] = kw["position_ids"][0].clone()

        return hook

    with HookScope() as s:
        for i, layer in enumerate(model.model.language_model.layers):
            s.forward_pre(layer.self_attn, grab(i), with_kwargs=True)
        out = adapter.run(ids, pv, method, 16, max_new_tokens=1)
    r = out.records[0]
    assert r["positions"] == policy
    L = ids.shape[1]
    last = seen[7]
    assert last.numel() == L - N + r["visual_tokens_per_layer"][-1]
    if policy == "original":
        start, _ = find_image_span(ids[0], model.config.image_token_id)
        text = list(range(start)) + list(range(start + N, L))
        expect = sorted(text + [start + i for i in r["kept_indices"]])
        assert last.tolist() == expect
        assert seen[k - 1].tolist() == list(range(L))
    else:
        assert last.tolist() == list(range(last.numel()))


@pytest.mark.parametrize("method,params", [("FastV", {}), ("PDrop", {}), ("DART", {"match_budget": True})])
def test_budget_n_equals_unpruned(adapter, inputs, method, params):
    ids, pv = inputs
    a = adapter.run(ids, pv, method, N, method_params=params, max_new_tokens=4, output_logits=True, eos_token_id=-1)
    b = adapter.run(ids, pv, None, max_new_tokens=4, output_logits=True, eos_token_id=-1)
    assert a.sequences == b.sequences
    assert torch.allclose(a.logits[0], b.logits[0], atol=1e-4)
    assert a.records[0]["equivalent_tokens"] == N


def test_dart_counts(adapter, inputs):
    ids, pv = inputs
    r = adapter.run(ids, pv, "DART", 16, max_new_tokens=1).records[0]
    assert r["n_kept"] == 4 + 8 * (16 // 8)  # the source's max_num_trunction // 8 per pivot
    r = adapter.run(ids, pv, "DART", 17, method_params={"match_budget": True}, max_new_tokens=1).records[0]
    assert r["n_kept"] == 17 and len(r["kept_indices"]) == 17


def _official_dart(last_layer_state, key_states, start, length, max_num_trunction, pivot_image=4, pivot_text=4):
    """Transcription of the fork's rule: xqy1111111/DART @ d6a5af6
    ``llava/model/language_model/modeling_llama_self.py::get_retained_image_token`` lines 397-449 (LLaVA-1.5
    path, ``text_length`` None). ``last_layer_state`` ``(1, L, D)`` (after ``model.norm``), ``key_states``
    ``(1, H, L, d)``. Returns the retained absolute positions, sorted (the caller sorts them, l. 353)."""
    token_topk = math.ceil(max_num_trunction // (pivot_image + pivot_text))  # l. 409
    keys = key_states.permute(0, 2, 1, 3).reshape(key_states.shape[0], key_states.shape[2], -1)  # l. 419
    img_norm = torch.norm(keys[0][start : start + length, :], p=1, dim=-1)  # l. 421-425
    txt_norm = torch.norm(keys[0][start + length :, :], p=1, dim=-1)
    image_indices = (img_norm.topk(pivot_image).indices + start).tolist()  # l. 427-429
    query_indices = (txt_norm.topk(pivot_text).indices + start + length).tolist()
    indices_set = set(image_indices + query_indices)
    valid = set(range(start, start + length)) - set(image_indices)  # l. 431-443
    valid_list = list(valid)
    for item in list(indices_set):
        pivot, others = last_layer_state[0][item, :], last_layer_state[0][valid_list, :]
        sims = -torch.nn.functional.cosine_similarity(pivot, others, dim=-1)
        picked = [valid_list[i] for i in sims.topk(token_topk).indices]
        indices_set.update(picked)
        valid.difference_update(picked)
        valid_list = list(valid)
    indices_set.difference_update(query_indices)  # l. 445
    return sorted(indices_set)


@pytest.mark.parametrize("start,length,n_text", [(35, 576, 40), (5, 576, 30), (9, 64, 13)])
def test_dart_select_matches_the_forks_loop(start, length, n_text):
    """The default pivot order is the fork's ``list(set(...))`` over absolute positions; the earlier
    ``"norm"`` order (image pivots, then text pivots) gives other kept sets."""
    differs = 0
    for seed in range(3):
        g = torch.Generator().manual_seed(seed)
        total = start + length + n_text
        states = torch.randn(1, total, 32, generator=g)
        keys = torch.randn(1, 2, total, 8, generator=g)
        key_l1 = torch.norm(keys[0].transpose(0, 1).reshape(total, -1), p=1, dim=-1)
        image_pos, text_pos = torch.arange(start, start + length), torch.arange(start + length, total)
        for budget in (16, 64, 128) if length > 200 else (16, 32, 48):  # the fork needs 8 * picks <= N - 4
            ref = _official_dart(states, keys, start, length, budget)
            keep, _, picks = dart_select(states[0], key_l1, image_pos, text_pos, budget)
            assert (keep + start).tolist() == ref, (seed, budget)
            assert len(keep) == 4 + 8 * (budget // 8) and picks == [budget // 8] * 8
            other, _, _ = dart_select(states[0], key_l1, image_pos, text_pos, budget, pivot_order="norm")
            differs += (other + start).tolist() != ref
    assert differs >= 1


def test_dart_adapter_keeps_what_the_fork_keeps(adapter, model, inputs):
    """End to end on the tiny model: the fork's rule on the adapter's own layer K-1 keys and layer-K input
    (``model.norm`` applied) keeps exactly the adapter's ``kept_indices``, at the prompt's absolute positions."""
    from prunelab.methods.in_llm import DART

    seen = {}

    class Spy(DART):
        def observe(self, state, layer_input):
            seen["keys"] = layer_input.keys.float().clone()  # (L, kv_heads * head_dim)
            super().observe(state, layer_input)

        def edit(self, state, layer_input):
            seen["states"] = layer_input.normed_hidden.float().clone()[None]  # (1, L, D)
            return super().edit(state, layer_input)

    ids, pv = inputs
    start, n = find_image_span(ids[0], model.config.image_token_id)
    tc = model.config.text_config
    kv_heads = tc.num_key_value_heads
    differs = 0
    for budget in (8, 16, 24, 32):
        r = adapter.run(ids, pv, Spy(), budget, max_new_tokens=1).records[0]
        total = seen["keys"].shape[0]
        keys = seen["keys"].reshape(total, kv_heads, -1).permute(1, 0, 2)[None]  # back to the fork's (1, H, L, d)
        ref = _official_dart(seen["states"], keys, start, n, budget)
        assert [start + i for i in r["kept_indices"]] == ref, budget
        assert sorted(r["pivot_positions"]) == sorted(set(r["pivot_positions"])) and len(r["pivot_positions"]) == 8
        norm = adapter.run(ids, pv, "DART", budget, method_params={"pivot_order": "norm"}, max_new_tokens=1).records[0]
        differs += [start + i for i in norm["kept_indices"]] != ref
    assert differs >= 1  # the order matters on this model too


@pytest.mark.parametrize("text_layers", [None, 4])
def test_sparsevlm_recycling(adapter, inputs, text_layers):
    """On a 4-layer decoder the sparse layers are [1, 2, 3]: each edit layer is also the next sparse layer, whose
    scores must then be taken on the edited input (Plan.edit_first; an IndexError before)."""
    if text_layers is not None:
        model = tiny_llava("clip", seed=0, text_layers=text_layers)
        adapter, inputs = LlavaAdapter(model), tiny_inputs(model, seed=21)
    ids, pv = inputs
    r = adapter.run(ids, pv, "SparseVLM", 16, max_new_tokens=1).records[0]
    if text_layers == 4:
        assert r["prune_layers"] == [1, 2, 3]  # consecutive: every edit layer is also a sparse layer
    layers, sched, rec = r["prune_layers"], r["schedule"], r["recycled_per_layer"]
    counts = r["visual_tokens_per_layer"]
    prev = N
    for layer, k, m in zip(layers, sched, rec):
        pruned = prev - min(k, prev)
        n_cand = min(int(pruned * 0.3) + 1, pruned)
        assert m == (min(int(n_cand / 10) + 1, n_cand) if pruned else 0)
        assert counts[layer] == min(k, prev) + m
        prev = counts[layer]
    r2 = adapter.run(ids, pv, "SparseVLM", 16, method_params={"recycle": False}, max_new_tokens=1).records[0]
    assert r2["recycled_per_layer"] == [0, 0, 0] and r2["n_kept"] == len(r2["kept_indices"])
    assert r["n_raters"] >= 1


def test_schedules_known_answers():
    assert scale_layers((8, 16, 24), 32) == [8, 16, 24]
    assert scale_layers((8, 16, 24), 4, lo=1) == [1, 2, 3]
    assert scale_layers((2, 6, 15), 8) == [0, 2, 4]
    layers, counts = PDrop().schedule(32, 576, 192)
    assert layers == [8, 16, 24]
    teq = PDrop.equivalent(576, layers, counts, 32)
    assert teq <= 192 and teq > 185
    layers, counts = PDrop().schedule(32, 576, 64)  # infeasible with the first drop at layer 8
    assert layers[0] < 8 and PDrop.equivalent(576, layers, counts, 32) <= 64
    assert PDrop(ratio=0.5).schedule(32, 576, 64) == ([8, 16, 24], [288, 144, 72])
    assert SparseVLM().counts(576, 128) == [303, 110, 36]
    assert SparseVLM().counts(576, 64) == [66, 30, 17]
    assert SparseVLM(schedule=(5, 4, 3)).counts(64, 16) == [5, 4, 3]


def test_bad_in_llm_inputs(adapter, inputs, ctx):
    ids, pv = inputs
    with pytest.raises(BudgetError):
        adapter.run(ids, pv, "FastV", 8, method_params={"k": 8}, max_new_tokens=1)
    with pytest.raises(BudgetError):
        get_pruner("FastV", k=0)
    with pytest.raises(CapabilityError) as e:
        prune(ctx, "FastV", 8)
    assert "\n" not in str(e.value)
    with pytest.raises(CapabilityError):
        adapter.run([ids[0], ids[0]], torch.cat([pv, pv]), "DART", 8, batch_size=2)


@pytest.mark.parametrize(
    "method,attention,keys,norms", [("FastV", 1, 0, 1), ("PDrop", 3, 0, 1), ("SparseVLM", 3, 0, 1), ("DART", 0, 1, 2)]
)
def test_engine_computes_only_what_the_method_requests(
    adapter, model, inputs, monkeypatch, method, attention, keys, norms
):
    """One attention recomputation per scoring layer, keys only for DART, the final norm once more only for DART's
    edit layer (the model's own prefill norm is the other one): no extra pass on the prefill."""
    import prunelab.models.decoder_edit as DE

    calls = {"attention": 0, "keys": 0, "norm": 0}

    def counting(f, key):
        def g(*a, **k):
            calls[key] += 1
            return f(*a, **k)

        return g

    monkeypatch.setattr(DE, "layer_attention_rows", counting(DE.layer_attention_rows, "attention"))
    monkeypatch.setattr(DE, "layer_keys", counting(DE.layer_keys, "keys"))
    with HookScope() as s:
        s.forward(model.model.language_model.norm, lambda *a: calls.__setitem__("norm", calls["norm"] + 1))
        ids, pv = inputs
        adapter.run(ids, pv, method, 16, max_new_tokens=1)
    assert calls == {"attention": attention, "keys": keys, "norm": norms}


def test_bad_observe_request():
    from prunelab.methods.in_llm import Observe

    assert Observe(attention_rows=(3, 4)).attention_rows == (3, 4)
    with pytest.raises(CapabilityError, match="attention_rows"):
        Observe(attention_rows="first")

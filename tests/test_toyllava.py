"""ToyLLaVA: tokenizer, chat template, packaging, training steps, resume and error paths.

Fast tests run on synthetic tower features (each category = a fixed random direction written into the patches of
its box), so they need neither the DINOv2 tower nor the toy world. The committed model is checked in the slow
tests at the end (skipped cleanly when its folder or the tower is absent).
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from prunelab.errors import AssetError
from prunelab.models import toyllava as T
from prunelab.train import toydata as TD, toyeval as TE, toytrain as TT

PROMPT = "Please describe this image in detail."
CATS = ["dog", "cat", "cup", "car"]


SIDE = 8  # an 8x8 token grid keeps the tests fast; the code takes the token count from the store


def _synthetic(n: int = 24, seed: int = 0):
    """Records + a FeatureStore where each category is a direction written into a 2x2 block of patches."""
    rng = np.random.default_rng(seed)
    dirs = rng.normal(size=(len(CATS), TD.FEAT_DIM)).astype(np.float32) * 3
    feats = rng.normal(size=(n, SIDE * SIDE, TD.FEAT_DIM)).astype(np.float32) * 0.5
    recs = []
    for i in range(n):
        present = sorted(rng.choice(len(CATS), size=int(rng.integers(1, 3)), replace=False).tolist())
        boxes = []
        for c in present:
            r, col = (int(v) for v in rng.integers(0, SIDE - 2, size=2))
            for rr in range(r, r + 2):
                feats[i, rr * SIDE + col : rr * SIDE + col + 2] += dirs[c]
            boxes.append((CATS[c], [rr * SIDE + cc for rr in range(r, r + 2) for cc in range(col, col + 2)]))
        names = [CATS[c] for c in present]
        desc = "There is " + " and ".join(f"a {w}" for w in names) + "."
        qs = [
            (f"Is there a {w} in the image?", "Yes" if w in names else "No", "positive" if w in names else "random", w)
            for w in CATS
        ]
        recs.append(
            TD.Record(
                id=f"s{i}",
                complexity="simple" if len(names) == 1 else "complex",
                objects=names,
                boxes=boxes,
                descriptions=[desc],
                questions=qs,
                train_questions=[(q, a) for q, a, *_ in qs],
            )
        )
    store = TD.FeatureStore.from_arrays(
        feats.astype(np.float16), np.full((n, SIDE * SIDE), 1 / SIDE**2, np.float32), [r.id for r in recs]
    )
    return recs, store


def _tok(recs):
    return T.build_tokenizer([PROMPT] + TD.all_texts(recs))


TINY = TD.TrainConfig(
    hidden_size=32,
    num_layers=1,
    num_heads=2,
    intermediate_size=64,
    steps=6,
    batch_size=4,
    lr=3e-3,
    warmup=1,
    ckpt_every=3,
    val_every=100,
    emb_dropout=0.1,
    attn_dropout=0.1,
    bf16=False,
)


@pytest.fixture(scope="module")
def data():
    recs, store = _synthetic()
    return recs, store, _tok(recs)


# ---- tokenizer and chat template ------------------------------------------------------------------------------


def test_tokenizer_round_trip_and_fixed_ids(data):
    recs, _, tok = data
    for text in [PROMPT, recs[0].descriptions[0], "Is there a cup in the image?", "Yes", "No"]:
        ids = tok(text)["input_ids"]
        assert ids[0] == tok.bos_token_id
        assert tok.unk_token_id not in ids
        assert tok.decode(ids, skip_special_tokens=True) == text
    assert [tok.convert_tokens_to_ids(t) for t in T.SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
    assert tok.pad_token_id == 0 and tok.eos_token_id == 3
    # same texts in another order -> same vocabulary
    assert T.vocab_digest(T.build_tokenizer(reversed([PROMPT] + TD.all_texts(recs)))) == T.vocab_digest(tok)
    # unknown words map to <unk>, they are not silently split
    assert tok("a zebra")["input_ids"][-1] == tok.unk_token_id


def test_chat_template_and_dialogue_mask(data):
    _, _, tok = data
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROMPT}]}]
    text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert text == f"USER: <image>\n{PROMPT} ASSISTANT:"
    ids, mask = T.dialogue_ids(tok, [(PROMPT, "There is a dog."), ("Is there a cat in the image?", "No")])
    toks = tok.convert_ids_to_tokens(ids)
    assert toks[:4] == ["<s>", "USER", ":", "<image>"] and toks.count("<image>") == 1
    learned = [t for t, m in zip(toks, mask) if m]
    assert learned == ["There", "is", "a", "dog", ".", "</s>", "No", "</s>"]
    # composing turns from cached pieces gives exactly the template's ids
    b = TT.SampleBuilder(tok, qa_weight=2.0)
    ids2, w2 = b.dialogue([(PROMPT, "There is a dog."), ("Is there a cat in the image?", "No")])
    assert ids2 == ids and [x > 0 for x in w2] == [bool(m) for m in mask] and max(w2) == 2.0


def test_processor_expands_image_to_576_tokens(data):
    from PIL import Image

    _, _, tok = data
    proc = T.build_processor(tok)
    cfg = T.build_config(tok, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROMPT}]}]
    out = proc(
        images=Image.new("RGB", (336, 336), (10, 20, 30)),
        text=proc.apply_chat_template(msgs, add_generation_prompt=True),
        return_tensors="pt",
    )
    assert int((out["input_ids"] == cfg.image_token_id).sum()) == 576
    assert tuple(out["pixel_values"].shape) == (1, 3, 336, 336)
    # the processor's ids are the training ids with the placeholder expanded
    ref = T.prompt_ids(tok, PROMPT)
    p = ref.index(cfg.image_token_id)
    assert out["input_ids"][0].tolist() == ref[:p] + [cfg.image_token_id] * 576 + ref[p + 1 :]


# ---- training ------------------------------------------------------------------------------------------------


def test_flip_mirrors_the_token_grid(data):
    recs, store, tok = data
    b = TT.SampleBuilder(tok)
    _, plain, _, _ = TT.make_batch(dataclasses.replace(TINY, p_flip=0.0), 0, recs, store, b, PROMPT)
    _, flip, _, _ = TT.make_batch(dataclasses.replace(TINY, p_flip=1.0), 0, recs, store, b, PROMPT)
    g = plain[0].reshape(SIDE, SIDE, -1)
    assert torch.equal(flip[0].reshape(SIDE, SIDE, -1), g.flip(1))


def test_balanced_yes_no_turns():
    rng = np.random.default_rng(0)
    pool = [(f"q{i}", "Yes") for i in range(3)] + [(f"n{i}", "No") for i in range(9)]
    for _ in range(20):
        t = TT._balanced_turns(rng, pool, 4)
        assert len(t) == 4 and len(set(t)) == 4 and sum(a == "Yes" for _, a in t) == 2
    assert sum(a == "Yes" for _, a in TT._balanced_turns(rng, pool[:1] + pool[3:], 4)) == 1  # pool-limited


def test_description_then_questions_weighs_each_turn(data):
    recs, store, tok = data
    b = TT.SampleBuilder(tok, qa_weight=2.0)
    desc = recs[0].descriptions[0]
    ids, w = b.dialogue([(PROMPT, desc), ("Is there a cat in the image?", "No")])
    toks = tok.convert_ids_to_tokens(ids)
    weighted = [(t, x) for t, x in zip(toks, w) if x > 0]
    n_desc = len(tok(desc)["input_ids"]) - 1 + 1  # words without <s>, plus </s>
    assert [x for _, x in weighted[:n_desc]] == [1.0] * n_desc  # description tokens keep weight 1
    assert weighted[n_desc:] == [("No", 2.0), ("</s>", 2.0)]  # the yes/no turn gets qa_weight
    # every description sequence carries qa_after_caption questions after the description
    cfg = dataclasses.replace(TINY, p_caption=1.0, qa_after_caption=2)
    ids_b, _, labels, weights = TT.make_batch(cfg, 0, recs, store, b, PROMPT)
    yes, no = tok.convert_tokens_to_ids("Yes"), tok.convert_tokens_to_ids("No")
    for row_ids, row_w in zip(ids_b, weights):
        answers = [int(t) for t, x in zip(row_ids, row_w) if x == 2.0 and int(t) in (yes, no)]
        assert len(answers) == 2
    plain = dataclasses.replace(TINY, p_caption=1.0, qa_after_caption=0)
    _, _, _, w0 = TT.make_batch(plain, 0, recs, store, b, PROMPT)
    assert float(w0.max()) == 1.0  # no yes/no turn at all


def test_batches_are_functions_of_seed_and_step(data):
    recs, store, tok = data
    b = TT.SampleBuilder(tok)
    x1 = TT.make_batch(TINY, 5, recs, store, b, PROMPT)
    x2 = TT.make_batch(TINY, 5, recs, store, b, PROMPT)
    x3 = TT.make_batch(TINY, 6, recs, store, b, PROMPT)
    assert all(torch.equal(u, v) for u, v in zip(x1, x2))
    assert not torch.equal(x1[1], x3[1])
    ids, feats, labels, weights = x1
    assert (ids == tok.convert_tokens_to_ids("<image>")).sum(1).tolist() == [SIDE * SIDE] * TINY.batch_size
    assert ((labels >= 0) == (weights > 0)).all()
    # every scene is visited once per epoch
    seen = np.concatenate([TT.batch_indices(0, s, 4, len(recs)) for s in range(len(recs) // 4)])
    assert sorted(seen.tolist()) == list(range(len(recs)))


def test_subset_augmentation_keeps_raster_order(data):
    recs, store, tok = data
    cfg = dataclasses.replace(TINY, p_subset=1.0, subset_min=20, subset_max=40, p_flip=0.0)
    ids, feats, labels, _ = TT.make_batch(cfg, 0, recs, store, TT.SampleBuilder(tok), PROMPT)
    n = feats.shape[1]
    assert 20 <= n <= 40 and int((ids[0] == tok.convert_tokens_to_ids("<image>")).sum()) == n
    # each kept row is a row of the original image, in increasing patch order
    idx = TT.batch_indices(cfg.seed, 0, cfg.batch_size, len(recs))[0]
    full = torch.from_numpy(np.asarray(store.features[idx], dtype=np.float32))
    pos = [int(torch.nonzero((full == feats[0, k]).all(1))[0]) for k in range(n)]
    assert pos == sorted(pos)


def test_tiny_training_decreases_loss(data, tmp_path):
    recs, store, tok = data
    cfg = dataclasses.replace(TINY, steps=40, ckpt_every=40, lr=5e-3, warmup=2)
    model, hist = TT.train(cfg, recs, store, tok, tmp_path, progress=False, prompt=PROMPT)
    first = np.mean([h["loss"] for h in hist[:3]])
    last = np.mean([h["loss"] for h in hist[-3:]])
    assert last < 0.6 * first, (first, last)
    assert (tmp_path / "last.pt").exists() and (tmp_path / "train.log").read_text().count('"loss"') == 40


def test_resume_from_checkpoint_is_identical(data, tmp_path):
    recs, store, tok = data
    a, hist_a = TT.train(TINY, recs, store, tok, tmp_path / "a", progress=False, prompt=PROMPT)
    TT.train(
        TINY, recs, store, tok, tmp_path / "b", max_steps=3, progress=False, prompt=PROMPT
    )  # "interrupted" after step 3
    b, hist_b = TT.train(TINY, recs, store, tok, tmp_path / "b", progress=False, prompt=PROMPT)
    assert [h["loss"] for h in hist_a] == [h["loss"] for h in hist_b]
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert "resuming" in (tmp_path / "b" / "train.log").read_text()


def test_corrupt_checkpoint_is_one_clear_error(data, tmp_path):
    recs, store, tok = data
    TT.train(TINY, recs, store, tok, tmp_path, max_steps=3, progress=False, prompt=PROMPT)
    ck = tmp_path / "last.pt"
    ck.write_bytes(ck.read_bytes()[:500])
    with pytest.raises(AssetError, match="corrupt training checkpoint .*delete it") as ei:
        TT.train(TINY, recs, store, tok, tmp_path, progress=False, prompt=PROMPT)
    assert "\n" not in str(ei.value)


def test_checkpoint_from_other_config_is_refused(data, tmp_path):
    from prunelab.errors import PrunelabError

    recs, store, tok = data
    TT.train(TINY, recs, store, tok, tmp_path, max_steps=3, progress=False, prompt=PROMPT)
    with pytest.raises(PrunelabError, match="another configuration"):
        TT.train(dataclasses.replace(TINY, lr=1e-4), recs, store, tok, tmp_path, progress=False, prompt=PROMPT)


# ---- packaging -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def package(data, tmp_path_factory):
    recs, store, tok = data
    tmp = tmp_path_factory.mktemp("pkg")
    cfg = dataclasses.replace(TINY, steps=4)
    model, _ = TT.train(cfg, recs, store, tok, tmp / "run", progress=False, prompt=PROMPT)
    proj, lm = model.export_state()
    out = T.write_package(tmp / "toyllava", tok, model.config, proj, lm, extra_files={"MODEL_CARD.md": "# test\n"})
    return model, out


def test_export_folds_standardisation_exactly(data, package):
    _, store, _ = data
    model, out = package
    f = torch.from_numpy(np.asarray(store.features[0], dtype=np.float32))
    m2, _ = TT.ToyLlavaLM.from_package(out)
    with torch.no_grad():
        ref = model.project(f)
        got = m2.project(f)
    assert torch.allclose(ref, got, atol=2e-2 * float(ref.abs().max()))  # fp16 storage


def test_package_loads_with_from_pretrained_and_generates(data, package):
    from transformers import LlavaForConditionalGeneration, LlavaProcessor, PreTrainedTokenizerFast

    recs, store, tok = data
    model, out = package
    assert {p.name for p in out.iterdir()} >= {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "processor_config.json",
        "MODEL_CARD.md",
    }
    m = LlavaForConditionalGeneration.from_pretrained(str(out), dtype=torch.float32).eval()
    proc = LlavaProcessor.from_pretrained(str(out))
    assert isinstance(proc.tokenizer, PreTrainedTokenizerFast) and T.vocab_digest(proc.tokenizer) == T.vocab_digest(tok)
    # the HF path (projector on layer -2 features spliced at the placeholders) = the trainer's computation
    f = torch.from_numpy(np.asarray(store.features[1], dtype=np.float32))
    ids = T.prompt_ids(tok, PROMPT)
    p = ids.index(m.config.image_token_id)
    full_ids = torch.tensor([ids[:p] + [m.config.image_token_id] * f.shape[0] + ids[p + 1 :]])
    with torch.no_grad():
        emb = m.get_input_embeddings()(full_ids)
        emb[full_ids == m.config.image_token_id] = m.model.multi_modal_projector(f)
        hf_logits = m(inputs_embeds=emb).logits[0, -1]
        m2, _ = TT.ToyLlavaLM.from_package(out)
        ours = m2(full_ids, f[None])[0, -1]
    assert torch.allclose(hf_logits, ours, atol=1e-4)
    gen = TE.generate_descriptions(m2, tok, [m2.project(f)], PROMPT, max_new_tokens=5)
    assert 1 <= len(gen[0]) <= 5
    with torch.no_grad():
        g2 = m.generate(
            inputs_embeds=emb,
            attention_mask=torch.ones(emb.shape[:2], dtype=torch.long),
            max_new_tokens=5,
            do_sample=False,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )
    assert g2[0].tolist()[: len(gen[0])] == gen[0]


def test_incompatible_tokenizer_is_refused(data, package, tmp_path):
    import shutil

    _, out = package
    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    other = T.build_tokenizer([PROMPT, "completely different words here"])
    other.save_pretrained(str(bad))
    with pytest.raises(AssetError, match="incompatible tokenizer.*make toy-model"):
        T.load_projector_lm(bad)


def test_corrupt_weights_and_missing_folder(data, package, tmp_path):
    import shutil

    _, out = package
    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    (bad / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(AssetError, match="corrupt ToyLLaVA weights"):
        T.load_projector_lm(bad)
    with pytest.raises(AssetError, match="make toy-model"):
        T.load_projector_lm(tmp_path / "nowhere")


# ---- evaluation helpers ----------------------------------------------------------------------------------------


def test_degenerate_detection():
    eos = 3
    assert not TE.is_degenerate([10, 11, 12, 13, 14, 6, eos], eos)
    assert TE.is_degenerate([10, 11, 12], eos)  # never ended
    assert TE.is_degenerate([7, 8, 9, 8, 9, 8, 9, 6, eos], eos)  # "a cup a cup a cup"
    assert not TE.is_degenerate([7, 8, 9, 8, 9, 6, eos], eos)  # twice is not a loop
    assert TE.is_degenerate([5, 5, 5, eos], eos)


def test_patches_of_box_and_object_hit():
    assert TE.patches_of_box((0, 0, 14, 14)).tolist() == [0]
    assert TE.patches_of_box((14, 0, 29, 14)).tolist() == [1, 2]
    assert sorted(TE.patches_of_box((322, 322, 336, 336)).tolist()) == [575]
    boxes = [("dog", (0, 0, 28, 28)), ("cat", (322, 322, 336, 336))]
    assert TE.object_hit(boxes, np.array([25])) == (1, 2)
    assert TE.object_hit(boxes, np.array([25, 575])) == (2, 2)
    assert TE.object_hit(boxes, np.array([100])) == (0, 2)


def test_paired_bootstrap_detects_a_clear_drop():
    per = []
    for i in range(60):
        per.append(
            {
                "condition": "full",
                "id": i,
                "complexity": "complex",
                "mentioned": ["a", "b"],
                "hallucinated": [],
                "objects": ["a", "b"],
            }
        )
        per.append(
            {
                "condition": "pruned",
                "id": i,
                "complexity": "complex",
                "mentioned": ["a"] if i % 2 else ["a", "b"],
                "hallucinated": [],
                "objects": ["a", "b"],
            }
        )
    d = TE.paired_bootstrap(per, "full", "pruned", "recall")
    assert d["delta"] == pytest.approx(-0.25) and d["significant"]
    same = TE.paired_bootstrap(per, "full", "full", "recall")
    assert same["delta"] == 0 and not same["significant"]


def test_object_hit_with_patch_lists():
    objs = [[0, 1, 24], [575]]
    assert TE.object_hit(objs, np.array([24, 7])) == (1, 2)
    assert TE.object_hit(objs, np.array([], dtype=int)) == (0, 2)


def test_evaluate_runs_every_condition_on_tiny_model(data, package):
    recs, store, tok = data
    m, _ = TT.ToyLlavaLM.from_package(package[1])
    conds = [
        TE.Condition("full", None, SIDE * SIDE),
        TE.Condition("FasterVLM-16", "FasterVLM", 16),
        TE.Condition("DivPrune-16", "DivPrune", 16),
    ]
    ev = TE.evaluate(m, tok, recs[:6], store, conds, prompt=PROMPT, max_new_tokens=6, progress=False)
    per = ev["per_image"]
    assert len(per) == 18 and {p["n_kept"] for p in per if p["condition"] != "full"} == {16}
    S = {(s["condition"], s["complexity"]): s for s in ev["summary"]}
    for c in conds:
        s = S[(c.name, "all")]
        assert 0 <= s["recall"] <= 1 and 0 <= s["chair_i"] <= 1 and 0 <= s["object_hit"] <= 1
        assert {"pope_random_acc", "degenerate_rate"} <= set(s)
    # a full-token condition keeps every patch of every object
    assert S[("full", "all")]["object_hit"] == 1.0
    # POPE accuracy (random setting) = matching answers among its negatives plus the image's positives
    qs = [
        q
        for p in per
        if p["condition"] == "full"
        for q in p["pope"]
        if q["type"] == "random" or (q["type"] == "positive" and q["truth"] == "yes")
    ]
    assert {q["truth"] for q in qs} == {"yes", "no"}
    assert S[("full", "all")]["pope_random_acc"] == pytest.approx(
        np.mean([(q["answer"] == "yes") == (q["truth"] == "yes") for q in qs])
    )


# ---- the committed model (slow: needs the DINOv2 tower and data/models/toyllava) ---------------------------------


def _committed_or_skip():
    d = T.default_dir("toyllava")
    if not (d / "model.safetensors").exists():
        pytest.skip(f"no committed ToyLLaVA at {d}; run make toy-model")
    from prunelab.models.dinov2 import converted_dir

    try:
        if not any(converted_dir().glob("*.safetensors")):
            pytest.skip("DINOv2 tower not built; run make assets")
    except Exception as err:  # noqa: BLE001 - any asset problem means: skip with the reason
        pytest.skip(f"DINOv2 tower unavailable ({err}); run make assets")
    return d


@pytest.mark.slow
def test_committed_model_hf_generate_matches_feature_path():
    """The assembled LlavaForConditionalGeneration (pixels -> tower -> projector -> LLM) gives the same greedy
    tokens as the trainer's path on features from prunelab.models.vision.encode_images."""
    d = _committed_or_skip()
    from prunelab.models.vision import encode_images
    from prunelab.toyworld import render, splits

    model, proc = T.load_toyllava(d)
    scene = splits.get_scene("test", 0)
    img = render(scene)
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROMPT}]}]
    inputs = proc(images=img, text=proc.apply_chat_template(msgs, add_generation_prompt=True), return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=20, do_sample=False)
    hf = out[0, inputs["input_ids"].shape[1] :].tolist()
    m2, tok = TT.ToyLlavaLM.from_package(d)
    f = encode_images([img], cache=False, progress=False).features[0].float()
    ours = TE.generate_descriptions(m2, tok, [m2.project(f)], PROMPT, max_new_tokens=20)[0]
    assert hf[: len(ours)] == ours


@pytest.mark.slow
def test_committed_eval_json_meets_reported_numbers():
    d = _committed_or_skip()
    ev = json.loads((d / "eval.json").read_text())
    card = (d / "MODEL_CARD.md").read_text()
    full = next(s for s in ev["summary"] if s["condition"] == "full" and s["complexity"] == "all")
    assert full["n_images"] == 400
    assert f"{full['recall']:.3f}" in card and f"{full['chair_i']:.3f}" in card


def test_loaded_model_has_initialised_rotary_buffers(data, package):
    """Non-persistent buffers are in no state dict: loading must compute them, not leave empty memory."""
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    model, _ = T.load_toyllava(package[1], with_tower=False)
    for name, buf in model.named_buffers():
        assert torch.isfinite(buf.float()).all(), name
    ref = LlamaRotaryEmbedding(model.config.text_config)
    assert torch.allclose(model.model.language_model.rotary_emb.inv_freq, ref.inv_freq)

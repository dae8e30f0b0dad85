"""ToyLLaVA training pipeline: toy-world data -> cached tower features -> projector+LLM training -> evaluation.

``python -m prunelab.train.toyllava train`` (``make toy-model``) runs every stage, each resumable:

1. **data**: the fixed seeded train/val/test splits of :mod:`prunelab.toyworld` (scenes, descriptions, POPE-style
   questions), rendered at 336 px;
2. **features**: the frozen DINOv2 tower (:func:`prunelab.models.vision.encode_images`) runs once per image; layer -2
   patch features (fp16) and the [CLS] attention row (fp32) are cached as ``.npy`` memmaps under
   ``cache_dir("toyllava", ...)``, filled batch by batch with a progress file, so an interrupted extraction
   continues where it stopped;
3. **training**: only the projector and the language model learn (LLaVA's stage-2 recipe without stage 1, since
   everything here is trained from scratch). Sequences mix descriptions (``DESCRIBE_PROMPT`` -> detailed
   description) and multi-turn yes/no dialogues about objects present and absent. bf16 autocast on CPU,
   AdamW + cosine schedule, embedding dropout, optional horizontal flip of the 24x24 token grid and, for the
   ``subset`` variant only, visual-token-subset augmentation (a random subset of the visual tokens, kept in
   raster order). Batches, dropout masks and augmentations are pure functions of ``(seed, step)``, so a run
   resumed from a checkpoint is bit-identical to an uninterrupted one;
4. **evaluation** on the test split at full tokens and at a pruned budget (FasterVLM, DivPrune): description
   object recall / precision / CHAIR, degenerate-description rate, share of ground-truth objects that keep a
   patch, POPE accuracy per negative type;
5. **package**: fp16 weights + tokenizer + processor + model card into ``data/models/<variant>/``.

Sizes (chosen for <= 90 min end to end on 2 CPU cores, see toy-model-probe.md) are in :class:`TrainConfig`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from prunelab.errors import AssetError, PrunelabError
from prunelab.models.toyllava import IMAGE_TOKEN, build_config, build_tokenizer, dialogue_ids, load_projector_lm
from prunelab.paths import atomic_write
from prunelab.train.toydata import (
    FeatureStore,
    Record,
    TrainConfig,
    all_texts,
    describe_prompt,
    extract_features,
    feature_dir,
    load_records,
    run_dir_of,
    timings_path,
    world_lexicon,
)
from prunelab.train.toyeval import default_conditions, evaluate, mention_parser, paired_bootstrap
from prunelab.train.toyreport import write_card

# ----------------------------------------------------------------------------------------------------------
# Model used for training (converted to a LlavaForConditionalGeneration when packaged)
# ----------------------------------------------------------------------------------------------------------


def _torch():
    import torch

    return torch


class ToyLlavaLM(_torch().nn.Module):
    """Projector + ``LlamaForCausalLM`` over cached tower features; the same computation as
    ``LlavaForConditionalGeneration`` with the tower's output given (image placeholders replaced in order by
    the projected rows), plus a fixed per-channel standardisation of the features that is folded into the
    projector on export."""

    def __init__(self, llava_config, feat_mean=None, feat_std=None, emb_dropout: float = 0.0):
        import torch
        from torch import nn
        from transformers import LlamaForCausalLM

        super().__init__()
        tc = llava_config.text_config
        d, c = tc.hidden_size, llava_config.vision_config.hidden_size
        self.config = llava_config
        self.register_buffer(
            "feat_mean", torch.zeros(c) if feat_mean is None else torch.as_tensor(feat_mean, dtype=torch.float32)
        )
        self.register_buffer(
            "feat_std", torch.ones(c) if feat_std is None else torch.as_tensor(feat_std, dtype=torch.float32)
        )
        self.linear_1 = nn.Linear(c, d)
        self.act = nn.GELU()
        self.linear_2 = nn.Linear(d, d)
        self.lm = LlamaForCausalLM(tc)
        self.emb_dropout = nn.Dropout(emb_dropout)
        self.image_token_id = llava_config.image_token_id

    def project(self, feats):
        """``(..., 384)`` raw layer -2 features -> ``(..., d)`` LLM input rows."""
        x = (feats.float() - self.feat_mean) / self.feat_std
        return self.linear_2(self.act(self.linear_1(x)))

    def embed(self, input_ids, projected):
        """Input embeddings with the image placeholders replaced, in order, by ``projected`` (B, n, d)."""
        emb = self.lm.get_input_embeddings()(input_ids)
        mask = input_ids == self.image_token_id
        if int(mask.sum()) != projected.shape[0] * projected.shape[1]:
            raise ValueError(
                f"{int(mask.sum())} image placeholders for {projected.shape[0] * projected.shape[1]} visual rows"
            )
        return emb.masked_scatter(mask.unsqueeze(-1), projected.to(emb.dtype))

    def forward(self, input_ids, feats, labels=None, weights=None, attention_mask=None):
        import torch

        emb = self.emb_dropout(self.embed(input_ids, self.project(feats)))
        hidden = self.lm.model(inputs_embeds=emb, attention_mask=attention_mask).last_hidden_state
        if labels is None:
            return self.lm.lm_head(hidden)
        tgt = labels[:, 1:]
        w = weights[:, 1:] if weights is not None else (tgt >= 0).float()
        # The LM head only where the loss has weight: ~90% of positions are image rows or prompt, and the
        # weighted sum over the other positions is zero anyway.
        sel = w > 0
        logits = self.lm.lm_head(hidden[:, :-1][sel]).float()
        ce = torch.nn.functional.cross_entropy(logits, tgt[sel].clamp_min(0), reduction="none")
        return (ce * w[sel]).sum() / w.sum().clamp_min(1e-6)

    def export_state(self) -> tuple[dict, dict]:
        """``(projector_sd, lm_sd)`` with the standardisation folded into ``linear_1`` (exact affine identity)."""

        w, b = self.linear_1.weight.detach().float(), self.linear_1.bias.detach().float()
        inv = 1.0 / self.feat_std
        w2 = w * inv[None, :]
        b2 = b - w2 @ self.feat_mean
        proj = {
            "linear_1.weight": w2,
            "linear_1.bias": b2,
            "linear_2.weight": self.linear_2.weight.detach().float(),
            "linear_2.bias": self.linear_2.bias.detach().float(),
        }
        lm = {k: v.detach().float() for k, v in self.lm.state_dict().items()}
        return proj, lm

    @classmethod
    def from_package(cls, path=None):
        """A trainer-side model holding a packaged model's weights (identity standardisation)."""
        cfg, tok, proj, lm = load_projector_lm(path)
        m = cls(cfg)
        m.linear_1.load_state_dict({"weight": proj["linear_1.weight"], "bias": proj["linear_1.bias"]})
        m.linear_2.load_state_dict({"weight": proj["linear_2.weight"], "bias": proj["linear_2.bias"]})
        lm.setdefault("lm_head.weight", lm["model.embed_tokens.weight"])
        m.lm.load_state_dict(lm)
        return m.eval(), tok


# ----------------------------------------------------------------------------------------------------------
# Training samples
# ----------------------------------------------------------------------------------------------------------


class SampleBuilder:
    """Token ids + loss weights of training dialogues, composed from per-turn pieces of the chat template."""

    def __init__(self, tokenizer, qa_weight: float = 1.0):
        self.tok = tokenizer
        self.qa_weight = qa_weight
        self.image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        self.eos_id = tokenizer.eos_token_id
        self._cache: dict[tuple[str, str, bool], tuple[list[int], list[int]]] = {}

    def turn(self, q: str, a: str, first: bool) -> tuple[list[int], list[int]]:
        """Ids/mask of one turn; the first turn includes ``<s>`` and the single ``<image>`` placeholder."""
        key = (q, a, first)
        if key not in self._cache:
            if first:
                self._cache[key] = dialogue_ids(self.tok, [(q, a)])
            else:
                # Second turn of a dialogue minus the first turn's prefix (the template is prefix-stable).
                ids1, _ = dialogue_ids(self.tok, [("x", "x")])
                ids2, m2 = dialogue_ids(self.tok, [("x", "x"), (q, a)])
                self._cache[key] = (ids2[len(ids1) :], m2[len(ids1) :])
        return self._cache[key]

    def dialogue(self, turns: Sequence[tuple[str, str]]) -> tuple[list[int], list[float]]:
        """Ids and loss weights of a dialogue; the answer tokens of yes/no turns (answer "Yes"/"No") get
        ``qa_weight``, those of other turns weight 1, so a description followed by questions weighs each turn right."""
        ids: list[int] = []
        w: list[float] = []
        for k, (q, a) in enumerate(turns):
            i, m = self.turn(q, a, first=(k == 0))
            ids += i
            w += [float(x) * (self.qa_weight if a in ("Yes", "No") else 1.0) for x in m]
        return ids, w


def _step_rng(seed: int, step: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, step, stream])


def batch_indices(seed: int, step: int, batch_size: int, n: int) -> np.ndarray:
    """Scene indices of ``step``: consecutive slices of per-epoch seeded permutations (a function of the step)."""
    out = []
    pos = step * batch_size
    while len(out) < batch_size:
        epoch, off = divmod(pos, n)
        perm = np.random.default_rng([seed, epoch, 7]).permutation(n)
        take = min(batch_size - len(out), n - off)
        out.extend(perm[off : off + take].tolist())
        pos += take
    return np.asarray(out)


def _balanced_turns(rng, pool, k: int) -> list[tuple[str, str]]:
    """``k`` distinct questions, half answered Yes and half No where the pool allows, in random order."""
    yes = [t for t in pool if t[1] == "Yes"]
    no = [t for t in pool if t[1] != "Yes"]
    ky = min(len(yes), k // 2 + int(rng.random() < 0.5) * (k % 2))
    kn = min(len(no), k - ky)
    ky = min(len(yes), k - kn)
    pick = [yes[int(i)] for i in rng.choice(len(yes), ky, replace=False)] + [
        no[int(i)] for i in rng.choice(len(no), kn, replace=False)
    ]
    return [pick[int(i)] for i in rng.permutation(len(pick))]


def make_batch(
    cfg: TrainConfig, step: int, records: Sequence[Record], store: FeatureStore, builder: SampleBuilder, prompt: str
):
    """The training batch of ``step``: tensors ``input_ids``, ``feats``, ``labels``, ``weights`` (right-padded).

    Right padding needs no attention mask: attention is causal, so padding after a sequence never reaches it.
    """
    import torch

    idx = batch_indices(cfg.seed, step, cfg.batch_size, len(records))
    rng = _step_rng(cfg.seed, step, 1)
    n_all = int(store.features.shape[1])  # 576 for the real tower; tests use fewer
    side = int(round(n_all**0.5))
    n_vis = n_all
    subset = cfg.p_subset > 0 and rng.random() < cfg.p_subset
    if subset:  # one size per batch keeps the image block aligned; positions stay contiguous
        n_vis = int(rng.integers(min(cfg.subset_min, n_all), min(cfg.subset_max, n_all) + 1))
    seqs, feats = [], []
    for i in idx:
        r = records[int(i)]
        if rng.random() < cfg.p_caption or not r.train_questions:
            turns = [(prompt, r.descriptions[int(rng.integers(len(r.descriptions)))])]
            if cfg.qa_after_caption and r.train_questions:
                turns += _balanced_turns(rng, r.train_questions, cfg.qa_after_caption)
        else:
            turns = _balanced_turns(rng, r.train_questions, cfg.qa_turns)
        seqs.append(builder.dialogue(turns))
        f = np.asarray(store.features[int(i)], dtype=np.float32)
        if rng.random() < cfg.p_flip:
            f = f.reshape(side, side, -1)[:, ::-1].reshape(n_all, -1)
        if subset:
            keep = np.sort(rng.choice(n_all, size=n_vis, replace=False))
            f = f[keep]
        feats.append(f)
    L = max(len(s) for s, _ in seqs) + n_vis - 1
    ids = torch.full((len(seqs), L), builder.tok.pad_token_id, dtype=torch.long)
    labels = torch.full((len(seqs), L), -100, dtype=torch.long)
    weights = torch.zeros((len(seqs), L))
    for b, (s, w) in enumerate(seqs):
        p = s.index(builder.image_id)
        full = s[:p] + [builder.image_id] * n_vis + s[p + 1 :]
        wf = w[:p] + [0.0] * n_vis + w[p + 1 :]
        ids[b, : len(full)] = torch.tensor(full)
        weights[b, : len(wf)] = torch.tensor(wf)
        lab = torch.tensor(full)
        lab[torch.tensor(wf) == 0] = -100
        labels[b, : len(full)] = lab
    return ids, torch.from_numpy(np.stack(feats)), labels, weights


# ----------------------------------------------------------------------------------------------------------
# Training loop with checkpoints
# ----------------------------------------------------------------------------------------------------------


def _lr_at(cfg: TrainConfig, step: int) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def feature_stats(store: FeatureStore, n: int = 256, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean/std of the features over ``n`` seeded training images (fixed standardisation)."""
    rng = np.random.default_rng([seed, 99])
    pick = np.sort(rng.choice(len(store), size=min(n, len(store)), replace=False))
    x = np.concatenate([np.asarray(store.features[int(i)], dtype=np.float64) for i in pick])
    return x.mean(0).astype(np.float32), (x.std(0) + 1e-4).astype(np.float32)


def new_model(cfg: TrainConfig, tokenizer, store: FeatureStore):
    import torch

    lcfg = build_config(
        tokenizer,
        hidden_size=cfg.hidden_size,
        num_layers=cfg.num_layers,
        num_heads=cfg.num_heads,
        intermediate_size=cfg.intermediate_size,
    )
    lcfg.text_config.attention_dropout = cfg.attn_dropout
    torch.manual_seed(cfg.seed)
    mean, std = feature_stats(store, seed=cfg.seed)
    model = ToyLlavaLM(lcfg, mean, std, emb_dropout=cfg.emb_dropout)
    if cfg.init_from:
        state = (
            torch.load(cfg.init_from, map_location="cpu", weights_only=False)
            if str(cfg.init_from).endswith(".pt")
            else None
        )
        if state is None:
            raise PrunelabError(
                f"init_from must be a trainer checkpoint (.pt), got {cfg.init_from}; pass the plain run's final.pt"
            )
        model.load_state_dict(state["model"])
    return model


def _optimizer(model, cfg: TrainConfig):
    import torch

    decay, no_decay = [], []
    for n, p in model.named_parameters():
        (no_decay if p.ndim < 2 or "norm" in n else decay).append(p)
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=(0.9, 0.98),
        eps=1e-8,
    )


def save_checkpoint(path: Path, model, opt, step: int, cfg: TrainConfig, history: list) -> None:
    import torch

    with atomic_write(path) as fh:
        torch.save(
            {
                "model": model.state_dict(),
                "optim": opt.state_dict(),
                "step": step,
                "config": cfg.to_json(),
                "history": history,
                "format": "toyllava-ckpt-1",
            },
            fh,
        )


def load_checkpoint(path: Path) -> dict:
    """Load a trainer checkpoint; a truncated or foreign file raises one clear :class:`AssetError`."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # torch raises RuntimeError/EOFError/UnpicklingError/... for damaged files
        raise AssetError(
            f"corrupt training checkpoint {path} ({type(err).__name__}); delete it to restart "
            f"from the previous one ({Path(path).with_name('prev.pt').name}) or from scratch"
        ) from None
    if not isinstance(state, dict) or state.get("format") != "toyllava-ckpt-1":
        raise AssetError(
            f"{path} is not a ToyLLaVA training checkpoint; delete it (or point --run-dir elsewhere) and rerun"
        )
    return state


def train(
    cfg: TrainConfig,
    records: Sequence[Record],
    store: FeatureStore,
    tokenizer,
    run_dir: Path,
    val: tuple[Sequence[Record], FeatureStore] | None = None,
    max_steps: int | None = None,
    progress: bool = True,
    prompt: str | None = None,
):
    """Train (or resume) in ``run_dir``; returns ``(model, history)``.

    Checkpoint ``run_dir/last.pt`` every ``ckpt_every`` steps (the previous one kept as ``prev.pt``). The step's
    batch, augmentation and dropout depend only on ``(seed, step)``, so resuming reproduces the uninterrupted
    run exactly. ``max_steps`` stops early (for tests and interruption drills) after writing a checkpoint.
    """
    import torch
    from tqdm.auto import tqdm

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(cfg.threads)
    logf = open(run_dir / "train.log", "a")
    model = new_model(cfg, tokenizer, store)
    opt = _optimizer(model, cfg)
    start, history = 0, []
    last = run_dir / "last.pt"
    if last.exists():
        st = load_checkpoint(last)
        if st["config"] != cfg.to_json():
            raise PrunelabError(
                f"checkpoint {last} was made with another configuration; use a new --run-dir or delete {run_dir}"
            )
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["optim"])
        start, history = int(st["step"]), list(st["history"])
        print(f"[toyllava] resuming {cfg.run_name()} at step {start}/{cfg.steps}", file=logf, flush=True)
    builder = SampleBuilder(tokenizer, cfg.qa_weight)
    prompt = prompt or describe_prompt()
    end = cfg.steps if max_steps is None else min(cfg.steps, max_steps)
    bar = tqdm(
        range(start, end),
        initial=start,
        total=cfg.steps,
        desc=f"train {cfg.run_name()}",
        disable=not progress,
        mininterval=10,
    )
    t_run = time.perf_counter()
    ema = None
    model.train()
    for step in bar:
        ids, feats, labels, weights = make_batch(cfg, step, records, store, builder, prompt)
        for g in opt.param_groups:
            g["lr"] = _lr_at(cfg, step)
        torch.manual_seed(cfg.seed * 1_000_003 + step)  # dropout masks depend on the step only
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
            loss = model(ids, feats, labels, weights)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        lv = float(loss.detach())
        if not math.isfinite(lv):
            raise PrunelabError(
                f"training diverged at step {step} (loss {lv}); lower --lr and restart with a new --run-dir"
            )
        ema = lv if ema is None else 0.98 * ema + 0.02 * lv
        rec = {
            "step": step + 1,
            "loss": round(lv, 5),
            "lr": _lr_at(cfg, step),
            "grad_norm": round(float(gn), 4),
            "sec": round(time.perf_counter() - t0, 4),
        }
        if val is not None and ((step + 1) % cfg.val_every == 0 or step + 1 == cfg.steps):
            rec["val_loss"] = round(validation_loss(model, cfg, val[0], val[1], builder, prompt), 5)
            model.train()
        history.append(rec)
        print(json.dumps(rec), file=logf, flush=(step + 1) % 50 == 0)
        bar.set_postfix(loss=f"{ema:.3f}", refresh=False)  # refresh=True would write a bar line every step
        if (step + 1) % cfg.ckpt_every == 0 or step + 1 == end:
            if last.exists():
                os.replace(last, run_dir / "prev.pt")
            save_checkpoint(last, model, opt, step + 1, cfg, history)
    bar.close()
    print(f"[toyllava] {end - start} steps in {time.perf_counter() - t_run:.1f} s", file=logf, flush=True)
    logf.close()
    model.eval()
    return model, history


def validation_loss(model, cfg: TrainConfig, records, store, builder, prompt, n_batches: int = 4) -> float:
    """Teacher-forced loss on fixed validation batches (full tokens, no augmentation)."""
    import torch

    vcfg = dataclasses.replace(cfg, p_flip=0.0, p_subset=0.0, seed=cfg.seed + 1000)
    model.eval()
    tot = 0.0
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
        for b in range(n_batches):
            ids, feats, labels, weights = make_batch(vcfg, b, records, store, builder, prompt)
            tot += float(model(ids, feats, labels, weights))
    return tot / n_batches


# ----------------------------------------------------------------------------------------------------------
# Pipeline: data -> features -> train -> package -> evaluate -> card
# ----------------------------------------------------------------------------------------------------------

#: Presets of the two documented models. ``toyllava-subset`` continues the plain model's final checkpoint with
#: visual-token-subset augmentation (toy-model-probe.md lesson 4); it is only trained if the plain model misses
#: the pruning-robustness bar.
VARIANTS: dict[str, dict] = {
    "toyllava": {},
    "toyllava-subset": {"p_subset": 0.5, "steps": 1200, "lr": 5e-4, "warmup": 50},
}


def _record_time(cfg: TrainConfig, stage: str, seconds: float) -> None:
    p = timings_path(cfg)
    t = json.loads(p.read_text()) if p.exists() else {}
    t[stage] = round(t.get(stage, 0.0) + seconds, 1)  # resumed stages add up
    with atomic_write(p, "w") as fh:
        json.dump(t, fh, indent=1)


def prepare_data(cfg: TrainConfig, progress: bool = True):
    """Records + feature stores of train/val/test (stages 1-2, resumable) and the tokenizer."""
    out = {}
    for split, n in (("train", cfg.n_train), ("val", cfg.n_val), ("test", cfg.n_test)):
        t0 = time.perf_counter()
        recs, scenes = load_records(
            split, n, n_descriptions=3 if split == "train" else 1, with_patches=split == "test", progress=progress
        )
        _record_time(cfg, f"data_{split}", time.perf_counter() - t0) if not feature_dir(split, n).joinpath(
            "meta.json"
        ).exists() else None
        t0 = time.perf_counter()
        already = feature_dir(split, n).joinpath("meta.json").exists()
        store = extract_features(split, scenes, [r.id for r in recs])
        if not already:
            _record_time(cfg, f"features_{split}", time.perf_counter() - t0)
        out[split] = (recs, store)
    tok = build_tokenizer(lexicon(out))
    return out, tok


def lexicon(splits: dict) -> list[str]:
    """Every text the toy world can say: its own lexicon when it exposes one, plus all split texts."""
    texts = [describe_prompt()] + world_lexicon()
    for recs, _ in splits.values():
        texts += all_texts(recs)
    return texts


def cmd_train(cfg: TrainConfig, progress: bool = True, out_dir: Path | None = None) -> Path:
    """The whole pipeline for one variant; returns the written model folder."""
    import torch

    from prunelab.models.toyllava import default_dir, write_package

    t_all = time.perf_counter()
    torch.set_num_threads(cfg.threads)
    data, tok = prepare_data(cfg, progress)
    if cfg.variant != "toyllava" and cfg.init_from is None:
        base = run_dir_of(
            dataclasses.replace(cfg, variant="toyllava", **{k: getattr(TrainConfig, k) for k in VARIANTS[cfg.variant]})
        )
        cfg = dataclasses.replace(cfg, init_from=str(base / "final.pt"))
        if not Path(cfg.init_from).exists():
            raise PrunelabError(
                f"{cfg.variant} starts from the plain model's checkpoint {cfg.init_from}, which is missing; run `python -m prunelab.train.toyllava train` first"
            )
    rd = run_dir_of(cfg)
    final = rd / "final.pt"
    if final.exists():
        st = load_checkpoint(final)
        model = new_model(cfg, tok, data["train"][1])
        model.load_state_dict(st["model"])
        model.eval()
        history = st["history"]
    else:
        t0 = time.perf_counter()
        model, history = train(cfg, data["train"][0], data["train"][1], tok, rd, val=data["val"], progress=progress)
        _record_time(cfg, "train", time.perf_counter() - t0)
        last = load_checkpoint(rd / "last.pt")
        if last["step"] == cfg.steps:
            with atomic_write(final) as fh:
                torch.save(
                    {
                        "model": model.state_dict(),
                        "step": cfg.steps,
                        "config": cfg.to_json(),
                        "history": history,
                        "format": "toyllava-ckpt-1",
                    },
                    fh,
                )
    out = Path(out_dir) if out_dir else default_dir(cfg.variant)
    proj, lm = model.export_state()
    write_package(out, tok, model.config, proj, lm)
    write_history(out, history)
    t0 = time.perf_counter()
    ev = cmd_eval(out, cfg, data["test"], progress=progress)
    _record_time(cfg, "eval", time.perf_counter() - t0)
    _record_time(cfg, "total_this_invocation", time.perf_counter() - t_all)
    write_card(out, cfg, history, ev)
    return out


def write_history(path, history: list, every: int = 5) -> Path:
    """``history.json`` next to the weights: every ``every``-th step plus every step with a validation loss (the
    training curve the book plots; the full log stays in the run directory)."""
    keep = [h for h in history if h["step"] % every == 0 or "val_loss" in h or h["step"] == 1]
    out = Path(path) / "history.json"
    with atomic_write(out, "w") as fh:
        json.dump([{k: h[k] for k in ("step", "loss", "lr", "val_loss") if k in h} for h in keep], fh)
    return out


def cmd_eval(path, cfg: TrainConfig, test=None, progress: bool = True) -> dict:
    """Evaluate the packaged (fp16) model at ``path`` on the test split; writes ``eval.json`` next to it."""
    import torch

    torch.set_num_threads(cfg.threads)
    model, tok = ToyLlavaLM.from_package(path)
    if test is None:
        recs, scenes = load_records("test", cfg.n_test, with_patches=True, progress=progress)
        test = (recs, extract_features("test", scenes, [r.id for r in recs]))
    recs, store = test
    res = evaluate(
        model, tok, recs, store, default_conditions(cfg), max_new_tokens=cfg.max_new_tokens, progress=progress
    )
    res["sensitivity"] = [
        paired_bootstrap(res["per_image"], "full", c.name, m)
        for c in default_conditions(cfg)[1:]
        for m in ("recall", "chair_i")
    ]
    res["config"] = cfg.to_json()
    res["mention_parser"] = mention_parser()[1]
    with atomic_write(Path(path) / "eval.json", "w") as fh:
        json.dump(res, fh, indent=1)
    return res


def cli(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m prunelab.train.toyllava", description=__doc__.split("\n\n")[0])
    ap.add_argument("command", choices=("train", "eval", "card"))
    ap.add_argument("--variant", default="toyllava", choices=sorted(VARIANTS))
    ap.add_argument("--out", default=None, help="model folder (default data/models/<variant>)")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--n-train", type=int, default=None)
    ap.add_argument("--n-test", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--quiet", action="store_true")
    a = ap.parse_args(argv)
    over = dict(VARIANTS[a.variant])
    for k in ("seed", "steps", "n_train", "n_test", "threads"):
        if getattr(a, k) is not None:
            over[k] = getattr(a, k)
    cfg = TrainConfig(variant=a.variant, **over)
    logging.basicConfig(level=logging.INFO, format="[toyllava] %(message)s")
    try:
        if a.command == "train":
            out = cmd_train(cfg, progress=not a.quiet, out_dir=a.out)
            print(f"[toyllava] wrote {out}")
        else:
            from prunelab.models.toyllava import default_dir

            out = Path(a.out) if a.out else default_dir(a.variant)
            if a.command == "eval":
                ev = cmd_eval(out, cfg, progress=not a.quiet)
            else:
                ev = json.loads((out / "eval.json").read_text())
            ck = (
                load_checkpoint(run_dir_of(cfg) / "final.pt")
                if (run_dir_of(cfg) / "final.pt").exists()
                else {"history": []}
            )
            if ck["history"]:
                write_history(out, ck["history"])
            write_card(out, cfg, ck["history"], ev)
            print(f"[toyllava] wrote {out / 'MODEL_CARD.md'}")
    except PrunelabError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0

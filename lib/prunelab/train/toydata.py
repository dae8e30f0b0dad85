"""ToyLLaVA's training data: the run configuration, toy-world records (the only place that knows
:mod:`prunelab.toyworld`'s interface) and the cached tower features (fp16 memmaps, filled batch by batch with a
progress file, so an interrupted extraction continues where it stopped). Used by :mod:`prunelab.train.toytrain`,
:mod:`prunelab.train.toyeval` and the ToyLLaVA-S trainer."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from prunelab import toyworld as tw
from prunelab.errors import PrunelabError
from prunelab.models.dinov2 import build_dinov2
from prunelab.models.vision import encode_images
from prunelab.paths import atomic_write, cache_dir
from prunelab.toyworld import categories as C, scenes as ts, splits, text as tt
from prunelab.toyworld.text import DESCRIBE_PROMPT

FEAT_DIM = 384
N_TOK = 576
GRID = 24

# ----------------------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------------------


#: The evaluation's per-condition metrics, as the model card and the report show them.
CARD_METRICS = [
    "recall",
    "precision",
    "chair_i",
    "chair_s",
    "degenerate_rate",
    "object_hit",
    "pope_random_acc",
    "pope_popular_acc",
    "pope_adversarial_acc",
    "pope_adversarial_yes_ratio",
]


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
    questions: list[tuple[str, str, str, str]] = field(
        default_factory=list
    )  # (question, answer, POPE setting, category)
    train_questions: list[tuple[str, str]] = field(default_factory=list)  # (question, answer) pool for training
    patches: list[list[int]] | None = None  # per object, the patches it covers (toyworld.scenes.patch_indices)


def describe_prompt() -> str:
    return DESCRIBE_PROMPT


def load_records(
    split: str, n: int | None = None, n_descriptions: int = 1, with_patches: bool = False, progress: bool = True
) -> tuple[list[Record], list[Any]]:
    """``(records, scenes)`` of the first ``n`` scenes of a toy-world split (:func:`prunelab.toyworld.splits.load_split`)."""
    from tqdm.auto import tqdm

    size = splits.SPLIT_SIZES[split]
    if n is not None and n > size:
        raise PrunelabError(
            f"toy-world split {split!r} has {size} scenes, fewer than the {n} asked; lower n_{split} to <= {size}"
        )
    scenes = list(splits.load_split(split, limit=n))
    recs = [
        _record_of(s, n_descriptions, with_patches)
        for s in tqdm(scenes, desc=f"toy world [{split}]", disable=not progress, mininterval=10)
    ]
    return recs, scenes


def _record_of(scene, n_descriptions: int, with_patches: bool) -> Record:
    yn = {"yes": "Yes", "no": "No"}
    qs = [
        (q["question"], yn[q["answer"]], q["setting"], q["object"])
        for st in tt.POPE_SETTINGS
        for q in tt.pope_questions(scene, st)
    ]
    # Training pool: the POPE-style questions of two more seeded draws as well, de-duplicated.
    pool = {(q, a) for q, a, *_ in qs}
    for v in (1, 2):
        pool.update((q["question"], yn[q["answer"]]) for q in tt.pope_questions(scene, "random", variant=v))
    return Record(
        id=scene.id,
        complexity=scene.complexity,
        objects=list(scene.categories),
        boxes=[(o.category, tuple(float(x) for x in o.box)) for o in scene.objects],
        descriptions=[tt.describe(scene, v) for v in range(n_descriptions)],
        questions=qs,
        train_questions=sorted(pool),
        patches=ts.patch_indices(scene) if with_patches else None,
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


def run_dir_of(cfg: TrainConfig) -> Path:
    """The cache folder of one training run (checkpoints, history, timings)."""
    return cache_dir("toyllava", "runs", cfg.run_name())


def timings_path(cfg: TrainConfig) -> Path:
    return run_dir_of(cfg) / "timings.json"

"""ToyLLaVA-S training data: toy-world records, cached tower features, patch labels and the ChatML dialogues.

Used by :mod:`prunelab.train.toyllava_s` (the stages) and :mod:`prunelab.train.toyllava_s_check` (validation).
Batches are a function of the seed, the stage and the step, so a resumed run sees exactly the batches an
uninterrupted run would.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np

from prunelab.models import toyllava_s as S
from prunelab.models.toyllava_s import image_token_id
from prunelab.toyworld import categories as C, text as tt
from prunelab.train import toydata as D, toytrain as T

N_TOK = 576


# ----------------------------------------------------------------------------------------------------------
# Data: toy-world records and cached tower features (shared with the scratch ToyLLaVA's trainer)
# ----------------------------------------------------------------------------------------------------------


def load_split(split: str, n: int, with_patches: bool = False, progress: bool = False):
    """``(records, store)`` of a split: texts and ground truth plus the DINOv2 features (extracted once, cached)."""
    recs, scenes = D.load_records(
        split, n, n_descriptions=3 if split == "train" else 1, with_patches=with_patches, progress=progress
    )
    ids = [r.id for r in recs]
    store = prefix_store(split, ids)
    if store is None:
        store = D.extract_features(split, scenes, ids)
    return recs, store


def prefix_store(split: str, ids: list[str]):
    """The first ``len(ids)`` rows of a larger extraction of ``split`` (finished, or in progress with at least
    that many rows done) whose ids start with ``ids``; ``None`` if there is none. Rows below the progress mark
    are final, so training can start while the tower still runs over the rest of the split."""
    n = len(ids)
    parent = D.feature_dir(split, n).parent
    for folder in sorted(parent.glob(f"{split}-*")):
        for name in ("meta.json", "progress.json"):
            try:
                rec = json.loads((folder / name).read_text())
            except (OSError, ValueError):
                continue
            done = len(rec["ids"]) if name == "meta.json" else int(rec.get("done", 0))
            if done >= n and rec["ids"][:n] == ids:
                feats = np.load(folder / "features.npy", mmap_mode="r")[:n]
                attn = np.load(folder / "cls_attention.npy", mmap_mode="r")[:n]
                return D.FeatureStore.from_arrays(feats, attn, ids)
    return None


def patch_labels(rec, n_classes_bg: int, class_of: dict[str, int]) -> np.ndarray:
    """Per patch, the class index of the object covering it (later objects drawn on top win), else background."""
    lab = np.full(N_TOK, n_classes_bg, dtype=np.int64)
    for (cat, _box), patches in zip(rec.boxes, rec.patches or []):
        lab[np.asarray(patches, dtype=np.int64)] = class_of[cat]
    return lab


def class_words() -> list[str]:
    return [c.name for c in C.CATEGORIES]


def class_vectors(lm, tokenizer, words: Sequence[str]):
    """Mean input embedding of each word's tokens (``" " + word``), plus `` background`` last."""
    import torch

    E = lm.get_input_embeddings().weight.detach().float()
    vecs = [
        E[torch.tensor(tokenizer(" " + w, add_special_tokens=False).input_ids)].mean(0) for w in [*words, "background"]
    ]
    return torch.stack(vecs)


# ----------------------------------------------------------------------------------------------------------
# Dialogues
# ----------------------------------------------------------------------------------------------------------

SYSTEM = S.SYSTEM


def _where(box) -> str:
    x = (box[0] + box[2]) / 2 / 336
    y = (box[1] + box[3]) / 2 / 336
    v = "top" if y < 1 / 3 else "bottom" if y > 2 / 3 else ""
    h = "left" if x < 1 / 3 else "right" if x > 2 / 3 else ""
    if not v and not h:
        return "in the center of the image"
    return f"in the {v + ' ' if v else ''}{h}{' part' if not h or not v else ''} of the image".replace("  ", " ")


def count_qa(rec, rng) -> tuple[str, str]:
    cats = sorted({c for c, _ in rec.boxes})
    cat = cats[int(rng.integers(len(cats)))]
    n = sum(1 for c, _ in rec.boxes if c == cat)
    # the category's first noun: its COCO name where it has a plural ("hair drier" / "hair driers")
    noun = C.BY_NAME[cat].nouns[0]
    singular, plural = noun.singular, noun.plural or noun.singular
    word = tt.NUMBERS[n] if n < len(tt.NUMBERS) else str(n)
    q = f"How many {plural} are there in the image?"
    return q, (f"There is {word} {singular}." if n == 1 else f"There are {word} {plural}.")


def where_qa(rec, rng) -> tuple[str, str]:
    singles = [(c, b) for c, b in rec.boxes if sum(1 for c2, _ in rec.boxes if c2 == c) == 1]
    if not singles:
        return count_qa(rec, rng)
    cat, box = singles[int(rng.integers(len(singles)))]
    return f"Where is the {cat} in the image?", f"The {cat} is {_where(box)}."


class Dialogues:
    """Token ids and answer masks of multi-turn ChatML dialogues with one ``<image>`` in the first user turn."""

    def __init__(self, tokenizer):
        self.tok = tokenizer
        self.image_id = image_token_id()
        self.eos = tokenizer.convert_tokens_to_ids("<|im_end|>")

    def _ids(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False).input_ids

    def build(self, turns: Sequence[tuple[str, str]]) -> tuple[list[int], list[int]]:
        """``(ids, mask)``: mask is 1 on answer tokens and the ``<|im_end|>`` closing each answer."""
        ids = self._ids(SYSTEM + "<|im_start|>user\n") + [self.image_id]
        mask = [0] * len(ids)
        for k, (q, a) in enumerate(turns):
            head = ("\n" if k == 0 else "<|im_start|>user\n") + q + "<|im_end|>\n<|im_start|>assistant\n"
            h = self._ids(head)
            ans = self._ids(a) + [self.eos]
            nl = self._ids("\n")
            ids += h + ans + nl
            mask += [0] * len(h) + [1] * len(ans) + [0] * len(nl)
        return ids, mask

    def prompt(self, question: str) -> list[int]:
        """The generation prompt for one question (what the processor's chat template gives, as ids)."""
        return S.prompt_ids(self.tok, question)


def dialogue_turns(rec, rng, cfg, stage: str) -> list[tuple[str, str]]:
    prompt = D.describe_prompt()
    turns = [(prompt, rec.descriptions[int(rng.integers(len(rec.descriptions)))])]
    if stage == "instruct":
        if rec.train_questions and cfg.qa_turns:
            turns += T._balanced_turns(rng, rec.train_questions, cfg.qa_turns)
        turns += [count_qa(rec, rng) for _ in range(cfg.count_turns)] if rec.boxes else []
        turns += [where_qa(rec, rng) for _ in range(cfg.where_turns)] if rec.boxes else []
        head, rest = turns[:1], turns[1:]
        turns = head + [rest[int(i)] for i in rng.permutation(len(rest))]
    return turns


def make_batch(cfg, stage: str, step: int, records, store, dia: Dialogues):
    """``(ids, feats, labels, attention_mask)`` of one step (right padding; a function of seed, stage and step)."""
    import torch

    idx = T.batch_indices(cfg.seed + (0 if stage == "pretrain" else 17), step, cfg.batch_size, len(records))
    rng = np.random.default_rng([cfg.seed, step, 3 if stage == "pretrain" else 5])
    seqs = [dia.build(dialogue_turns(records[int(i)], rng, cfg, stage)) for i in idx]
    n_vis = int(store.features.shape[1])
    L = max(len(s) for s, _ in seqs) + n_vis - 1
    ids = torch.full((len(seqs), L), dia.eos, dtype=torch.long)
    labels = torch.full((len(seqs), L), -100, dtype=torch.long)
    att = torch.zeros((len(seqs), L), dtype=torch.long)
    for b, (s, m) in enumerate(seqs):
        p = s.index(dia.image_id)
        full = s[:p] + [dia.image_id] * n_vis + s[p + 1 :]
        mf = m[:p] + [0] * n_vis + m[p + 1 :]
        t = torch.tensor(full)
        ids[b, : len(full)] = t
        att[b, : len(full)] = 1
        lab = t.clone()
        lab[torch.tensor(mf) == 0] = -100
        labels[b, : len(full)] = lab
    feats = torch.from_numpy(np.stack([np.asarray(store.features[int(i)], dtype=np.float32) for i in idx]))
    return ids, feats, labels, att


def embed(lm, projector, ids, feats, image_id: int):
    """Input embeddings with the projected image rows written at the ``<image>`` positions (row-major order)."""
    emb = lm.get_input_embeddings()(ids.clamp(max=lm.get_input_embeddings().num_embeddings - 1))
    vis = projector(feats).to(emb.dtype)
    mask = (ids == image_id).unsqueeze(-1)
    return emb.masked_scatter(mask, vis.reshape(-1, vis.shape[-1]))

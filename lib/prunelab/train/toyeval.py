"""ToyLLaVA's evaluation on cached tower features: greedy generation (the same computation as
``LlavaForConditionalGeneration.generate``), yes/no answers, object mentions (CHAIR-style), degenerate outputs,
kept-object hits, the per-condition evaluation (full tokens and pruned budgets) and its paired bootstrap."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from prunelab.errors import PrunelabError
from prunelab.eval.metrics import has_repeated_block
from prunelab.eval.stats import paired_ratio_diff
from prunelab.methods.base import VisualContext, prune
from prunelab.models.toyllava import IMAGE_TOKEN, prompt_ids
from prunelab.toyworld.text import mentioned_categories
from prunelab.train.toydata import N_TOK, FeatureStore, Record, TrainConfig, describe_prompt

log = logging.getLogger("prunelab.toytrain")

# ----------------------------------------------------------------------------------------------------------
# Generation on cached features (the same computation as LlavaForConditionalGeneration.generate)
# ----------------------------------------------------------------------------------------------------------


def _split_prompt(tokenizer, text: str) -> tuple[list[int], list[int]]:
    ids = prompt_ids(tokenizer, text)
    p = ids.index(tokenizer.convert_tokens_to_ids(IMAGE_TOKEN))
    return ids[:p], ids[p + 1 :]


def _embed_rows(model, pre: list[int], rows, post: list[int]):
    """``(B, len(pre)+n+len(post), d)`` input embeddings: text ids around ``rows`` (B, n, d) projected tokens."""
    import torch

    emb = model.lm.get_input_embeddings()
    b = rows.shape[0]
    e_pre = emb(torch.tensor(pre)).unsqueeze(0).expand(b, -1, -1)
    e_post = emb(torch.tensor(post)).unsqueeze(0).expand(b, -1, -1)
    return torch.cat([e_pre, rows.to(e_pre.dtype), e_post], dim=1)


def generate_descriptions(
    model, tokenizer, rows_list, prompt: str, max_new_tokens: int = 72, batch: int = 16, progress: bool = False
) -> list[list[int]]:
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
    chunks = [(n, idx[s : s + batch]) for n, idx in groups.items() for s in range(0, len(idx), batch)]
    for _n, idx in tqdm(chunks, desc="describe", disable=not progress, mininterval=10):
        with torch.inference_mode():
            emb = _embed_rows(model, pre, torch.stack([rows_list[i] for i in idx]), post)
            gen = model.lm.generate(
                inputs_embeds=emb,
                attention_mask=torch.ones(emb.shape[:2], dtype=torch.long),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=eos,
                pad_token_id=tokenizer.pad_token_id,
            )
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
    chunks = [idx[s : s + batch] for idx in keyed.values() for s in range(0, len(idx), batch)]
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
    return has_repeated_block(ids[:-1], min_repeats, max_period)


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
            _PARSER, _PARSER_NAME = (
                (lambda t: set(mentioned_categories(t))),
                "prunelab.toyworld.text.mentioned_categories",
            )
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
    return [Condition("full", None)] + [
        Condition(f"{m}-{cfg.eval_budget}", m, cfg.eval_budget) for m in cfg.eval_methods
    ]


def _rows_for(model, store: FeatureStore, i: int, cond: Condition):
    """``(projected rows the LLM receives, kept patch indices)`` of image ``i`` under ``cond``."""
    import torch

    f = torch.from_numpy(np.asarray(store.features[i], dtype=np.float32))
    if cond.method is None:
        with torch.no_grad():
            return model.project(f), np.arange(f.shape[0])
    ctx = VisualContext(
        features=f,
        cls_attention=torch.from_numpy(np.asarray(store.cls_attention[i], dtype=np.float32)),
        projector=model.project,
        image_id=store.ids[i],
    )
    res = prune(ctx, cond.method, cond.budget)
    with torch.no_grad():
        rows = res.output_tokens(ctx, "projected")
    return rows.float(), res.indices.numpy()


def evaluate(
    model,
    tokenizer,
    records: Sequence[Record],
    store: FeatureStore,
    conditions: Sequence[Condition],
    prompt: str | None = None,
    max_new_tokens: int = 72,
    progress: bool = True,
) -> dict:
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
            per_image.append(
                {
                    "condition": cond.name,
                    "id": rec.id,
                    "complexity": rec.complexity,
                    "description": text,
                    "mentioned": sorted(said),
                    "objects": sorted(gt),
                    "hallucinated": sorted(said - gt),
                    "degenerate": is_degenerate(gens[i], eos),
                    "n_tokens": int(len(gens[i])),
                    "object_hit": hits,
                    "n_objects": n_obj,
                    "n_kept": int(rows[i].shape[0]),
                    "pope": pope_by_img.get(i, []),
                }
            )
        rows_c = [p for p in per_image if p["condition"] == cond.name]
        for cx in ("simple", "complex", "all"):
            sel = [p for p in rows_c if cx == "all" or p["complexity"] == cx]
            if sel:
                summary.append(
                    {
                        "condition": cond.name,
                        "method": cond.method or "none",
                        "budget": cond.budget,
                        "complexity": cx,
                        **_summarise(sel),
                    }
                )
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


def paired_bootstrap(
    per_image: list[dict],
    cond_a: str,
    cond_b: str,
    metric: str,
    complexity: str = "complex",
    n_boot: int = 2000,
    seed: int = 0,
) -> dict:
    """Difference ``metric(b) - metric(a)`` on the same images with a 95% paired percentile-bootstrap interval
    (:func:`prunelab.eval.stats.paired_ratio_diff`, ``"percent"`` levels).

    ``metric``: ``recall`` or ``chair_i`` (ratio of sums, recomputed on each resample; denominator at least 1).
    """
    a = {
        p["id"]: p
        for p in per_image
        if p["condition"] == cond_a and (complexity == "all" or p["complexity"] == complexity)
    }
    b = {p["id"]: p for p in per_image if p["condition"] == cond_b and p["id"] in a}
    ids = sorted(b)
    if not ids:
        return {}

    def parts(p):
        said, hall, gt = len(p["mentioned"]), len(p["hallucinated"]), len(p["objects"])
        return (said - hall, gt) if metric == "recall" else (hall, said)

    A = np.array([parts(a[i]) for i in ids], dtype=float)
    B = np.array([parts(b[i]) for i in ids], dtype=float)
    # b first: the record reports metric(b) - metric(a); percent levels, a floor of one on the denominator and a
    # bootstrap even of one image reproduce the records written before the statistics module existed
    r = paired_ratio_diff(
        B[:, 0], B[:, 1], A[:, 0], A[:, 1], n_boot=n_boot, ci=0.95, seed=seed, levels="percent", den_floor=1.0, min_n=1
    )
    lo, hi = r.ci_low, r.ci_high
    return {
        "metric": metric,
        "from": cond_a,
        "to": cond_b,
        "complexity": complexity,
        "delta": r.diff,
        "ci95": [float(lo), float(hi)],
        "significant": bool(lo > 0 or hi < 0),
        "n_images": len(ids),
    }

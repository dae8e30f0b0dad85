"""Quick checks of a ToyLLaVA-S checkpoint during training and its model card (the study's calibration table
uses the study loop and the real methods; this is the trainer's own yardstick on the val split)."""

from __future__ import annotations

import numpy as np

from prunelab.errors import PrunelabError
from prunelab.train import toydata as D, toyeval as E
from prunelab.train.toyllava_s_data import N_TOK, Dialogues, embed

# ----------------------------------------------------------------------------------------------------------
# Validation during training (the study's calibration table uses the study loop and the real methods)
# ----------------------------------------------------------------------------------------------------------


def kept_rows(store, i: int, condition: str, budget: int, seed: int = 0) -> np.ndarray:
    """Raster-ordered rows kept for a quick check: ``all``, ``cls`` ([CLS]-attention top-k, FasterVLM's rule on
    the tower's attention) or ``random`` (seeded)."""
    if condition == "all":
        return np.arange(N_TOK)
    if condition == "cls":
        a = np.asarray(store.cls_attention[i], dtype=np.float64)
        return np.sort(np.argsort(-a, kind="stable")[:budget])
    if condition == "random":
        return np.sort(np.random.default_rng([seed, i]).choice(N_TOK, budget, replace=False))
    raise PrunelabError(f"unknown condition {condition!r}; use all, cls or random")


def _prompt_embeds(lm, proj, dia, question: str, feats, rows: np.ndarray):
    import torch

    ids = dia.prompt(question)
    p = ids.index(dia.image_id)
    full = torch.tensor([ids[:p] + [dia.image_id] * len(rows) + ids[p + 1 :]])
    f = torch.from_numpy(np.asarray(feats, dtype=np.float32)[rows][None])
    return embed(lm, proj, full, f, dia.image_id)[0]


def _left_pad(embs: list):
    import torch

    L = max(e.shape[0] for e in embs)
    out = torch.zeros(len(embs), L, embs[0].shape[1], dtype=embs[0].dtype)
    att = torch.zeros(len(embs), L, dtype=torch.long)
    for b, e in enumerate(embs):
        out[b, L - e.shape[0] :] = e
        att[b, L - e.shape[0] :] = 1
    return out, att


def validate(
    lm,
    tok,
    proj,
    recs,
    store,
    n: int = 24,
    conditions=(("all", 576), ("cls", 64)),
    max_new_tokens: int = 96,
    batch: int = 8,
    n_questions: int = 6,
) -> dict:
    """Recall / CHAIR_i / length / degenerate rate of descriptions and POPE accuracy (greedy yes/no) per condition
    on the first ``n`` records (val split), plus a few example descriptions."""
    import torch

    dia = Dialogues(tok)
    out = {}
    lm.eval()
    for cond, budget in conditions:
        per, examples = [], []
        with torch.inference_mode():
            for s in range(0, n, batch):
                idx = list(range(s, min(n, s + batch)))
                embs = [
                    _prompt_embeds(
                        lm, proj, dia, D.describe_prompt(), store.features[i], kept_rows(store, i, cond, budget)
                    )
                    for i in idx
                ]
                e, att = _left_pad(embs)
                gen = lm.generate(
                    inputs_embeds=e,
                    attention_mask=att,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    eos_token_id=dia.eos,
                    pad_token_id=dia.eos,
                    suppress_tokens=[dia.image_id],
                )
                for i, g in zip(idx, gen):
                    g = g.tolist()
                    g = g[: g.index(dia.eos) + 1] if dia.eos in g else g
                    text = tok.decode(g, skip_special_tokens=True)
                    said = E.objects_in(text)
                    gt = set(recs[i].objects)
                    per.append(
                        {
                            "recall": len(said & gt) / max(1, len(gt)),
                            "n_said": len(said),
                            "n_hall": len(said - gt),
                            "n_tokens": len(g),
                            "degenerate": E.is_degenerate(g, dia.eos),
                        }
                    )
                    if len(examples) < 3:
                        examples.append({"id": recs[i].id, "objects": sorted(gt), "text": text})
                # POPE: greedy first token, yes / no / other
                qs = [(i, q, a) for i in idx for q, a, *_ in recs[i].questions[:n_questions]]
                yes_id, no_id = (
                    tok("Yes", add_special_tokens=False).input_ids[0],
                    tok("No", add_special_tokens=False).input_ids[0],
                )
                answers = []
                for qs_b in (qs[k : k + 16] for k in range(0, len(qs), 16)):
                    e, att = _left_pad(
                        [
                            _prompt_embeds(lm, proj, dia, q, store.features[i], kept_rows(store, i, cond, budget))
                            for i, q, _ in qs_b
                        ]
                    )
                    nxt = lm(inputs_embeds=e, attention_mask=att).logits[:, -1].argmax(-1).tolist()
                    answers += [
                        ("yes" if t == yes_id else "no" if t == no_id else "other", a.lower())
                        for t, (_, _, a) in zip(nxt, qs_b)
                    ]
        said = sum(p["n_said"] for p in per)
        tp = sum(a == "yes" and t == "yes" for a, t in answers)
        fp = sum(a == "yes" and t == "no" for a, t in answers)
        fn = sum(a != "yes" and t == "yes" for a, t in answers)
        out[f"{cond}{budget}"] = {
            "recall": float(np.mean([p["recall"] for p in per])),
            "chair_i": sum(p["n_hall"] for p in per) / max(1, said),
            "length": float(np.mean([p["n_tokens"] for p in per])),
            "degenerate": float(np.mean([p["degenerate"] for p in per])),
            "pope_acc": float(np.mean([a == t for a, t in answers])),
            "pope_f1": 2 * tp / max(1, 2 * tp + fp + fn),
            "pope_yes": float(np.mean([a == "yes" for a, _ in answers])),
            "pope_other": float(np.mean([a == "other" for a, _ in answers])),
            "examples": examples,
        }
    return out


def write_card(meta: dict, validation: dict | None) -> str:
    """The model card (README.md of the package): what was trained, how long, and what the quick check measured."""
    cfg = meta["config"]
    h = meta["history"]
    lines = [
        "# ToyLLaVA-S (trained deltas)",
        "",
        "DINOv2-S/14 (frozen, 22 M) + 2-layer GELU projector (384 -> 576 -> 576) + SmolLM2-135M-Instruct (frozen, "
        "134.5 M) with LoRA on every decoder projection; see `prunelab.models.toyllava_s` and `prunelab.train.toyllava_s`.",
        "This folder holds only what training changed (`deltas.safetensors`: projector fp32, LoRA A/B fp16) and the build "
        "record (`toyllava_s.json`: configuration, stage, step, loss history); the loader assembles the rest from the "
        "pinned wheels.",
        "",
        f"Checkpoint: stage `{meta['stage']}`, step {meta['step']} of {cfg['instruct_steps']} "
        f"(batch {cfg['batch_size']}; {meta['step'] * cfg['batch_size']:,} stage-2 sequences), trained on "
        f"{cfg['n_train']:,} toy-world train scenes.",
        *(
            [
                "",
                f"Warm restarts at step {', '.join(map(str, meta['restarts']))}: the run went on from the packaged "
                "deltas (LoRA factors fp16-rounded, Adam moments reset, learning rate re-warmed over "
                f"{cfg['warmup']} steps), so it is not bit-identical to an uninterrupted run.",
            ]
            if meta.get("restarts")
            else []
        ),
        "",
        "| stage | what trains | steps | last loss | median s/step |",
        "|---|---|---|---|---|",
    ]
    for st, what in (
        ("align", "projector (patch -> word embedding)"),
        ("pretrain", "projector (LM frozen)"),
        ("instruct", f"projector + LoRA r={int(cfg['lora_rank'])}"),
    ):
        hist = h.get(st) or []
        if st == "align":
            lines.append(
                f"| {st} | {what} | {cfg['align_epochs']} epochs | "
                f"{hist[-1]['loss']:.3f} (val object-patch acc {hist[-1]['object_acc']:.3f}) | - |"
                if hist
                else f"| {st} | {what} | - | - | - |"
            )
            continue
        if hist:
            sec = float(np.median([x["seconds"] for x in hist]))
            lines.append(
                f"| {st} | {what} | {hist[-1]['step']} | {np.mean([x['loss'] for x in hist[-10:]]):.3f} | {sec:.1f} |"
            )
    lines += ["", "Timings: one torch thread on a 2-core CPU shared with other jobs (load 2-3); not a speed claim.", ""]
    if validation:
        lines += [
            "## Quick check on the val split (not the calibration table)",
            "",
            "| condition | recall | CHAIR_i | length | degenerate | POPE acc | POPE F1 | yes ratio |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for k, v in validation.items():
            if isinstance(v, dict) and "recall" in v:
                lines.append(
                    f"| {k} | {v['recall']:.3f} | {v['chair_i']:.3f} | {v['length']:.1f} | {v['degenerate']:.3f} | "
                    f"{v['pope_acc']:.3f} | {v['pope_f1']:.3f} | {v['pope_yes']:.3f} |"
                )
        lines += [
            "",
            "`all576` = every visual token; `cls64` = the 64 patches with the highest [CLS] attention of the "
            "tower (FasterVLM's rule). Calibration against LLaVA-1.5-7B on the test split is still to be measured.",
            "",
        ]
    return "\n".join(lines) + "\n"

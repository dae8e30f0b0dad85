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
from prunelab.models.toyllava import _resolve_dir, n_parameters  # noqa: F401 (n_parameters: shown by the book)
from prunelab.toyworld import scenes, splits
from prunelab.train.toydata import CARD_METRICS


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
    """The issue's quality bar as rows ``criterion, value, bar, pass`` (:func:`toytrain.quality_checks`)."""
    from prunelab.train.toydata import TrainConfig
    from prunelab.train.toytrain import quality_checks

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


def highlight(text: str, hallucinated, words_of=None) -> str:
    """HTML of ``text`` with every word of a hallucinated object (its surface forms as found by the CHAIR parser
    when ``words_of`` maps object -> words, else the object name itself) marked in red."""
    forms = set()
    for obj in hallucinated:
        forms |= set(words_of(obj) if words_of else [obj])
    out = []
    for tok in text.split(" "):
        core = tok.strip(".,;:!?").lower()
        esc = html.escape(tok)
        if core and (core in forms or core.rstrip("s") in forms):
            esc = f'<span style="color:#b00020;font-weight:bold">{esc}</span>'
        out.append(esc)
    return " ".join(out)


def example_outputs(ev: dict, n: int = 4, seed: int = 0, complexity: str | None = "complex") -> str:
    """HTML table: for ``n`` test scenes, the description under every evaluated condition, hallucinated object
    words in red, with the scene's true objects. Scenes chosen by a seeded shuffle, not by how they look."""
    import random

    per = pd.DataFrame(ev["per_image"])
    if complexity:
        per = per[per["complexity"] == complexity]
    ids = sorted(per["id"].unique())
    random.Random(seed).shuffle(ids)
    ids = sorted(ids[:n])
    conds = list(dict.fromkeys(per["condition"]))
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
            cells.append(f"<td>{highlight(r['description'], r['hallucinated'])}{flag}</td>")
        rows.append(f"<tr><td><b>{html.escape(i)}</b><br><small>{html.escape(truth)}</small></td>{''.join(cells)}</tr>")
    return f"<table><thead><tr><th>scene (true objects)</th>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


__all__ = [
    "load_eval",
    "load_history",
    "summary_table",
    "quality_table",
    "plot_history",
    "scene_sheet",
    "highlight",
    "example_outputs",
]

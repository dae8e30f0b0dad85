"""How an embedded model behaves under pruning next to LLaVA-1.5-7B: the calibration table (issue 12, item 4).

For a model and an image set (default: the committed toy-world test split), :func:`calibration_runs` generates
descriptions and POPE answers unpruned and under each calibration method at each budget (the study loop,
:func:`prunelab.study.generation.run_generation`), and :func:`calibration_table` reduces them to one row per
method x budget:

* ``POPE_F1`` (mean F1 over the three negative settings, the number LLaVA-1.5 reports as "POPE") and
  ``POPE_F1_adv`` (adversarial only), ``CHAIR_s``, ``CHAIR_i``, ``Recall``, ``Len`` (the paper's CHAIR layout,
  :func:`prunelab.study.scoring.chair_table`), ``degenerate`` (share of descriptions that hit the generation limit
  or loop, :func:`degenerate_rate`);
* ``<metric>_ret``: pruned / unpruned of the same model (the retention bars of issue 12);
* ``paper_<metric>``: LLaVA-1.5-7B's published number where the paper has it (``data/paper_results.csv``; a
  reference column, never our result), and its retention.

A method the model cannot run (an in-LLM layer schedule on a 2-layer decoder) gets a row with ``status`` saying why
and no numbers. :func:`paper_rank_agreement` is the Spearman correlation across methods between this model's POPE F1
and the paper's POPE at each budget.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from prunelab.errors import PrunelabError
from prunelab.eval.metrics import has_repeated_block
from prunelab.methods.base import paper_name
from prunelab.study.generation import run_generation
from prunelab.study.scoring import chair_table, pope_table
from prunelab.study.verdict import paper_pope, paper_results

#: The methods of the calibration table (issue 12): two pre-LLM families, the adaptive method, three in-LLM ones.
CALIBRATION_METHODS = ("FasterVLM", "DivPrune", "VisPruner", "AgilePruner", "FastV", "PDrop", "SparseVLM")
PAPER_MODEL = "llava-1.5-7b"
METRICS = ("POPE_F1", "POPE_F1_adv", "Recall", "CHAIR_i", "CHAIR_s", "Len", "degenerate")


def degenerate_rate(describe: pd.DataFrame, by: Sequence[str] = ("method", "budget")) -> pd.DataFrame:
    """Per group, the share of descriptions that are degenerate: they hit ``max_new_tokens`` (never ended) or some
    block of 1-8 words repeats three times back to back (:func:`prunelab.eval.metrics.has_repeated_block` on the
    whitespace words; the toy trainer applies the same rule to token ids)."""
    flag = describe["hit_max_new_tokens"].astype(bool) | describe["text"].map(
        lambda t: has_repeated_block(str(t).split())
    )
    return flag.groupby([describe[c] for c in by], sort=False).mean().rename("degenerate").reset_index()


def refusals(gm, methods: Sequence[str], budgets: Sequence[int]) -> dict[str, str]:
    """``{method: reason}`` for the methods this loaded model cannot run, found before anything runs: the family's
    own refusal (no [CLS] on Qwen2.5-VL) and the in-LLM layer schedules that do not fit the decoder (the method's
    :meth:`plan` raises, e.g. FastV K = 2 on ToyLLaVA's 2-layer decoder)."""
    from prunelab.methods.base import get_pruner

    adapter = gm.adapter
    refusal = getattr(adapter, "refusal", None)
    n_layers, n_img = len(adapter.parts.text_layers), gm.n_image_tokens
    out = {}
    for m in methods:
        p = get_pruner(m)
        why = refusal(p) if refusal is not None else None
        if why is None and getattr(p, "stage", "pre_llm") == "in_llm":
            try:
                for b in budgets:
                    p.plan(n_layers, n_img, int(b))
            except PrunelabError as err:
                why = str(err).splitlines()[0]
        if why:
            out[m] = why
    return out


def calibration_runs(
    model,
    *,
    image_set="toyworld:test",
    methods: Sequence[str] = CALIBRATION_METHODS,
    budgets: Sequence[int] = (64, 128),
    n: int | None = None,
    seed: int = 0,
    max_new_tokens: int | None = None,
    cache_dir=None,
    progress: bool | None = None,
    pope_prefix_cache: bool = True,
    describe_batch_size: int = 8,
    device: str = "auto",
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, str]]:
    """``(describe, pope, refused)``: the study loop's tables for the unpruned model and every method x budget
    the model can run (one call per task, so an image's descriptions are decoded together,
    ``describe_batch_size``), and ``{method: reason}`` for the methods it cannot (:func:`refusals`)."""
    from prunelab.models.loader import CHAIR_PROTOCOL_LIMIT, as_generation_model, description_limit

    gm = as_generation_model(model, device)
    if max_new_tokens is None:
        max_new_tokens = description_limit(model) if isinstance(model, str) else CHAIR_PROTOCOL_LIMIT
    refused = refusals(gm, methods, budgets)
    run = [None, *(m for m in methods if m not in refused)]
    kw = dict(n=n, seed=seed, cache_dir=cache_dir, progress=progress)
    desc = run_generation(
        gm,
        image_set,
        run,
        budgets,
        task="describe",
        max_new_tokens=max_new_tokens,
        describe_batch_size=describe_batch_size,
        **kw,
    )
    pope = run_generation(gm, image_set, run, budgets, task="pope", pope_prefix_cache=pope_prefix_cache, **kw)
    return desc, pope, refused


def _paper(method: str | None, budget: int, results: pd.DataFrame) -> dict:
    """LLaVA-1.5-7B's published numbers for one row (``method=None``: the unpruned model, 576 tokens)."""
    name = "Vanilla" if method is None else (paper_name(method) or method)
    tokens = 576 if method is None else int(budget)
    pope, _ = paper_pope(name, tokens, model=PAPER_MODEL, results=results)  # benchmarks table first
    out = {} if math.isnan(pope) else {"paper_POPE_F1": pope}
    res = results[(results["model"] == PAPER_MODEL) & (results["table"] == "chair")]
    sel = res[(res["method"] == name) & (res["visual_tokens"] == tokens)]
    for metric in ("CHAIR_i", "CHAIR_s", "Recall", "Len"):
        v = sel[sel["metric"] == metric]
        if len(v):
            out[f"paper_{metric}"] = float(v["value"].iloc[0])
    return out


def calibration_table(
    describe: pd.DataFrame, pope: pd.DataFrame, refused: dict[str, str] | None = None
) -> pd.DataFrame:
    """One row per method x budget (the unpruned model first, ``method = "Vanilla"``): our metrics, their
    retention against our unpruned row, the paper's numbers and their retention (see the module docstring)."""
    describe = describe.assign(method=describe["method"].fillna("Vanilla"))
    pope = pope.assign(method=pope["method"].fillna("Vanilla"))
    ch = chair_table(describe).set_index(["method", "budget"])[["CHAIR_s", "CHAIR_i", "Recall", "Len"]]
    deg = degenerate_rate(describe).set_index(["method", "budget"])
    pt = pope_table(pope)
    f1 = pt.groupby(["method", "budget"], sort=False)["F1"].mean().rename("POPE_F1")
    adv = pt[pt["setting"] == "adversarial"].set_index(["method", "budget"])["F1"].rename("POPE_F1_adv")
    t = ch.join(deg).join(f1).join(adv).reset_index()
    base = t[t["method"] == "Vanilla"]
    if len(base) != 1:
        raise PrunelabError(f"the calibration runs hold {len(base)} unpruned rows; run calibration_runs again")
    base = base.iloc[0]
    results = paper_results()
    ref = _paper(None, 576, results)
    rows = []
    for _, r in t.iterrows():
        vanilla = r["method"] == "Vanilla"
        row = {"method": r["method"], "budget": int(r["budget"]), "status": "ran"}
        row.update({m: float(r[m]) for m in METRICS})
        for m in METRICS:
            if m != "degenerate":
                row[f"{m}_ret"] = float(r[m]) / float(base[m]) if base[m] else np.nan
        paper = _paper(None if vanilla else r["method"], r["budget"], results)
        row.update(paper)
        for k, v in paper.items():
            if k in ref and ref[k]:
                row[f"{k}_ret"] = v / ref[k]
        rows.append(row)
    for m, why in (refused or {}).items():
        rows.append({"method": m, "budget": np.nan, "status": f"cannot run: {why}"})
    out = pd.DataFrame(rows)
    order = {m: i for i, m in enumerate(("Vanilla", *CALIBRATION_METHODS))}
    out = out.assign(_v=out["method"] != "Vanilla", _b=out["budget"].fillna(np.inf), _m=out["method"].map(order))
    return out.sort_values(["_v", "_b", "_m"], kind="stable").drop(columns=["_v", "_b", "_m"]).reset_index(drop=True)


def calibration_by_complexity(describe: pd.DataFrame, pope: pd.DataFrame, refused=None) -> pd.DataFrame:
    """:func:`calibration_table` for each scene complexity (``simple`` / ``complex``: the bars hold on both), each
    against its own unpruned row, stacked with a ``complexity`` column (``"all"`` for the whole set)."""
    parts = [calibration_table(describe, pope, refused).assign(complexity="all")]
    for c in sorted(describe["complexity"].dropna().unique()):
        parts.append(
            calibration_table(describe[describe["complexity"] == c], pope[pope["complexity"] == c]).assign(complexity=c)
        )
    return pd.concat(parts, ignore_index=True)


def paper_rank_agreement(table: pd.DataFrame, metric: str = "POPE_F1") -> pd.DataFrame:
    """Per budget, the Spearman correlation across the methods that ran between this model's ``metric`` and the
    paper's (``paper_<metric>``), with the number of methods; NaN with fewer than three."""
    from scipy.stats import spearmanr

    rows = []
    t = table[(table["method"] != "Vanilla") & (table["status"] == "ran")]
    for b, g in t.groupby("budget"):
        g = g.dropna(subset=[metric, f"paper_{metric}"])
        rho = spearmanr(g[metric], g[f"paper_{metric}"]).statistic if len(g) >= 3 else np.nan
        rows.append({"budget": int(b), "spearman": float(rho), "n_methods": len(g), "methods": ", ".join(g["method"])})
    return pd.DataFrame(rows)

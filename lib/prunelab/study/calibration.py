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

from collections.abc import Sequence

import numpy as np
import pandas as pd

from prunelab.errors import PrunelabError
from prunelab.eval.metrics import has_repeated_block
from prunelab.methods.base import paper_name
from prunelab.study.generation import run_generation
from prunelab.study.scoring import chair_table, pope_table
from prunelab.study.verdict import paper_results

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
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, str]]:
    """``(describe, pope, refused)``: the study loop's tables for the unpruned model and every method x budget,
    and ``{method: reason}`` for the methods this model cannot run (a one-line error of the method itself)."""
    kw = dict(n=n, seed=seed, cache_dir=cache_dir, progress=progress)
    desc, pope, refused = [], [], {}
    for m in (None, *methods):
        b = budgets if m is not None else budgets[:1]  # the unpruned model keeps every token whatever the budget
        try:
            d = run_generation(model, image_set, m, b, task="describe", max_new_tokens=max_new_tokens, **kw)
            p = run_generation(model, image_set, m, b, task="pope", pope_prefix_cache=pope_prefix_cache, **kw)
        except PrunelabError as err:
            if m is None:
                raise
            refused[m] = str(err).splitlines()[0]
            continue
        desc.append(d)
        pope.append(p)
    return pd.concat(desc, ignore_index=True), pd.concat(pope, ignore_index=True), refused


def _paper(method: str | None, budget: int) -> dict:
    res = paper_results()
    res = res[res["model"] == PAPER_MODEL]
    name = "Vanilla" if method is None else (paper_name(method) or method)
    tokens = 576 if method is None else int(budget)
    sel = res[(res["method"] == name) & (res["visual_tokens"] == tokens)]
    out = {}
    pope = sel[(sel["metric"] == "POPE") & sel["table"].isin(["benchmarks", "hybrid_enhancement"])]
    if len(pope):
        out["paper_POPE_F1"] = float(pope.sort_values("table")["value"].iloc[0])  # benchmarks first
    for metric in ("CHAIR_i", "CHAIR_s", "Recall", "Len"):
        v = sel[(sel["table"] == "chair") & (sel["metric"] == metric)]
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
    rows = []
    for _, r in t.iterrows():
        vanilla = r["method"] == "Vanilla"
        row = {"method": r["method"], "budget": int(r["budget"]), "status": "ran"}
        row.update({m: float(r[m]) for m in METRICS})
        for m in METRICS:
            if m != "degenerate":
                row[f"{m}_ret"] = float(r[m]) / float(base[m]) if base[m] else np.nan
        paper = _paper(None if vanilla else r["method"], r["budget"])
        ref = _paper(None, 576)
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

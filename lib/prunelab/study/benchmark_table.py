"""The paper's benchmark table (its Table 1 layout) from lmms-eval result files, beside the paper's own (issue 15).

Layout: one row per budget x method, one column per benchmark (VQAv2, GQA, VizWiz, SQA-IMG, TextVQA, POPE, MME,
MMB, MMB-CN), and ``Avg. retention %``: the mean over the row's benchmarks of value / unpruned value x 100 (the
paper's "Average%" column; computed over the benchmarks the row has, and named with how many).

* :func:`paper_table` — the paper's numbers (``data/paper_results.csv``, table ``benchmarks``) for one model.
* :func:`read_lmms_results` — every ``*_results.json`` lmms-eval wrote under a folder (``--output_path`` of runs with
  ``--model prunelab``): the method and budget come from the run's ``model_args``, the value of each task from the
  metric :data:`LMMS_TASKS` names for it. Task and metric names of lmms-eval's own benchmarks are [UNVERIFIED] here
  (their data are not on this machine): an unknown task is skipped with its name in ``attrs["skipped"]``.
* :func:`calibration_rows` — the toy world's POPE F1 from a calibration table (:mod:`prunelab.study.calibration`), in
  the same long format, for when no lmms-eval run exists.
* :func:`table1` — the wide table from the long rows.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from prunelab.study.verdict import paper_results

BENCHMARKS = ("VQAv2", "GQA", "VizWiz", "SQA-IMG", "TextVQA", "POPE", "MME", "MMB", "MMB-CN")
#: lmms-eval task -> (column, metric key prefix); the toy tasks are this project's (prunelab.lmms.tasks).
LMMS_TASKS = {
    "vqav2_val": ("VQAv2", "exact_match"),
    "gqa": ("GQA", "exact_match"),
    "vizwiz_vqa_val": ("VizWiz", "exact_match"),
    "scienceqa_img": ("SQA-IMG", "exact_match"),
    "textvqa_val": ("TextVQA", "exact_match"),
    "pope": ("POPE", "pope_f1_score"),
    "mme": ("MME", "mme_percetion_score"),
    "mmbench_en_dev": ("MMB", "gpt_eval_score"),
    "mmbench_cn_dev": ("MMB-CN", "gpt_eval_score"),
    "prunelab_pope_toy": ("POPE (toy world)", "pope_f1"),
}
UNPRUNED = "Vanilla"


def _model_args(text: str) -> dict[str, str]:
    out = {}
    for part in str(text or "").split(","):
        k, _, v = part.partition("=")
        if k.strip():
            out[k.strip()] = v.strip()
    return out


def read_lmms_results(root) -> pd.DataFrame:
    """Long rows ``model, method, budget, benchmark, value`` from lmms-eval's result files under ``root``."""
    rows, skipped = [], set()
    for f in sorted(Path(root).rglob("*_results.json")):
        res = json.loads(f.read_text())
        args = _model_args(res.get("config", {}).get("model_args", ""))
        method = args.get("method", "none")
        method = UNPRUNED if method.lower() in ("", "none", "vanilla") else method
        budget = int(args["budget"]) if args.get("budget") and method != UNPRUNED else 0
        for task, metrics in res.get("results", {}).items():
            if task not in LMMS_TASKS:
                skipped.add(task)
                continue
            col, prefix = LMMS_TASKS[task]
            vals = [v for k, v in metrics.items() if k.split(",")[0] == prefix and isinstance(v, (int, float))]
            if vals:
                scale = 100.0 if col != "MME" and float(vals[0]) <= 1.0 else 1.0
                rows.append(
                    dict(
                        model=args.get("pretrained", "?"),
                        method=method,
                        budget=budget,
                        benchmark=col,
                        value=float(vals[0]) * scale,
                    )
                )
    out = pd.DataFrame(rows, columns=["model", "method", "budget", "benchmark", "value"])
    out.attrs["skipped"] = sorted(skipped)
    return out


def paper_table(model: str = "llava-1.5-7b") -> pd.DataFrame:
    """The paper's benchmark table for ``model`` (long rows, as :func:`read_lmms_results` gives them)."""
    df = paper_results()
    df = df[(df["table"] == "benchmarks") & (df["model"] == model) & df["metric"].isin(BENCHMARKS)]
    out = df.rename(columns={"metric": "benchmark", "visual_tokens": "budget"})[
        ["model", "method", "budget", "benchmark", "value"]
    ]
    return out.assign(budget=[0 if m == UNPRUNED else int(b) for m, b in zip(out["method"], out["budget"])])


def calibration_rows(table: pd.DataFrame, model: str) -> pd.DataFrame:
    """POPE F1 (toy world) rows from a :func:`prunelab.study.calibration.calibration_table` (its ``all`` rows)."""
    t = table[(table.get("complexity", "all") == "all") & (table["status"] == "ran")]
    return pd.DataFrame(
        dict(
            model=model,
            method=t["method"].to_numpy(),
            budget=[0 if m == UNPRUNED else int(b) for m, b in zip(t["method"], t["budget"])],
            benchmark="POPE (toy world)",
            value=t["POPE_F1"].astype(float).to_numpy(),
        )
    )


def table1(long: pd.DataFrame) -> pd.DataFrame:
    """The wide table: rows ``budget, method`` (the unpruned row first, budget shown as ``all``), one column per
    benchmark present, and ``Avg. retention %`` over the row's benchmarks against the unpruned row."""
    if long.empty:
        return pd.DataFrame(columns=["budget", "method", "Avg. retention %"])
    cols = [b for b in (*BENCHMARKS, *sorted(set(long["benchmark"]) - set(BENCHMARKS))) if b in set(long["benchmark"])]
    wide = long.pivot_table(index=["budget", "method"], columns="benchmark", values="value", sort=False)[cols]
    base = wide.xs(0, level="budget").loc[UNPRUNED] if (0, UNPRUNED) in wide.index else None
    ret = []
    for _, r in wide.iterrows():
        if base is None:
            ret.append(math.nan)
            continue
        pairs = [(r[c], base[c]) for c in cols if pd.notna(r[c]) and pd.notna(base[c]) and base[c]]
        ret.append(100.0 * sum(v / b for v, b in pairs) / len(pairs) if pairs else math.nan)
    wide["Avg. retention %"] = ret
    wide = wide.reset_index()
    wide.columns.name = None
    wide["_u"] = wide["method"] != UNPRUNED
    wide = wide.sort_values(["_u", "budget"], kind="stable").drop(columns="_u").reset_index(drop=True)
    wide["budget"] = [("all" if m == UNPRUNED else str(b)) for m, b in zip(wide["method"], wide["budget"])]
    return wide

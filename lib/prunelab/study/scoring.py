"""Scoring the study loop's tables: CHAIR per caption and per method x budget (ratios of sums, as the reference
evaluator aggregates), POPE answers and metrics, paired CHAIR differences, and the caption highlighting the
chapters show. Scores are recomputed from the cached text on every call (fast, deterministic), so a change here
never needs a new generation.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import pandas as pd

from prunelab.errors import UnknownNameError
from prunelab.eval import stats as S
from prunelab.eval.chair import CaptionScore, ChairResult, combined_text_path, evaluate_chair
from prunelab.eval.mentions import CaptionParser, Mention, caption_spans, highlight_caption  # noqa: F401 (re-exported)
from prunelab.eval.pope import parse_yes_no, pope_metrics
from prunelab.study.paired import compare
from prunelab.study.plots import method_order

#: Columns :func:`score_chair` adds (``caption`` is the generated text).
CHAIR_COLUMNS = [
    "caption",
    "n_words",
    "length",
    "n_mentions",
    "n_hallucinated",
    "chair_s",
    "chair_i",
    "n_gt",
    "n_gt_covered",
    "recall",
    "mentioned",
    "hallucinated_words",
    "gt_objects",
    "recalled",
    "chair_tokens",
    "mentions",
    "hallucinated",
    "chair_flag",
    "chair_text_path",
]
#: Columns :func:`score_pope` adds.
POPE_COLUMNS = ["answer", "pred", "correct"]


# --------------------------------------------------------------------------------------------------------------
# Scoring


def score_chair(df: pd.DataFrame, ground_truth, parser=None) -> tuple[pd.DataFrame, dict]:
    """Add the per-caption CHAIR columns (:data:`CHAIR_COLUMNS`) to a describe table with
    :func:`prunelab.eval.chair.evaluate_chair` (``on_bad="flag"``: an empty caption is scored as the reference scores
    it — no mentions, zero length, its ground truth counted in Recall — and flagged ``empty_caption``).
    Returns ``(table, chair config)``."""
    parser = parser or CaptionParser()
    res = evaluate_chair(
        [(iid, str(t)) for iid, t in zip(df["image_id"], df["text"])], ground_truth, parser=parser, on_bad="flag"
    )
    out = df.copy()
    sc = res.captions
    out["caption"] = out["text"]
    out["n_words"] = [len(str(t).split()) for t in out["text"]]
    out["length"] = [c.length for c in sc]
    out["n_mentions"] = [c.n_mentions for c in sc]
    out["n_hallucinated"] = [c.n_hallucinated for c in sc]
    out["chair_s"] = [c.chair_s for c in sc]
    out["chair_i"] = [c.chair_i for c in sc]
    out["n_gt"] = [len(c.gt_objects) for c in sc]
    out["n_gt_covered"] = [len(c.recalled) for c in sc]
    out["recall"] = [c.recall for c in sc]
    out["mentioned"] = [[m.category for m in c.mentions] for c in sc]
    out["hallucinated_words"] = [[m.word for m in c.hallucinated] for c in sc]
    out["gt_objects"] = [list(c.gt_objects) for c in sc]
    out["recalled"] = [list(c.recalled) for c in sc]
    out["chair_tokens"] = [list(c.tokens) for c in sc]
    out["mentions"] = [[[m.word, m.category, m.index] for m in c.mentions] for c in sc]
    out["hallucinated"] = [[[m.word, m.category, m.index] for m in c.hallucinated] for c in sc]
    out["chair_flag"] = [c.flag for c in sc]
    out["chair_text_path"] = res.text_path  # "reference" | "fallback" (prunelab.eval.textproc)
    return out, res.config


def caption_scores(df: pd.DataFrame) -> list:
    """The :class:`prunelab.eval.chair.CaptionScore` of every row of a scored describe table, rebuilt exactly from its
    columns (also after :func:`prunelab.study.runner.save_table` and ``pd.read_csv``: list columns may be JSON text).
    Captions flagged ``not_a_string`` / ``no_ground_truth`` are ``included=False``, as in the evaluator."""

    def lst(v):
        return json.loads(v) if isinstance(v, str) else list(v)

    out = []
    for r in df.itertuples(index=False):
        flag = r.chair_flag if isinstance(r.chair_flag, str) and r.chair_flag else None
        out.append(
            CaptionScore(
                r.image_id,
                r.caption,
                tokens=lst(r.chair_tokens),
                mentions=[Mention(*m) for m in lst(r.mentions)],
                hallucinated=[Mention(*m) for m in lst(r.hallucinated)],
                gt_objects=lst(r.gt_objects),
                recalled=lst(r.recalled),
                flag=flag,
                included=flag not in ("not_a_string", "no_ground_truth"),
            )
        )
    return out


def _chair_metric_parts(metric: str) -> tuple[str, str | None]:
    parts = {
        "CHAIR_s": ("chair_s", None),
        "CHAIR_i": ("n_hallucinated", "n_mentions"),
        "Recall": ("n_gt_covered", "n_gt"),
        "Len": ("length", None),
    }
    if metric not in parts:
        raise UnknownNameError(f"unknown CHAIR metric {metric!r}; use one of {', '.join(parts)}")
    return parts[metric]


def chair_table(
    df: pd.DataFrame,
    by: Sequence[str] = ("method", "budget"),
    *,
    ci: float | None = None,
    n_boot: int = 2000,
    seed: int = 0,
) -> pd.DataFrame:
    """The paper's CHAIR layout per group of ``by`` (default method x budget; add ``"complexity"`` to split):
    ``CHAIR_s``, ``CHAIR_i``, ``Recall`` (x100) and ``Len`` (mean merged tokens), from
    :class:`prunelab.eval.chair.ChairResult` over the group's captions (ratios of sums, flagged captions excluded as the
    evaluator does), plus ``n_captions``, ``n_mentions``, ``family``. With ``ci`` (e.g. 0.95), seeded percentile
    bootstrap intervals over the group's captions (= images) for each metric (``<metric>_low/_high``). The last
    column, ``text_path``, says which CHAIR text path scored the group (also ``table.attrs["text_path"]``); a
    table not wholly on OPERA's reference path warns (:func:`prunelab.eval.chair.combined_text_path`)."""
    by = list(by)
    if "chair_s" not in df:
        raise UnknownNameError("the table has no CHAIR columns; pass the output of run_generation(task='describe')")
    rows = []
    for key, g in df.groupby(by, sort=False, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        res = ChairResult(caption_scores(g), {})
        s = res.summary(ndigits=None)
        row = {**dict(zip(by, key))}
        if "family" in g and "family" not in by:
            row["family"] = g["family"].iloc[0]
        row.update({m: s[m] for m in ("CHAIR_s", "CHAIR_i", "Recall", "Len")})
        row.update(n_captions=res.n_captions, n_mentions=res.n_mentions, n_hallucinated=res.n_hallucinated)
        if ci is not None:
            inc = g[g["chair_flag"].map(lambda f: f not in ("not_a_string", "no_ground_truth"))]
            for m in ("CHAIR_s", "CHAIR_i", "Recall", "Len"):
                num, den = _chair_metric_parts(m)
                _, lo, hi = S.ratio_ci(
                    inc[num].to_numpy(float), inc[den].to_numpy(float) if den else None, n_boot=n_boot, ci=ci, seed=seed
                )
                scale = 1.0 if m == "Len" else 100.0
                row[f"{m}_low"], row[f"{m}_high"] = lo * scale, hi * scale
        row["text_path"] = combined_text_path(g.get("chair_text_path", ()))
        rows.append(row)
    out = pd.DataFrame(rows)
    if "method" in by:
        rank = {m: i for i, m in enumerate(method_order(df))}
        out = out.sort_values(
            [c for c in ("budget", "method") if c in by] + [c for c in by if c not in ("budget", "method")],
            key=lambda c: c.map(rank) if c.name == "method" else c,
            kind="stable",
        ).reset_index(drop=True)
    out.attrs["text_path"] = combined_text_path(out["text_path"] if len(out) else (), warn="CHAIR table")
    return out


def paired_chair(df: pd.DataFrame, a: str, b: str, metric: str, **kw) -> pd.DataFrame:
    """Difference ``metric(a) - metric(b)`` between two methods on the same images, per group of ``by``, with a
    seeded paired bootstrap over images (both methods' captions of an image resampled together;
    :func:`prunelab.eval.stats.paired_ratio_diff`): :func:`prunelab.study.paired.compare` with ``flagged=True``
    (``kw``: its ``by``, ``n_boot``, ``ci``, ``seed``). ``metric`` (a CHAIR metric) is computed as CHAIR defines it
    (ratio of sums; x100 except Len) over every caption of the two methods, flagged ones included. Columns
    ``by + [a, b, value_a, value_b, diff, ci_low, ci_high, n]``."""
    _chair_metric_parts(metric)  # a CHAIR metric, or a clear error
    return compare(df, a, b, metric, flagged=True, **kw)


def score_pope(df: pd.DataFrame, parser: str = "reference") -> pd.DataFrame:
    """Add ``answer`` (the generated text), ``pred`` (:func:`prunelab.eval.pope.parse_yes_no`: ``"yes"``/``"no"``/None;
    default POPE's own rule, ``parser="robust"`` for the reading that can say "cannot tell") and ``correct``
    (``pred == label``; False when unparsed) to a POPE table."""
    out = df.copy()
    out["answer"] = out["text"]
    out["pred"] = [parse_yes_no(t, parser) for t in out["text"]]
    out["correct"] = [p == lab for p, lab in zip(out["pred"], out["label"])]
    return out


def pope_table(
    df: pd.DataFrame,
    by: Sequence[str] = ("method", "budget", "setting"),
    *,
    parser: str = "reference",
    on_unparsed: str = "exclude",
) -> pd.DataFrame:
    """POPE metrics per group (default method x budget x setting) with :func:`prunelab.eval.pope.pope_metrics` on the
    group's labels and generated answers: ``Accuracy``, ``Precision``, ``Recall``, ``F1``, ``Yes-ratio`` (x100),
    ``n``, ``n_unparsed``."""
    if "label" not in df:
        raise UnknownNameError("the table has no POPE columns; pass the output of run_generation(task='pope')")
    rows = []
    for key, g in df.groupby(list(by), sort=False, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        r = pope_metrics(list(g["label"]), list(g["text"]), parser=parser, on_unparsed=on_unparsed)
        rows.append({**dict(zip(by, key)), **r.summary(ndigits=None)})
    return pd.DataFrame(rows)


__all__ = [
    "CHAIR_COLUMNS",
    "POPE_COLUMNS",
    "score_chair",
    "caption_scores",
    "chair_table",
    "paired_chair",
    "score_pope",
    "pope_table",
    "caption_spans",
    "highlight_caption",
]

"""Computed verdict tables: does this run replicate the paper's claim?

Every finding notebook ends with a table whose rows are claims. A row holds the paper's number or direction, this
run's numbers, the rule (a sentence written next to the numbers, so a reader can check it) and an outcome that is
**computed** from checks on the data, never typed by hand:

* a :class:`Check` is one condition of a rule (e.g. "DivPrune, T=64, photos: mean erank ratio < 0.8") with the
  measured value, its confidence interval and whether it passes;
* a :class:`Claim` bundles the checks of one rule; its :attr:`Claim.outcome` is ``"replicates"`` when every
  evaluable check passes, ``"partly"`` when some do, ``"does not"`` when none does, and ``"not tested"`` when no
  check could be evaluated (e.g. a smoke run without the images a condition needs);
* :func:`verdict_table` turns claims into the table the notebook shows (and glues).

Conservative checks. With a confidence interval, :func:`check` compares the interval bound on the *far* side of
the threshold: ``value < t`` passes only if the CI's upper end is below ``t``, ``value > t`` only if its lower end is
above ``t``. So "replicates" means "replicates beyond sampling noise at this CI level".

Paper numbers: :func:`paper_results` reads ``data/paper_results.csv`` (transcribed from the paper; long format
``table, model, visual_tokens, method, metric, value``) and :func:`paper_value` picks one number from it.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from prunelab.errors import PrunelabError, UnknownNameError
from prunelab.paths import data_dir

#: The glue name under which every finding chapter stores its verdict table (:func:`prunelab.study.chapter.glue_verdict`);
#: ``prunelab.book.pages`` collects the tables glued under it into the "paper vs this study" page.
VERDICT_GLUE = "verdict_table"

OUTCOMES = ("replicates", "partly", "does not", "not tested")
_OPS = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}
VERDICT_COLUMNS = ["claim", "paper", "this run", "rule", "outcome", "checks passed"]


class VerdictError(PrunelabError, ValueError):
    """A verdict rule that cannot be evaluated as written."""


@dataclass(frozen=True)
class Check:
    """One condition of a rule, evaluated on this run's data.

    ``passed`` is ``None`` when the value is not finite (nothing measured for this condition).
    """

    condition: str
    value: float
    op: str
    threshold: float
    low: float | None = None
    high: float | None = None
    passed: bool | None = None

    def describe(self, fmt: str = "{:.3g}") -> str:
        """``"<condition>: <value> [<low>, <high>]"`` (CI shown when known)."""
        if not _finite(self.value):
            return f"{self.condition}: n/a"
        s = f"{self.condition}: {fmt.format(self.value)}"
        if _finite(self.low) and _finite(self.high):
            s += f" [{fmt.format(self.low)}, {fmt.format(self.high)}]"
        return s


def _finite(x) -> bool:
    try:
        return x is not None and math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def check(
    condition: str,
    value: float,
    op: str,
    threshold: float,
    *,
    ci: tuple[float, float] | None = None,
    conservative: bool = True,
) -> Check:
    """Evaluate ``value <op> threshold`` (``op`` in ``< <= > >=``).

    With ``ci=(low, high)`` and ``conservative`` (default), the CI bound on the far side of the threshold is
    compared instead of the point value (see module docstring). A non-finite value gives ``passed=None``.
    """
    if op not in _OPS:
        raise VerdictError(f"unknown comparison {op!r}; use one of {', '.join(_OPS)}")
    if not _finite(threshold):
        raise VerdictError(f"threshold of {condition!r} must be a finite number, got {threshold!r}")
    low, high = ci if ci is not None else (None, None)
    if not _finite(value):
        return Check(condition, float("nan"), op, float(threshold), low, high, None)
    probe = float(value)
    if ci is not None and conservative:
        bound = high if op in ("<", "<=") else low
        if _finite(bound):
            probe = float(bound)
    return Check(
        condition,
        float(value),
        op,
        float(threshold),
        None if low is None else float(low),
        None if high is None else float(high),
        bool(_OPS[op](probe, float(threshold))),
    )


def checks_from_summary(
    summary: pd.DataFrame,
    label: Sequence[str] | str,
    op: str,
    threshold: float,
    *,
    value: str = "mean",
    low: str = "ci_low",
    high: str = "ci_high",
    conservative: bool = True,
    template: str | None = None,
) -> list[Check]:
    """One :class:`Check` per row of a summary table (e.g. :func:`prunelab.study.analysis.summarize` output).

    ``label`` names the columns that identify a row (joined with ", " into the condition), or ``template`` is a
    format string over the row's columns (``"{method}, T={budget}, {image_set}"``). An empty summary (no rows,
    whatever its columns) gives no checks.
    """
    if summary.empty:
        return []
    cols = [label] if isinstance(label, str) else list(label)
    for c in cols + [value]:
        if c not in summary:
            raise VerdictError(f"summary has no column {c!r}; columns are {', '.join(map(str, summary.columns))}")
    out = []
    for _, r in summary.iterrows():
        cond = template.format(**r.to_dict()) if template else ", ".join(str(r[c]) for c in cols)
        ci = (r[low], r[high]) if low in summary and high in summary else None
        out.append(check(cond, r[value], op, threshold, ci=ci, conservative=conservative))
    return out


def outcome(checks: Iterable[Check]) -> str:
    """``replicates`` (all evaluable checks pass), ``partly`` (some), ``does not`` (none), ``not tested`` (no
    evaluable check)."""
    done = [c.passed for c in checks if c.passed is not None]
    if not done:
        return "not tested"
    if all(done):
        return "replicates"
    if any(done):
        return "partly"
    return "does not"


@dataclass
class Claim:
    """One row of a verdict table.

    claim: the paper's claim in a few words; paper: its number or direction (as the paper states it);
    rule: how this run decides, as a sentence; checks: the evaluated conditions; this_run: a short summary of
    this run's numbers (default: the checks' values, ``"; "``-joined).
    """

    claim: str
    paper: str
    rule: str
    checks: list[Check] = field(default_factory=list)
    this_run: str | None = None
    fmt: str = "{:.3g}"

    @property
    def outcome(self) -> str:
        return outcome(self.checks)

    @property
    def n_passed(self) -> str:
        done = [c for c in self.checks if c.passed is not None]
        return f"{sum(c.passed for c in done)}/{len(done)}"

    def summary(self) -> str:
        if self.this_run is not None:
            return self.this_run
        return "; ".join(c.describe(self.fmt) for c in self.checks) or "n/a"

    def row(self) -> dict[str, str]:
        return {
            "claim": self.claim,
            "paper": self.paper,
            "this run": self.summary(),
            "rule": self.rule,
            "outcome": self.outcome,
            "checks passed": self.n_passed,
        }


def verdict_table(claims: Sequence[Claim]) -> pd.DataFrame:
    """The verdict table (columns :data:`VERDICT_COLUMNS`), one row per claim, outcomes computed."""
    if not claims:
        raise VerdictError("a verdict table needs at least one claim")
    return pd.DataFrame([c.row() for c in claims], columns=VERDICT_COLUMNS)


def checks_table(claims: Sequence[Claim]) -> pd.DataFrame:
    """Every check of every claim (for an appendix): claim, condition, value, CI, comparison, passed."""
    rows = []
    for c in claims:
        for k in c.checks:
            rows.append(
                {
                    "claim": c.claim,
                    "condition": k.condition,
                    "value": k.value,
                    "ci_low": k.low,
                    "ci_high": k.high,
                    "test": f"{k.op} {k.threshold:g}",
                    "passed": k.passed,
                }
            )
    return pd.DataFrame(rows, columns=["claim", "condition", "value", "ci_low", "ci_high", "test", "passed"])


OUTCOME_COLOURS = {"replicates": "#d9f0d3", "partly": "#fee8c8", "does not": "#f4cccc", "not tested": "#eeeeee"}


def style_verdict(table: pd.DataFrame):
    """A pandas Styler of a verdict table: outcome cells coloured, text left-aligned, no index, cell text
    HTML-escaped (rules hold ``<`` and ``>``)."""

    def colour(v):
        return f"background-color: {OUTCOME_COLOURS.get(v, '')}; font-weight: bold" if v in OUTCOME_COLOURS else ""

    return (
        table.style.hide(axis="index")
        .format(escape="html")
        .map(colour, subset=["outcome"])
        .set_properties(**{"text-align": "left", "white-space": "normal"})
    )


def summary_line(claims: Sequence[Claim]) -> str:
    """``"2 of 4 claims replicate, 1 partly, 1 does not"`` -- for gluing into the prose."""
    counts = {o: sum(c.outcome == o for c in claims) for o in OUTCOMES}
    parts = [f"{counts['replicates']} of {len(claims)} claims replicate"]
    if counts["partly"]:
        parts.append(f"{counts['partly']} partly")
    if counts["does not"]:
        parts.append(f"{counts['does not']} does not" if counts["does not"] == 1 else f"{counts['does not']} do not")
    if counts["not tested"]:
        parts.append(f"{counts['not tested']} not tested")
    return ", ".join(parts)


# --------------------------------------------------------------------------------------------------------------
# The paper's numbers


def paper_results(path: str | Path | None = None) -> pd.DataFrame:
    """The paper's published numbers (``data/paper_results.csv``), long format."""
    p = Path(path) if path is not None else data_dir() / "paper_results.csv"
    if not p.is_file():
        raise UnknownNameError(f"paper results file {p} is missing; restore data/paper_results.csv from git")
    return pd.read_csv(p)


def paper_value(
    table: str,
    method: str,
    metric: str,
    *,
    visual_tokens: int | None = None,
    model: str = "llava-1.5-7b",
    results: pd.DataFrame | None = None,
) -> float:
    """One published number; :class:`VerdictError` if it is absent or ambiguous."""
    df = paper_results() if results is None else results
    sel = (df["table"] == table) & (df["method"] == method) & (df["metric"] == metric) & (df["model"] == model)
    if visual_tokens is not None:
        sel &= df["visual_tokens"] == visual_tokens
    hits = df[sel]
    if len(hits) != 1:
        raise VerdictError(
            f"paper_results has {len(hits)} rows for table={table}, method={method}, metric={metric}, "
            f"visual_tokens={visual_tokens}, model={model}; pass filters that select exactly one"
        )
    return float(hits["value"].iloc[0])


__all__ = [
    "VERDICT_GLUE",
    "OUTCOMES",
    "VERDICT_COLUMNS",
    "VerdictError",
    "Check",
    "check",
    "checks_from_summary",
    "outcome",
    "Claim",
    "verdict_table",
    "checks_table",
    "style_verdict",
    "summary_line",
    "paper_results",
    "paper_value",
]

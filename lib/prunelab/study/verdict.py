"""Computed verdict tables: does this run replicate the paper's claim?

Every finding notebook ends with a table whose rows are claims. A row holds the paper's number or direction, this
run's effects with their confidence intervals (each beside the paper's effect on the same scale where the paper
gives one), an outcome **computed** from checks on the data (never typed by hand), the number of images that would
resolve an open check, and the rule (a sentence written next to the numbers, so a reader can check it).

* a :class:`Check` is one condition of a rule (e.g. "DivPrune − FasterVLM, T=64: CHAIR_s difference > 0") with the
  measured effect, its confidence interval, the number of images behind it and the paper's effect;
* a :class:`Claim` bundles the checks of one rule; :attr:`Claim.outcome` aggregates theirs;
* :func:`verdict_table` turns claims into the table the notebook shows (and glues).

**Outcome of a check** (:attr:`Check.outcome`), from where its CI lies relative to the threshold ``t`` of
``effect <op> t``:

* ``replicates``: the whole CI lies on the claimed side (``effect > t`` needs the CI's lower end above ``t``), so
  the claim holds beyond sampling noise at this CI level;
* ``same direction, not resolved``: the point estimate lies on the claimed side but the CI crosses ``t``;
* ``opposite direction, not resolved``: the point estimate lies on the other side, the CI crosses ``t``;
* ``contradicts``: the whole CI lies on the other side;
* ``not testable here``: nothing was measured (a non-finite effect, e.g. a smoke run without the images a
  condition needs).

A check without a CI (or with a non-finite end) is decided by its point value, as a zero-width interval: it can
replicate or contradict but never be "not resolved".

**Images to resolve** (:attr:`Check.n_needed`). An open check measured on ``n`` images, with the half of its CI that
faces the threshold ``w`` wide (``effect − low`` when the effect lies above ``t``, ``high − effect`` when below),
resolves when that half shrinks below the distance ``|effect − t|``. Assuming the CI shrinks as ``1/√n`` (bootstrap
and normal intervals of a mean both do) and the effect stays where it is observed::

    n_needed = max(n + 1, ceil(n · (w / |effect − t|)²))

It is a planning figure, not a promise: the next images move the effect too.

**Outcome of a claim** (:func:`outcome`), over its evaluable checks (those not "not testable here"), in this order:

1. none evaluable → ``not testable here``;
2. all replicate → ``replicates``;
3. some replicate and some contradict → ``mixed``;
4. some contradict (and none replicates) → ``contradicts``: the claims are universal ("for every method and
   budget"), so one condition resolved against the claim, with none resolved for it, settles it;
5. every point estimate on the claimed side (some not resolved) → ``same direction, not resolved``;
6. every point estimate on the other side (none resolved) → ``opposite direction, not resolved``;
7. otherwise (point estimates on both sides, nothing contradicts) → ``mixed``.

A claim's :attr:`Claim.n_needed` is the largest ``n_needed`` of its open checks when the claim is "not resolved"
(every condition must resolve for the claim to).

**Setup checks.** A claim that holds *by construction* of this study's data or methods (``by_construction=True``
with a one-sentence ``reason``) is still evaluated and shown, as a check of the setup, but is not counted in
:func:`summary_line` and is listed after the counted claims in :func:`verdict_table`.

Paper numbers: :func:`paper_results` reads ``data/paper_results.csv`` (transcribed from the paper; long format
``table, model, visual_tokens, method, metric, value``) and :func:`paper_value` picks one number from it.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import pandas as pd

from prunelab.errors import PrunelabError, UnknownNameError
from prunelab.paths import data_dir

#: The glue name under which every finding chapter stores its verdict table (:func:`prunelab.study.chapter.glue_verdict`);
#: ``prunelab.book.pages`` collects the tables glued under it into the "paper vs this study" page.
VERDICT_GLUE = "verdict_table"

REPLICATES = "replicates"
SAME = "same direction, not resolved"
OPPOSITE = "opposite direction, not resolved"
CONTRADICTS = "contradicts"
MIXED = "mixed"
NOT_TESTABLE = "not testable here"
#: Outcomes of one check.
CHECK_OUTCOMES = (REPLICATES, SAME, OPPOSITE, CONTRADICTS, NOT_TESTABLE)
#: Outcomes of a claim (its checks' outcomes plus ``mixed``), in the order :func:`summary_line` lists them.
OUTCOMES = (REPLICATES, SAME, OPPOSITE, CONTRADICTS, MIXED, NOT_TESTABLE)
#: The outcome cell of a setup check (a claim that holds by construction) starts with this.
SETUP_PREFIX = "setup check: "
#: What each outcome means, in a few words (for legends: :func:`outcome_legend`).
OUTCOME_MEANINGS = {
    REPLICATES: "the whole CI lies on the claimed side",
    SAME: "the effect points the claimed way but the CI crosses the threshold; *n to resolve* gives the images "
    "that would settle it at the observed effect",
    OPPOSITE: "the effect points the other way, the CI crosses the threshold",
    CONTRADICTS: "the whole CI lies on the other side",
    MIXED: "some conditions go for the claim, some against it",
    NOT_TESTABLE: "this run measured nothing the rule needs",
}
_UNRESOLVED = (SAME, OPPOSITE)
_OPS = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}
VERDICT_COLUMNS = ["claim", "paper", "this run", "outcome", "n to resolve", "checks", "rule"]
CHECK_COLUMNS = [
    "claim",
    "condition",
    "value",
    "ci_low",
    "ci_high",
    "paper",
    "n",
    "test",
    "outcome",
    "n to resolve",
    "setup check",
]


class VerdictError(PrunelabError, ValueError):
    """A verdict rule that cannot be evaluated as written."""


def _finite(x) -> bool:
    try:
        return x is not None and math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


@dataclass(frozen=True)
class Check:
    """One condition of a rule, evaluated on this run's data.

    ``value``: the effect; ``low``/``high``: its CI; ``n``: the images behind it; ``paper_effect``: the paper's
    effect on the same scale (``None`` where the paper gives no number). ``passed`` is ``True`` when the check
    replicates, ``False`` when it is evaluable but does not, ``None`` when nothing was measured.
    """

    condition: str
    value: float
    op: str
    threshold: float
    low: float | None = None
    high: float | None = None
    passed: bool | None = None
    n: int | None = None
    paper_effect: float | None = None

    def _holds(self, x: float) -> bool:
        return bool(_OPS[self.op](x, self.threshold))

    def _ends(self) -> tuple[float, float]:
        if _finite(self.low) and _finite(self.high):
            return float(self.low), float(self.high)
        return self.value, self.value

    @property
    def outcome(self) -> str:
        """One of :data:`CHECK_OUTCOMES` (module docstring)."""
        if not _finite(self.value):
            return NOT_TESTABLE
        lo, hi = self._ends()
        ends = [self._holds(lo), self._holds(hi)]  # the ops are monotone: both ends on a side = the whole CI
        if all(ends):
            return REPLICATES
        if not any(ends):
            return CONTRADICTS
        return SAME if self._holds(self.value) else OPPOSITE

    @property
    def n_needed(self) -> int | None:
        """Images that would resolve an open check at the observed effect (module docstring); ``None`` when the
        check is resolved or untestable, its ``n`` is unknown, or the effect sits on the threshold."""
        if self.outcome not in _UNRESOLVED or not _finite(self.n) or int(self.n) < 1:
            return None
        lo, hi = self._ends()
        gap = abs(self.value - self.threshold)
        if gap == 0:
            return None
        w = self.value - lo if self.value > self.threshold else hi - self.value
        n = int(self.n)
        # rounded first so that float noise (0.2 / 0.1 = 2.0000000000000004) does not add an image
        return max(n + 1, math.ceil(round(n * (w / gap) ** 2, 9)))

    def describe(self, fmt: str = "{:.3g}") -> str:
        """``"<condition>: <value> [<low>, <high>], paper <p>"`` (CI and paper effect shown when known)."""
        if not _finite(self.value):
            return f"{self.condition}: n/a"
        s = f"{self.condition}: {fmt.format(self.value)}"
        if _finite(self.low) and _finite(self.high):
            s += f" [{fmt.format(self.low)}, {fmt.format(self.high)}]"
        if _finite(self.paper_effect):
            s += f", paper {fmt.format(self.paper_effect)}"
        return s


def check(
    condition: str,
    value: float,
    op: str,
    threshold: float,
    *,
    ci: tuple[float, float] | None = None,
    n: int | None = None,
    paper_effect: float | None = None,
) -> Check:
    """Evaluate ``value <op> threshold`` (``op`` in ``< <= > >=``) with its CI ``(low, high)``, on ``n`` images,
    next to the paper's ``paper_effect`` (module docstring for the outcome). A non-finite value gives ``passed=None``
    ("not testable here")."""
    if op not in _OPS:
        raise VerdictError(f"unknown comparison {op!r}; use one of {', '.join(_OPS)}")
    if not _finite(threshold):
        raise VerdictError(f"threshold of {condition!r} must be a finite number, got {threshold!r}")
    low, high = ci if ci is not None else (None, None)
    k = Check(
        condition,
        float(value) if _finite(value) else float("nan"),
        op,
        float(threshold),
        None if low is None else float(low),
        None if high is None else float(high),
        None,
        int(n) if _finite(n) else None,
        round(float(paper_effect), 9) if _finite(paper_effect) else None,  # 57.4 − 45.4 = 12.0, not 12.000000000000007
    )
    return replace(k, passed=None if k.outcome == NOT_TESTABLE else k.outcome == REPLICATES)


def checks_from_summary(
    summary: pd.DataFrame,
    label: Sequence[str] | str,
    op: str,
    threshold: float,
    *,
    value: str = "mean",
    low: str = "ci_low",
    high: str = "ci_high",
    n: str | Sequence[str] = "n",
    paper: str | None = None,
    template: str | None = None,
) -> list[Check]:
    """One :class:`Check` per row of a summary table (e.g. :func:`prunelab.study.analysis.summarize` output).

    ``label`` names the columns that identify a row (joined with ", " into the condition), or ``template`` is a
    format string over the row's columns (``"{method}, T={budget}, {image_set}"``). ``n``: the column of the images
    behind a row (several columns are summed, e.g. ``("n_simple", "n_complex")``; absent columns leave ``n``
    unknown); ``paper``: the column of the paper's effect, if any. An empty summary (no rows, whatever its columns)
    gives no checks.
    """
    if summary.empty:
        return []
    cols = [label] if isinstance(label, str) else list(label)
    for c in cols + [value] + ([paper] if paper else []):
        if c not in summary:
            raise VerdictError(f"summary has no column {c!r}; columns are {', '.join(map(str, summary.columns))}")
    n_cols = [n] if isinstance(n, str) else list(n)
    out = []
    for _, r in summary.iterrows():
        cond = template.format(**r.to_dict()) if template else ", ".join(str(r[c]) for c in cols)
        ci = (r[low], r[high]) if low in summary and high in summary else None
        n_img = sum(r[c] for c in n_cols) if all(c in summary for c in n_cols) else None
        pe = r[paper] if paper else None
        out.append(check(cond, r[value], op, threshold, ci=ci, n=n_img, paper_effect=pe))
    return out


def outcome(checks: Iterable[Check]) -> str:
    """A claim's outcome from its checks' (the ordered rule of the module docstring)."""
    done = [c for c in checks if c.outcome != NOT_TESTABLE]
    if not done:
        return NOT_TESTABLE
    got = [c.outcome for c in done]
    if all(o == REPLICATES for o in got):
        return REPLICATES
    if CONTRADICTS in got:
        return MIXED if REPLICATES in got else CONTRADICTS
    if all(o in (REPLICATES, SAME) for o in got):
        return SAME
    if all(o == OPPOSITE for o in got):
        return OPPOSITE
    return MIXED


@dataclass
class Claim:
    """One row of a verdict table.

    claim: the paper's claim in a few words; paper: its number or direction (as the paper states it);
    rule: how this run decides, as a sentence; checks: the evaluated conditions; this_run: a short summary of
    this run's numbers (default: each check's effect, CI and paper effect, ``"; "``-joined); by_construction /
    reason: the claim holds by construction of the setup (why, in one sentence) -- shown, not counted.
    """

    claim: str
    paper: str
    rule: str
    checks: list[Check] = field(default_factory=list)
    this_run: str | None = None
    fmt: str = "{:.3g}"
    by_construction: bool = False
    reason: str = ""

    def __post_init__(self):
        if self.by_construction and not self.reason.strip():
            raise VerdictError(f"claim {self.claim!r} is flagged by_construction without a reason; pass reason=...")

    @property
    def outcome(self) -> str:
        return outcome(self.checks)

    @property
    def counted(self) -> bool:
        """Whether the claim counts in the tallies (a setup check does not)."""
        return not self.by_construction

    @property
    def n_needed(self) -> int | None:
        """For a "not resolved" claim, the most images any of its open checks needs (module docstring)."""
        if self.outcome not in _UNRESOLVED:
            return None
        need = [c.n_needed for c in self.checks if c.outcome in _UNRESOLVED]
        return None if any(k is None for k in need) or not need else max(need)

    @property
    def n_images(self) -> int | None:
        """The most images behind any evaluable check (``None`` if no check knows its ``n``)."""
        ns = [c.n for c in self.checks if c.n is not None and c.outcome != NOT_TESTABLE]
        return max(ns) if ns else None

    @property
    def tally(self) -> str:
        """``"3/4 replicate, 1 contradicts"``: how the evaluable checks came out."""
        got = [c.outcome for c in self.checks if c.outcome != NOT_TESTABLE]
        if not got:
            return "none evaluable"
        s = f"{got.count(REPLICATES)}/{len(got)} replicate"
        if got.count(CONTRADICTS):
            s += f", {got.count(CONTRADICTS)} {'contradicts' if got.count(CONTRADICTS) == 1 else 'contradict'}"
        return s

    @property
    def n_passed(self) -> str:
        """``"replicated/evaluable"`` checks."""
        got = [c.outcome for c in self.checks if c.outcome != NOT_TESTABLE]
        return f"{got.count(REPLICATES)}/{len(got)}"

    def summary(self) -> str:
        if self.this_run is not None:
            return self.this_run
        return "; ".join(c.describe(self.fmt) for c in self.checks) or "n/a"

    def row(self) -> dict[str, str]:
        need = self.n_needed
        return {
            "claim": self.claim,
            "paper": self.paper,
            "this run": self.summary(),
            "outcome": (SETUP_PREFIX if self.by_construction else "") + self.outcome,
            "n to resolve": "" if need is None else f"≈{need} (ran {self.n_images})",
            "checks": self.tally,
            "rule": (f"Setup check, not counted: {self.reason} " if self.by_construction else "") + self.rule,
        }


def verdict_table(claims: Sequence[Claim]) -> pd.DataFrame:
    """The verdict table (columns :data:`VERDICT_COLUMNS`), one row per claim, outcomes computed; the counted
    claims first, then the setup checks (each group in the given order)."""
    if not claims:
        raise VerdictError("a verdict table needs at least one claim")
    ordered = [c for c in claims if c.counted] + [c for c in claims if not c.counted]
    return pd.DataFrame([c.row() for c in ordered], columns=VERDICT_COLUMNS)


def checks_table(claims: Sequence[Claim]) -> pd.DataFrame:
    """Every check of every claim (for an appendix): columns :data:`CHECK_COLUMNS`."""
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
                    "paper": k.paper_effect,
                    "n": k.n,
                    "test": f"{k.op} {k.threshold:g}",
                    "outcome": k.outcome,
                    "n to resolve": k.n_needed,
                    "setup check": c.by_construction,
                }
            )
    out = pd.DataFrame(rows, columns=CHECK_COLUMNS)
    return out.astype({"n": "Int64", "n to resolve": "Int64"})  # counts stay integers beside missing ones


OUTCOME_COLOURS = {
    REPLICATES: "#d9f0d3",
    SAME: "#fff2cc",
    OPPOSITE: "#fde0c5",
    CONTRADICTS: "#f4cccc",
    MIXED: "#e6dcf0",
    NOT_TESTABLE: "#eeeeee",
}
#: Setup checks are shown muted whatever their outcome: they test the setup, not the paper.
SETUP_COLOUR = "#e3ecf5"


def _outcome_css(v) -> str:
    if isinstance(v, str) and v.startswith(SETUP_PREFIX):
        return f"background-color: {SETUP_COLOUR}; font-style: italic"
    return f"background-color: {OUTCOME_COLOURS[v]}; font-weight: bold" if v in OUTCOME_COLOURS else ""


def style_verdict(table: pd.DataFrame):
    """A pandas Styler of a verdict table: outcome cells coloured (setup checks muted), text left-aligned, no
    index, cell text HTML-escaped (rules hold ``<`` and ``>``), the short columns kept on one line and the
    "rule" column narrow enough to wrap."""
    short = [c for c in ("outcome", "n to resolve", "checks") if c in table]
    return (
        table.style.hide(axis="index")
        .format(escape="html")
        .map(_outcome_css, subset=["outcome"])
        .set_properties(**{"text-align": "left", "white-space": "normal", "vertical-align": "top"})
        .set_properties(subset=short, **{"min-width": "7em"})
        .set_properties(subset=[c for c in ("rule", "paper", "this run") if c in table], **{"min-width": "14em"})
    )


def outcome_legend() -> str:
    """The outcomes and their meanings as one Markdown sentence (the book's "paper vs this study" page)."""
    parts = [f"**{o}** ({OUTCOME_MEANINGS[o]})" for o in OUTCOMES]
    return (
        "; ".join(parts)
        + ". A claim that holds by construction of this study's data or methods is shown as a *setup check* and "
        "not counted."
    )


def summary_line(claims: Sequence[Claim]) -> str:
    """``"1 of 4 claims replicate; 2 same direction, not resolved; 1 contradicts; not counted: 1 setup check
    (holds)"`` -- for gluing into the prose. Setup checks (by construction) are not counted."""
    counted = [c for c in claims if c.counted]
    setup = [c for c in claims if not c.counted]
    counts = {o: sum(c.outcome == o for c in counted) for o in OUTCOMES}
    k = len(counted)
    parts = [f"{counts[REPLICATES]} of {k} {'claim replicates' if k == 1 else 'claims replicate'}"]
    for o in OUTCOMES[1:]:
        if counts[o]:
            word = o if o != CONTRADICTS or counts[o] == 1 else "contradict"
            parts.append(f"{counts[o]} {word}")
    line = "; ".join(parts)  # "; " because outcome names hold commas
    if setup:
        held = sum(c.outcome == REPLICATES for c in setup)
        what = "setup check" if len(setup) == 1 else "setup checks"
        state = ("holds" if len(setup) == 1 else "all hold") if held == len(setup) else f"{held} of {len(setup)} hold"
        line += f"; not counted: {len(setup)} {what} ({state})"
    return line


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


def paper_metric(
    table: str,
    label: str,
    metric: str,
    budget: int,
    *,
    only: Iterable[str] | None = None,
    model: str = "llava-1.5-7b",
    results: pd.DataFrame | None = None,
) -> float:
    """The paper's ``metric`` for one of *our* method labels (mapped by :func:`prunelab.methods.paper_name`) at
    ``budget``, or NaN where the paper has no single such row -- for computing the paper's effect beside ours.
    ``only``: the labels (without parameters) allowed to map, e.g. to keep an adaptive-count method off the
    paper's fixed-budget row."""
    from prunelab.methods import base_label, paper_name

    if only is not None and base_label(label) not in set(only):
        return math.nan
    df = paper_results() if results is None else results
    sel = df[
        (df["table"] == table)
        & (df["model"] == model)
        & (df["method"] == paper_name(label))
        & (df["metric"] == metric)
        & (df["visual_tokens"] == int(budget))
    ]
    return float(sel["value"].iloc[0]) if len(sel) == 1 else math.nan


def paper_pope(
    method: str, budget: int, *, model: str = "llava-1.5-7b", results: pd.DataFrame | None = None
) -> tuple[float, str]:
    """The paper's POPE number for one of our labels (or a paper name) at ``budget``: from ``benchmarks`` when it
    is there, else from ``hybrid_enhancement`` (FasterVLM is only there); ``(nan, "")`` if absent. Returns
    ``(value, table)``. ``results``: an already read :func:`paper_results` (a loop need not read the file again)."""
    from prunelab.methods import paper_name

    res = paper_results() if results is None else results
    name = paper_name(method) or method
    for table in ("benchmarks", "hybrid_enhancement"):
        sel = res[
            (res["table"] == table)
            & (res["model"] == model)
            & (res["method"] == name)
            & (res["metric"] == "POPE")
            & (res["visual_tokens"] == int(budget))
        ]
        if len(sel):
            return float(sel["value"].iloc[0]), table
    return math.nan, ""


__all__ = [
    "paper_metric",
    "paper_pope",
    "VERDICT_GLUE",
    "OUTCOMES",
    "VERDICT_COLUMNS",
    "CHECK_COLUMNS",
    "CHECK_OUTCOMES",
    "REPLICATES",
    "SAME",
    "OPPOSITE",
    "CONTRADICTS",
    "MIXED",
    "NOT_TESTABLE",
    "SETUP_PREFIX",
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
    "outcome_legend",
    "OUTCOME_MEANINGS",
    "paper_results",
    "paper_value",
]

"""prunelab.study.verdict: checks (conservative CI rule), outcomes, tables, paper numbers."""

from __future__ import annotations

import pandas as pd
import pytest

from prunelab.study import verdict as V


def test_check_point_and_conservative_ci():
    assert V.check("a", 0.5, "<", 0.8).passed is True
    assert V.check("a", 0.9, "<", 0.8).passed is False
    # point passes but the CI's far end does not -> not replicated beyond noise
    assert V.check("a", 0.75, "<", 0.8, ci=(0.7, 0.85)).passed is False
    assert V.check("a", 0.75, "<", 0.8, ci=(0.7, 0.85), conservative=False).passed is True
    assert V.check("a", 1.3, ">", 1.0, ci=(1.1, 1.5)).passed is True
    assert V.check("a", 1.3, ">", 1.0, ci=(0.95, 1.5)).passed is False
    assert V.check("a", 1.0, ">=", 1.0).passed is True and V.check("a", 1.0, ">", 1.0).passed is False
    assert V.check("a", 1.0, "<=", 1.0).passed is True
    assert V.check("a", float("nan"), "<", 1.0).passed is None
    # a NaN CI bound falls back to the point value
    assert V.check("a", 0.5, "<", 0.8, ci=(float("nan"), float("nan"))).passed is True


def test_check_rejects_bad_rules():
    with pytest.raises(V.VerdictError):
        V.check("a", 1.0, "!=", 1.0)
    with pytest.raises(V.VerdictError):
        V.check("a", 1.0, "<", float("nan"))


def _c(passed):
    value = {True: 0.0, False: 2.0, None: float("nan")}[passed]
    return V.check("x", value, "<", 1.0)


@pytest.mark.parametrize(
    "flags, expected",
    [
        ([True, True], "replicates"),
        ([True, False], "partly"),
        ([False, False], "does not"),
        ([None, None], "not tested"),
        ([], "not tested"),
        ([True, None], "replicates"),
        ([False, None], "does not"),
    ],
)
def test_outcome_rules(flags, expected):
    checks = [_c(f) for f in flags]
    assert [c.passed for c in checks] == flags
    assert V.outcome(checks) == expected
    assert V.Claim("c", "p", "r", checks).outcome == expected


def test_checks_from_summary_and_table():
    summ = pd.DataFrame(
        {
            "method": ["DivPrune", "FPS"],
            "budget": [64, 64],
            "mean": [0.5, 0.9],
            "ci_low": [0.45, 0.85],
            "ci_high": [0.55, 0.95],
        }
    )
    checks = V.checks_from_summary(summ, ["method", "budget"], "<", 0.8)
    assert [c.condition for c in checks] == ["DivPrune, 64", "FPS, 64"]
    assert [c.passed for c in checks] == [True, False]
    templ = V.checks_from_summary(summ, "method", "<", 0.8, template="{method}@{budget}")
    assert templ[0].condition == "DivPrune@64"
    assert V.checks_from_summary(pd.DataFrame(), "method", "<", 0.8) == []  # no rows: no checks, columns or not
    floats = summ.drop(columns="method").astype(float)  # all-numeric rows come back as floats: format them
    assert V.checks_from_summary(floats, "budget", "<", 0.8, template="T={budget:.0f}")[0].condition == "T=64"
    claim = V.Claim("erank shortfall", "lower", "ratio < 0.8 for every method", checks)
    assert claim.outcome == "partly" and claim.n_passed == "1/2"
    assert "DivPrune, 64: 0.5 [0.45, 0.55]" in claim.summary()
    tab = V.verdict_table([claim, V.Claim("other", "p", "r", [_c(True)], this_run="42")])
    assert list(tab.columns) == V.VERDICT_COLUMNS
    assert tab["outcome"].tolist() == ["partly", "replicates"]
    assert tab["this run"].iloc[1] == "42"
    long = V.checks_table([claim])
    assert len(long) == 2 and long["passed"].tolist() == [True, False] and long["test"].iloc[0] == "< 0.8"
    assert V.summary_line([claim, V.Claim("o", "p", "r", [_c(True)])]) == "1 of 2 claims replicate, 1 partly"
    html = V.style_verdict(tab).to_html()
    assert "replicates" in html and V.OUTCOME_COLOURS["partly"] in html
    assert "ratio &lt; 0.8 for every method" in html and "ratio < 0.8" not in html  # rules are text, not markup
    with pytest.raises(V.VerdictError):
        V.checks_from_summary(summ, "nope", "<", 1.0)
    with pytest.raises(V.VerdictError):
        V.verdict_table([])


def test_describe_handles_nan():
    assert V.check("cond", float("nan"), "<", 1).describe() == "cond: n/a"


def test_paper_values_from_committed_file():
    df = V.paper_results()
    assert {"table", "model", "visual_tokens", "method", "metric", "value"} <= set(df.columns)
    assert V.paper_value("image_complexity_examples", "simple:handwritten-math", "erank") == 58
    assert V.paper_value("image_complexity_examples", "complex:meeting-room", "erank") == 122
    with pytest.raises(V.VerdictError):
        V.paper_value("image_complexity_examples", "nope", "erank")
    with pytest.raises(V.VerdictError):  # ambiguous: one number per budget
        V.paper_value("chair", "DivPrune", "CHAIR_s", results=pd.concat([df, df]))
    assert V.paper_value("chair", "DivPrune", "CHAIR_s", visual_tokens=64) == pytest.approx(57.4)


def test_paper_results_missing_file(tmp_path):
    from prunelab.errors import UnknownNameError

    with pytest.raises(UnknownNameError):
        V.paper_results(tmp_path / "none.csv")

"""prunelab.study.verdict: check outcomes (where the CI lies), images to resolve, claim aggregation, setup checks
excluded from the tallies, tables, paper numbers."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from prunelab.study import verdict as V

NAN = float("nan")


@pytest.mark.parametrize(
    "value, op, ci, expected",
    [
        (1.3, ">", (1.1, 1.5), V.REPLICATES),  # whole CI above the threshold 1
        (1.3, ">", (0.95, 1.5), V.SAME),  # point above, CI crosses
        (0.9, ">", (0.7, 1.05), V.OPPOSITE),  # point below, CI crosses
        (0.8, ">", (0.6, 0.95), V.CONTRADICTS),  # whole CI below
        (0.8, ">", (0.6, 1.0), V.CONTRADICTS),  # "> 1" fails on the whole interval [0.6, 1]
        (0.8, ">=", (0.6, 1.0), V.OPPOSITE),  # ">= 1" holds at the upper end
        (0.7, "<", (0.6, 0.9), V.REPLICATES),
        (0.95, "<", (0.9, 1.2), V.SAME),
        (1.1, "<", (1.05, 1.3), V.CONTRADICTS),
        (NAN, ">", (0.0, 2.0), V.NOT_TESTABLE),
        (1.2, ">", None, V.REPLICATES),  # no CI: the point decides
        (0.8, ">", None, V.CONTRADICTS),
        (1.2, ">", (NAN, NAN), V.REPLICATES),  # a CI with non-finite ends counts as none
    ],
)
def test_check_outcomes(value, op, ci, expected):
    k = V.check("x", value, op, 1.0, ci=ci, n=50)
    assert k.outcome == expected
    assert k.passed is (None if expected == V.NOT_TESTABLE else expected == V.REPLICATES)
    assert (k.n_needed is not None) == (expected in (V.SAME, V.OPPOSITE))


def test_check_rejects_bad_rules():
    with pytest.raises(V.VerdictError):
        V.check("a", 1.0, "!=", 1.0)
    with pytest.raises(V.VerdictError):
        V.check("a", 1.0, "<", float("nan"))


def test_n_needed_known_answers():
    # effect 2 above 0, lower half of the CI 3 wide, 100 images: 100 * (3 / 2)^2 = 225
    assert V.check("x", 2.0, ">", 0.0, ci=(-1.0, 5.0), n=100).n_needed == 225
    # opposite direction: the upper half faces the threshold, 1.5 wide at distance 1: 40 * 1.5^2 = 90
    assert V.check("x", -1.0, ">", 0.0, ci=(-3.0, 0.5), n=40).n_needed == 90
    # a "<" claim: effect 0.9 vs 1, upper half 0.2 wide: 30 * 2^2 = 120
    assert V.check("x", 0.9, "<", 1.0, ci=(0.85, 1.1), n=30).n_needed == 120
    # an end exactly on the threshold: one more image than this run
    assert V.check("x", 1.0, ">", 0.0, ci=(0.0, 2.0), n=64).n_needed == 65
    # resolved, untestable, unknown n, effect on the threshold: no figure
    assert V.check("x", 2.0, ">", 0.0, ci=(1.0, 3.0), n=10).n_needed is None
    assert V.check("x", NAN, ">", 0.0, n=10).n_needed is None
    assert V.check("x", 1.0, ">", 0.0, ci=(-1.0, 3.0)).n_needed is None
    assert V.check("x", 0.0, ">=", 0.0, ci=(-1.0, 1.0), n=10).n_needed is None


def test_n_needed_matches_a_normal_ci_shrinking_as_one_over_root_n():
    # the mean of n draws with sd 4 has a 95% half-width 1.96 * 4 / sqrt(n); at n_needed it reaches the effect
    z, sd, effect, n = 1.959964, 4.0, 0.5, 80
    w = z * sd / math.sqrt(n)
    need = V.check("x", effect, ">", 0.0, ci=(effect - w, effect + w), n=n).n_needed
    assert z * sd / math.sqrt(need) <= effect < z * sd / math.sqrt(need - 1)
    assert need == math.ceil((z * sd / effect) ** 2)  # the textbook sample size for that effect


def _k(outcome):
    """A check with the given outcome (threshold 0, claim "> 0", 100 images)."""
    ci = {
        V.REPLICATES: (1.0, 3.0),
        V.SAME: (-1.0, 3.0),
        V.OPPOSITE: (-3.0, 1.0),
        V.CONTRADICTS: (-3.0, -1.0),
        V.NOT_TESTABLE: (NAN, NAN),
    }[outcome]
    value = NAN if outcome == V.NOT_TESTABLE else (2.0 if outcome in (V.REPLICATES, V.SAME) else -2.0)
    k = V.check("x", value, ">", 0.0, ci=ci, n=100)
    assert k.outcome == outcome
    return k


R, S, OP, C, N = V.REPLICATES, V.SAME, V.OPPOSITE, V.CONTRADICTS, V.NOT_TESTABLE


@pytest.mark.parametrize(
    "got, expected",
    [
        ([], N),
        ([N, N], N),
        ([R, R], R),
        ([R, N], R),  # untestable checks are left out
        ([R, S], S),
        ([S, S], S),
        ([OP, OP], OP),
        ([C, C], C),
        ([C, S], C),  # resolved against somewhere, for nowhere
        ([C, OP], C),
        ([R, C], V.MIXED),
        ([R, S, C], V.MIXED),
        ([R, OP], V.MIXED),  # point estimates on both sides, nothing resolved against
        ([S, OP], V.MIXED),
    ],
)
def test_claim_aggregation_rule(got, expected):
    checks = [_k(o) for o in got]
    assert V.outcome(checks) == expected
    assert V.Claim("c", "p", "r", checks).outcome == expected
    assert expected in V.OUTCOMES


def test_claim_n_needed_is_the_largest_open_check():
    # open checks need 100 * (3/2)^2 = 225 and 100 * (4/2)^2 = 400 images
    wide = V.check("y", 2.0, ">", 0.0, ci=(-2.0, 4.0), n=100)
    claim = V.Claim("c", "p", "r", [_k(R), _k(S), wide])
    assert claim.outcome == S and claim.n_needed == 400 and claim.n_images == 100
    assert claim.row()["n to resolve"] == "≈400 (ran 100)"
    assert V.Claim("c", "p", "r", [_k(R)]).n_needed is None  # resolved: nothing to add
    assert V.Claim("c", "p", "r", [_k(R), _k(C)]).row()["n to resolve"] == ""  # mixed: no single figure


def test_setup_checks_are_shown_but_not_counted():
    counted = [V.Claim("a", "p", "r", [_k(R)]), V.Claim("b", "p", "r", [_k(S)]), V.Claim("c", "p", "r", [_k(C)])]
    setup = V.Claim("s", "p", "rule s", [_k(R)], by_construction=True, reason="The split is made on this measure.")
    claims = [setup, *counted]
    assert V.summary_line(claims) == (
        "1 of 3 claims replicate; 1 same direction, not resolved; 1 contradicts; not counted: 1 setup check (holds)"
    )
    assert V.summary_line(counted) == "1 of 3 claims replicate; 1 same direction, not resolved; 1 contradicts"
    tab = V.verdict_table(claims)
    assert tab["claim"].tolist() == ["a", "b", "c", "s"]  # setup checks after the counted claims
    assert tab["outcome"].iloc[3] == "setup check: replicates"
    assert tab["rule"].iloc[3] == "Setup check, not counted: The split is made on this measure. rule s"
    html = V.style_verdict(tab).to_html()
    assert V.SETUP_COLOUR in html and V.OUTCOME_COLOURS[V.CONTRADICTS] in html
    failed = V.Claim("t", "p", "r", [_k(C)], by_construction=True, reason="x.")
    assert V.summary_line([counted[0], setup, failed]).endswith("not counted: 2 setup checks (1 of 2 hold)")
    assert V.summary_line([counted[0]]) == "1 of 1 claim replicates"
    with pytest.raises(V.VerdictError, match="reason"):
        V.Claim("s", "p", "r", [], by_construction=True)


def test_checks_from_summary_and_tables():
    summ = pd.DataFrame(
        {
            "method": ["DivPrune", "FPS"],
            "budget": [64, 64],
            "mean": [0.5, 0.9],
            "ci_low": [0.45, 0.78],
            "ci_high": [0.55, 0.95],
            "n": [40, 40],
            "paper_diff": [0.6, NAN],
        }
    )
    checks = V.checks_from_summary(summ, ["method", "budget"], "<", 0.8, paper="paper_diff")
    assert [c.condition for c in checks] == ["DivPrune, 64", "FPS, 64"]
    assert [c.outcome for c in checks] == [V.REPLICATES, V.OPPOSITE]
    assert [c.n for c in checks] == [40, 40] and checks[0].paper_effect == 0.6 and checks[1].paper_effect is None
    assert checks[1].n_needed == math.ceil(40 * (0.12 / 0.1) ** 2)
    templ = V.checks_from_summary(summ, "method", "<", 0.8, template="{method}@{budget}")
    assert templ[0].condition == "DivPrune@64" and templ[0].paper_effect is None
    two = summ.assign(n_simple=10, n_complex=15).drop(columns="n")
    assert V.checks_from_summary(two, "method", "<", 0.8, n=("n_simple", "n_complex"))[0].n == 25
    assert V.checks_from_summary(two, "method", "<", 0.8)[0].n is None  # no "n" column: unknown
    assert V.checks_from_summary(pd.DataFrame(), "method", "<", 0.8) == []  # no rows: no checks, columns or not
    floats = summ.drop(columns="method").astype(float)  # all-numeric rows come back as floats: format them
    assert V.checks_from_summary(floats, "budget", "<", 0.8, template="T={budget:.0f}")[0].condition == "T=64"
    claim = V.Claim("erank shortfall", "lower", "ratio < 0.8 for every method", checks)
    assert claim.outcome == V.MIXED and claim.n_passed == "1/2" and claim.tally == "1/2 replicate"
    assert "DivPrune, 64: 0.5 [0.45, 0.55], paper 0.6" in claim.summary()
    tab = V.verdict_table([claim, V.Claim("other", "p", "r", [_k(R)], this_run="42")])
    assert list(tab.columns) == V.VERDICT_COLUMNS
    assert tab["outcome"].tolist() == [V.MIXED, V.REPLICATES]
    assert tab["this run"].iloc[1] == "42"
    long = V.checks_table([claim])
    assert list(long.columns) == V.CHECK_COLUMNS
    assert long["outcome"].tolist() == [V.REPLICATES, V.OPPOSITE] and long["test"].iloc[0] == "< 0.8"
    assert long["n to resolve"].iloc[1] == 58 and long["paper"].iloc[0] == 0.6
    html = V.style_verdict(tab).to_html()
    assert "replicates" in html and V.OUTCOME_COLOURS[V.MIXED] in html
    assert "ratio &lt; 0.8 for every method" in html and "ratio < 0.8" not in html  # rules are text, not markup
    with pytest.raises(V.VerdictError):
        V.checks_from_summary(summ, "nope", "<", 1.0)
    with pytest.raises(V.VerdictError):
        V.checks_from_summary(summ, "method", "<", 1.0, paper="nope")
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


def test_paper_metric_maps_our_labels():
    assert V.paper_metric("chair", "FPS", "CHAIR_s", 64) == 58.6  # FPSPruner in the paper
    assert V.paper_metric("chair", "DivPrune(features=vision)", "CHAIR_s", 64) == 57.4
    assert math.isnan(V.paper_metric("chair", "DivPrune", "CHAIR_s", 192))  # no such budget in the paper
    assert math.isnan(V.paper_metric("chair", "FPS", "CHAIR_s", 64, only=["DivPrune"]))
    assert math.isnan(V.paper_metric("chair", "NoSuchMethod", "CHAIR_s", 64))


def test_paper_results_missing_file(tmp_path):
    from prunelab.errors import UnknownNameError

    with pytest.raises(UnknownNameError):
        V.paper_results(tmp_path / "none.csv")

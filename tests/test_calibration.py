"""The calibration table of an embedded model against LLaVA-1.5-7B (prunelab.study.calibration)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from prunelab.study import calibration as C
from prunelab.study.verdict import paper_results


def test_degenerate_rate_counts_unfinished_and_looping_descriptions():
    df = pd.DataFrame(
        {
            "method": ["A", "A", "A", "B"],
            "budget": [64, 64, 64, 64],
            "text": ["a cat on a mat.", "a cup , a cup , a cup , a cup", "a dog", "fine words here"],
            "hit_max_new_tokens": [False, False, True, False],
        }
    )
    got = C.degenerate_rate(df).set_index("method")["degenerate"]
    assert got["A"] == pytest.approx(2 / 3) and got["B"] == 0.0


def test_paper_numbers_come_from_the_right_tables():
    R = paper_results()
    van = C._paper(None, 576, R)
    assert van["paper_POPE_F1"] == 85.9 and van["paper_CHAIR_i"] == 13.9 and van["paper_Recall"] == 78.7
    fv = C._paper("FasterVLM", 64, R)  # POPE of FasterVLM is only in the hybrid table
    assert fv["paper_POPE_F1"] == 77.4 and fv["paper_CHAIR_i"] == 13.5
    assert C._paper("DivPrune", 128, R)["paper_POPE_F1"] == 85.5  # the main table; the hybrid table says 87.0
    assert "paper_CHAIR_i" not in C._paper("FastV", 64, R)  # the paper has no CHAIR row for it


def _table(ours, paper, budget=64):
    return pd.DataFrame(
        {
            "method": [f"M{i}" for i in range(len(ours))],
            "budget": budget,
            "status": "ran",
            "POPE_F1": ours,
            "paper_POPE_F1": paper,
        }
    )


def test_rank_agreement_known_answers():
    up = C.paper_rank_agreement(_table([1, 2, 3, 4], [10, 20, 30, 40]))
    down = C.paper_rank_agreement(_table([4, 3, 2, 1], [10, 20, 30, 40]))
    few = C.paper_rank_agreement(_table([1, 2], [10, 20]))
    assert up["spearman"].iloc[0] == pytest.approx(1.0) and up["n_methods"].iloc[0] == 4
    assert down["spearman"].iloc[0] == pytest.approx(-1.0)
    assert math.isnan(few["spearman"].iloc[0])


@pytest.mark.slow
def test_calibration_on_the_tiny_embedded_model(tmp_path):
    d, p, refused = C.calibration_runs(
        "toyllava", n=2, methods=("FasterVLM", "FastV"), budgets=(64,), cache_dir=tmp_path, progress=False
    )
    assert set(refused) == {"FastV"} and "layers" in refused["FastV"]  # a 2-layer decoder cannot hold K=2
    t = C.calibration_table(d, p, refused)
    assert list(t["method"]) == ["Vanilla", "FasterVLM", "FastV"]
    van, fv = t.iloc[0], t.iloc[1]
    assert van["budget"] == 576 and van["Recall_ret"] == 1.0 and van["paper_POPE_F1"] == 85.9
    assert fv["Recall_ret"] == pytest.approx(fv["Recall"] / van["Recall"]) if van["Recall"] else True
    assert fv["paper_POPE_F1_ret"] == pytest.approx(77.4 / 85.9)
    assert t.iloc[2]["status"].startswith("cannot run") and np.isnan(t.iloc[2]["POPE_F1"])
    by = C.calibration_by_complexity(d, p, refused)
    assert set(by["complexity"]) <= {"all", "simple", "complex"} and (by["complexity"] == "all").sum() == 3

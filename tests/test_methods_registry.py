"""What every method knows about itself (prunelab.methods.base): discovered registration, the one family order,
the display and paper names, and the input-erank statistics a configuration reads."""

from __future__ import annotations

import importlib
import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from prunelab.methods import FAMILY_ORDER, UNPRUNED, ErankStatsSpec, available_methods, get_pruner, paper_name
from prunelab.methods.base import _REGISTRY, Pruner, family_modules

FAMILIES = ["adaptive", "attention", "diversity", "hybrid", "in_llm", "text_conditioned"]
PAPER_CSV = Path(__file__).resolve().parents[1] / "data" / "paper_results.csv"


def test_family_modules_are_discovered():
    assert family_modules() == FAMILIES


def test_every_pruner_of_a_family_module_is_registered():
    available_methods()
    registered = set(_REGISTRY.values())
    seen = 0
    for mod in family_modules():
        m = importlib.import_module(f"prunelab.methods.{mod}")
        for name, cls in inspect.getmembers(m, inspect.isclass):
            if cls.__module__ != m.__name__ or not issubclass(cls, Pruner) or name.startswith("_"):
                continue
            if cls in registered:
                assert _REGISTRY[cls.name.lower()] is cls
                seen += 1
            else:  # only a public base of registered methods (InLLMPruner) may stay unregistered
                assert any(issubclass(r, cls) for r in registered), (
                    f"{m.__name__}.{name} is a Pruner but not registered"
                )
    assert seen == 22


def test_a_fresh_interpreter_finds_every_method_without_importing_a_family():
    code = "import json; from prunelab.methods import available_methods; print(json.dumps(available_methods()))"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    got = json.loads(out)
    assert len(got) == 22 and {"FasterVLM", "AgilePruner", "VisPruner+erank", "CDPruner", "DART"} <= set(got)
    assert got == [n for n in available_methods() if not n.startswith("_")]  # test-only registrations start with _


def test_every_method_has_a_family_of_the_one_order_and_one_display_name():
    assert len(set(FAMILY_ORDER)) == len(FAMILY_ORDER)
    # the order before in_llm was listed (study.plots): existing orders and colours stay as they were
    assert FAMILY_ORDER[:7] == ("attention", "diversity", "hybrid", "adaptive", "text", "random", "base")
    names = [n for n in available_methods() if not n.startswith("_")]
    assert len({n.lower() for n in names}) == len(names)
    for n in names:
        p = get_pruner(n)
        assert p.family in FAMILY_ORDER, n
        assert p.name == n and type(p).name == n  # the registered name is the display name
    from prunelab.study import plots

    assert plots.FAMILY_ORDER is FAMILY_ORDER


# Transcription of the maps this replaces: study/hallucination.py PAPER_NAMES (CHAIR table), study/adaptive_study.py
# PAPER_NAMES (benchmarks/chair) and PAPER_HYBRIDS (hybrid_enhancement), as of commit f392b85.
OLD_HALLUCINATION = {
    "Vanilla": "Vanilla",
    "FasterVLM": "FasterVLM",
    "PruMerge+fixed": "PruMerge+",
    "PruMerge+": "PruMerge+",
    "VisPruner": "VisPruner",
    "DivPrune": "DivPrune",
    "FPS": "FPSPruner",
    "AgilePruner": "AgilePruner",
}
OLD_ADAPTIVE = {
    "FasterVLM": "FasterVLM",
    "DivPrune": "DivPrune",
    "VisPruner": "VisPruner",
    "VisionZip": "VisionZip",
    "PruMerge+fixed": "PruMerge+",
    "PruMerge+": "PruMerge+",
    "FPS": "FPSPruner",
    "AgilePruner": "AgilePruner",
}
OLD_HYBRIDS = {
    "BAT": "BAT",
    "BAT+erank": "BAT+adaptive",
    "BAT+inverse": "BAT+inverse",
    "VisPruner+erank": "VisPruner+adaptive",
    "VisPruner+inverse": "VisPruner+inverse",
    "AttnDiv": "DivPrune+FasterVLM",
    "AttnDiv+erank": "DivPrune+FasterVLM+adaptive",
    "AttnDiv+inverse": None,
}


@pytest.mark.parametrize("old", [OLD_HALLUCINATION, OLD_ADAPTIVE, OLD_HYBRIDS], ids=["chair", "benchmarks", "hybrids"])
def test_paper_name_agrees_with_the_maps_it_replaces(old):
    for label, name in old.items():
        assert paper_name(label) == name, label


def test_paper_name_of_labels():
    assert paper_name("DivPrune(features=vision)") == "DivPrune"  # parameters dropped, as chapter 2 needs
    assert paper_name("AgilePruner(tau_max=0.05)") == "AgilePruner"
    assert paper_name(UNPRUNED) == "Vanilla" == UNPRUNED
    for label in ("CDPruner", "PruMerge", "DART", "fastervlm", "NoSuchMethod", "FPSPruner"):
        assert paper_name(label) is None, label  # not in the paper, or not exactly one of our labels
    from prunelab.study.generation import VANILLA

    assert VANILLA == UNPRUNED


def test_every_method_of_the_paper_tables_maps_from_one_of_our_labels():
    res = pd.read_csv(PAPER_CSV)
    paper = set(res.loc[res["table"] != "image_complexity_examples", "method"])
    ours = {paper_name(n) for n in available_methods()} | {paper_name(UNPRUNED)}
    assert paper - ours == set()
    assert {paper_name(n) for n in ("FastV", "PDrop", "SparseVLM", "FPS", "PruMerge+fixed")} == {
        "FastV",
        "PDrop",
        "SparseVLM",
        "FPSPruner",
        "PruMerge+",
    }


def test_erank_stats_spec_of_each_method():
    default = ErankStatsSpec()
    assert (default.features, default.center, default.row_normalize, default.spectrum) == (
        "vision",
        False,
        False,
        "singular",
    )
    # the per-image cache column of the study loop: same format as before, so cached entries stay valid
    assert default.name == "input_erank[vision|c=False|rn=False|singular]"
    assert get_pruner("AgilePruner").erank_stats_spec() == default
    assert get_pruner("AgilePruner", erank_avg=5.0).erank_stats_spec() is None
    opts = get_pruner("AgilePruner", erank_features="projected", erank_center=True, erank_spectrum="squared")
    assert opts.erank_stats_spec() == ErankStatsSpec("projected", True, False, "squared")
    for n in ("VisPruner+erank", "VisPruner+inverse", "BAT+erank", "BAT+inverse", "AttnDiv+erank", "AttnDiv+inverse"):
        assert get_pruner(n).erank_stats_spec() == default, n
        assert get_pruner(n, e_min=1.0).erank_stats_spec() == default, n  # one bound still comes from the stats
        assert get_pruner(n, e_min=1.0, e_max=9.0).erank_stats_spec() is None, n
    needing = {
        "AgilePruner",
        "VisPruner+erank",
        "VisPruner+inverse",
        "BAT+erank",
        "BAT+inverse",
        "AttnDiv+erank",
        "AttnDiv+inverse",
    }
    for n in available_methods():
        if n not in needing and not n.startswith("_"):
            assert get_pruner(n).erank_stats_spec() is None, n
    # specs sort as the option tuples did (the study calibrates them in this order)
    specs = [ErankStatsSpec("vision", True), ErankStatsSpec("projected"), default, ErankStatsSpec(spectrum="squared")]
    assert [(s.features, s.center, s.row_normalize, s.spectrum) for s in sorted(specs)] == sorted(
        (s.features, s.center, s.row_normalize, s.spectrum) for s in specs
    )


def test_the_spec_is_what_the_method_computes():
    from prunelab.methods.testing import make_context
    from prunelab.study.generation import spec_input_erank

    ctx = make_context(n=36, c=12, d=10, seed=3, erank_stats={"mean": 5.0, "min": 2.0, "max": 9.0})
    agile = get_pruner("AgilePruner", erank_features="projected", erank_center=True, erank_row_normalize=True)
    assert spec_input_erank(ctx, agile.erank_stats_spec()) == pytest.approx(agile.complexity(ctx)[1], rel=1e-12)
    split = get_pruner("BAT+erank")
    got = split(ctx, 8).stats["erank_input"]
    assert spec_input_erank(ctx, split.erank_stats_spec()) == pytest.approx(got, rel=1e-12)

"""prunelab.benchmarks.dataflow: layer ranks from the import-linter contract, old flat names mapped to today's
folders, and the redesign's bar on the study loop (model and methods never handed up a layer)."""

from __future__ import annotations

from prunelab.benchmarks import dataflow as D


def test_layer_ranks_follow_the_contract_order():
    ranks = D.layer_ranks()
    assert ranks["prunelab.book"] == ranks["prunelab.benchmarks"] == 0
    assert ranks["prunelab.study"] < ranks["prunelab.train"] < ranks["prunelab.models"] < ranks["prunelab.methods"]
    assert ranks["prunelab.methods"] < ranks["prunelab.eval"] < ranks["prunelab.errors"]


def test_rank_of_uses_the_longest_package_and_the_flat_names():
    ranks = D.layer_ranks()
    assert D.rank_of("prunelab.study.generation", ranks) == ranks["prunelab.study"]
    assert D.rank_of("prunelab.assets.debian", ranks) == ranks["prunelab.assets.debian"]
    assert D.rank_of("prunelab.nowhere", ranks) is None
    flat = D.flat_map()
    assert flat["prunelab.generation"] == "prunelab.study.generation"
    assert D.rank_of("prunelab.generation", ranks, flat) == ranks["prunelab.study"]


def test_model_and_methods_never_climb_a_layer_in_the_study_loop(tmp_path, one_torch_thread):
    res = D.trace_loop(tmp_path)
    for k in ("model", "methods"):
        assert res[k]["modules"], f"the trace saw no call that receives {k}"
        assert res[k]["climbs"] == [], res[k]["climbs"]
    assert set(res["model"]["modules"]) <= {
        "prunelab.study.generation",
        "prunelab.models.adapter",
        "prunelab.models.hooks",
        "prunelab.models.loader",
    }
    # the only calls up a layer left are the in-LLM methods reading their PrefillView
    assert {c.split(" -> ")[1].split(":")[0] for c in res["callbacks"]["climbs"]} <= {"prunelab.models.decoder_edit"}

"""prunelab.benchmarks.dataflow: layer ranks from the import-linter contract, old flat names mapped to today's
folders, and the redesign's bar on the study loop (model and methods never handed up a layer, no call up a layer
at all, the in-LLM methods' included)."""

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
        "prunelab.models.generate_common",
        "prunelab.models.hooks",
        "prunelab.models.loader",
    }
    # no prunelab call at all goes up a layer (the in-LLM methods receive their layer inputs as plain data)
    assert res["callbacks"]["climbs"] == [], sorted(set(res["callbacks"]["climbs"]))


def test_in_llm_methods_never_call_up_into_the_models_layer(one_torch_thread):
    """Every in-LLM method, run through the adapter's decoder hooks, only receives data: the engine (models) calls
    the method (methods), never the reverse."""
    from prunelab.models.adapter import LlavaAdapter
    from prunelab.models.tiny import tiny_inputs, tiny_llava

    model = tiny_llava("clip", seed=0)
    adapter = LlavaAdapter(model)
    ids, pv = tiny_inputs(model, seed=21)
    for method in ("FastV", "PDrop", "SparseVLM", "DART"):
        res = D.trace_calls(lambda m=method: adapter.run(ids, pv, m, 16, max_new_tokens=2))
        # the trace saw the engine hand the method its layer inputs (so an empty climb list means something)
        assert res["edges"][("prunelab.models.decoder_edit", "prunelab.methods.in_llm")] >= 2, method
        assert res["climbs"] == [], (method, sorted(set(res["climbs"])))

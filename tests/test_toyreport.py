"""Model-card helpers read what training wrote; nothing is computed by hand."""

from __future__ import annotations

import json

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402

from prunelab.errors import AssetError  # noqa: E402
from prunelab.train import toyreport  # noqa: E402
from prunelab.train.toydata import TrainConfig  # noqa: E402
from prunelab.train.toytrain import write_history  # noqa: E402


def _eval():
    cfg = TrainConfig(n_test=2).to_json()
    summ = []
    for cond, rec, hall in (("full", 0.9, 0.05), ("FasterVLM-64", 0.7, 0.15), ("DivPrune-64", 0.75, 0.3)):
        for cx in ("simple", "complex", "all"):
            summ.append(
                {
                    "condition": cond,
                    "method": cond.split("-")[0],
                    "budget": 64,
                    "complexity": cx,
                    "n_images": 1,
                    "recall": rec,
                    "precision": 1 - hall,
                    "chair_i": hall,
                    "chair_s": hall,
                    "degenerate_rate": 0.0,
                    "object_hit": 1.0,
                    "mean_length": 20.0,
                    "pope_random_acc": 0.9,
                    "pope_popular_acc": 0.8,
                    "pope_adversarial_acc": 0.76,
                    "seconds": {},
                }
            )
    per = [
        {
            "condition": c,
            "id": "test-00001",
            "complexity": "complex",
            "description": "A dog and two cats.",
            "mentioned": ["cat", "dog"],
            "objects": ["dog"],
            "hallucinated": ["cat"],
            "degenerate": c == "DivPrune-64",
            "n_tokens": 6,
            "object_hit": 1,
            "n_objects": 1,
            "n_kept": 64,
            "pope": [],
        }
        for c in ("full", "FasterVLM-64", "DivPrune-64")
    ]
    return {"summary": summ, "per_image": per, "sensitivity": [], "config": cfg}


def test_tables_from_eval(tmp_path):
    ev = _eval()
    (tmp_path / "eval.json").write_text(json.dumps(ev))
    assert toyreport.load_eval(tmp_path)["config"]["n_test"] == 2
    q = toyreport.quality_table(ev).set_index("criterion")
    assert q.loc["recall (576 tokens)", "pass"] and not q.loc["chair_i (576 tokens)", "value"] > 0.2
    assert bool(q.loc["pope_adversarial_acc (576 tokens)", "pass"])  # 0.76 >= 0.75
    s = toyreport.summary_table(ev, "all")
    assert list(s["condition"]) == ["full", "FasterVLM-64", "DivPrune-64"] and "seconds" not in s
    with pytest.raises(AssetError, match="toyllava eval"):
        toyreport.load_eval(tmp_path / "nowhere")


def test_history_round_trip_and_plot(tmp_path):
    hist = [
        {"step": i, "loss": 5.0 / i, "lr": 1e-3, **({"val_loss": 1.0} if i % 10 == 0 else {})} for i in range(1, 31)
    ]
    write_history(tmp_path, hist, every=5)
    h = toyreport.load_history(tmp_path)
    assert list(h["step"]) == [1, 5, 10, 15, 20, 25, 30] and h["val_loss"].notna().sum() == 3
    assert toyreport.plot_history(h).axes[0].get_yscale() == "log"
    assert toyreport.load_history(tmp_path / "none").empty


def test_examples_mark_mentions_with_the_chair_parser(chair_parser):
    html = toyreport.example_outputs(_eval(), n=3)
    assert html.count("<tr>") == 2 and "(degenerate)" in html and "FasterVLM-64" in html
    ev = _eval()
    for r in ev["per_image"]:  # a two-word object, hallucinated: marked whole, in red (issue 16: test-00045)
        r["description"], r["objects"] = "A stop sign and a traffic light.", ["stop sign"]
    html = toyreport.example_outputs(ev, n=3)
    assert 'title="traffic light (hallucinated)">traffic light</span>' in html
    assert 'title="stop sign (correct)">stop sign</span>' in html


def test_n_parameters_counts_every_stored_tensor(tmp_path):
    import torch
    from safetensors.torch import save_file

    save_file(
        {"a.weight": torch.zeros(3, 4, dtype=torch.float16), "a.bias": torch.zeros(3), "b": torch.zeros(2, 2, 5)},
        str(tmp_path / "model.safetensors"),
    )
    assert toyreport.n_parameters(tmp_path) == 12 + 3 + 20

"""Notebook parameter validation: every bad value fails up front with one line naming the fix."""

from __future__ import annotations

import pytest
import torch

from prunelab.errors import AssetError, BudgetError, DeviceError, PrunelabError, UnknownNameError
from prunelab.models.loader import check_model
from prunelab.study.params import validate


def test_valid_parameters_are_normalised(tmp_path):
    p = validate(
        image_sets=["photos", "toyworld:test", f"coco:{tmp_path}"],
        methods=["fastervlm", "DivPrune"],
        budgets=[64, 128.0],
        device="cpu",
    )
    assert p.image_sets == ["photos", "toyworld:test", f"coco:{tmp_path}"]
    assert p.methods == ["FasterVLM", "DivPrune"] and p.budgets == [64, 128] and p.device == "cpu"
    assert validate(image_sets="toyworld", budgets=16).image_sets == ["toyworld:test"]


@pytest.mark.parametrize(
    "kwargs,err,words",
    [
        (dict(methods=["NoSuchPruner"]), UnknownNameError, "known methods"),
        (dict(budgets=[64, 577]), BudgetError, "1..576"),
        (dict(budgets=[0]), BudgetError, "1..576"),
        (dict(budgets=[12.5]), BudgetError, "integer"),
        (dict(budgets=[]), UnknownNameError, "budgets"),
        (dict(image_sets=["coco:/no/such/dir"]), AssetError, "does not exist"),
        (dict(image_sets=["imagenet"]), UnknownNameError, "known"),
        (dict(image_sets=["toyworld:holdout"]), UnknownNameError, "split"),
        (dict(model="no-org/no-such-model-xyz"), AssetError, "local Hugging Face cache"),
    ],
)
def test_bad_values_raise_one_line(kwargs, err, words):
    with pytest.raises(err) as ei:
        validate(**kwargs)
    msg = str(ei.value)
    assert words in msg and "\n" not in msg and isinstance(ei.value, PrunelabError)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_absent():
    with pytest.raises(DeviceError, match="device='cpu'"):
        validate(device="cuda")


def test_model_folder_checks(tmp_path):
    from safetensors.torch import save_file

    with pytest.raises(AssetError, match="config.json"):
        check_model(str(tmp_path))
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(AssetError, match="no \\*.safetensors weights"):  # a config alone cannot be loaded
        check_model(str(tmp_path))
    save_file({"w": torch.zeros(2)}, str(tmp_path / "model.safetensors"))
    assert check_model(str(tmp_path)) == tmp_path


def test_embedded_model_without_weights(monkeypatch, tmp_path):
    import prunelab.models.toyllava as T

    monkeypatch.setattr(T, "default_dir", lambda variant="toyllava": tmp_path / variant)
    with pytest.raises(AssetError, match="make toy-model"):
        check_model("toyllava")

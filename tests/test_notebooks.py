"""Smoke runs of every study notebook with its own tiny parameters (``metadata.prunelab.smoke_parameters``), the
same path ``python -m prunelab.book.build notebooks --smoke`` takes, plus the up-front parameter check."""

from __future__ import annotations

import json

import pytest

from prunelab.book import build, chapter_view

NOTEBOOKS = build.list_notebooks()


def _run(tmp_path, name, params=None):
    jobs = build.plan([name], params={name: params or {}}, smoke=True, build_dir=tmp_path, chapters_dir=None)
    (out,) = build.run(jobs, force=True, log=lambda *a, **k: None)
    return out


def test_every_notebook_declares_parameters_and_smoke_values():
    assert NOTEBOOKS, "no notebooks found"
    for name in NOTEBOOKS:
        path = build.NOTEBOOKS_DIR / f"{name}.ipynb"
        nb = json.loads(path.read_text())
        first_code = next(c for c in nb["cells"] if c["cell_type"] == "code")
        assert "parameters" in first_code["metadata"].get("tags", []), (
            f"{name}: first code cell must be tagged parameters"
        )
        smoke = build.smoke_parameters(path)
        assert smoke and set(smoke) <= set(build.declared_parameters(path)), (
            f"{name}: smoke parameters must be declared"
        )


@pytest.mark.notebook
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_smoke_run(tmp_path, name):
    out = _run(tmp_path, name)
    assert out.status == "executed", out.error
    nb = json.loads(out.output.read_text())
    errors = [o for c in nb["cells"] for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    figures = [
        o
        for c in nb["cells"]
        for o in c.get("outputs", [])
        if "image/png" in o.get("data", {}) or "image/png" in str(o.get("metadata", {}))
    ]
    glued = [o for c in nb["cells"] for o in c.get("outputs", []) if "scrapbook" in o.get("metadata", {})]
    assert figures or glued, f"{name} produced no figure"
    # What the built page must not show (prunelab.book.bookcheck): tqdm bars, a figure both glued and displayed.
    assert chapter_view.output_defects(nb) == [], name
    prov = json.loads((tmp_path / "smoke" / "provenance" / f"{name}.json").read_text())
    assert prov["injected_parameters"] == build.smoke_parameters(build.NOTEBOOKS_DIR / f"{name}.ipynb")


@pytest.mark.notebook
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_bad_budget_fails_up_front_with_one_line(tmp_path, name):
    if "budgets" not in build.declared_parameters(build.NOTEBOOKS_DIR / f"{name}.ipynb"):
        pytest.skip("no budgets parameter")
    out = _run(tmp_path, name, {"budgets": [100000]})
    assert out.status == "failed"
    assert "BudgetError" in out.error and "1..576" in out.error


@pytest.fixture(scope="module")
def llava_hf_folder(tmp_path_factory):
    from prunelab.models.tiny import save_tiny_llava_hf

    return save_tiny_llava_hf(tmp_path_factory.mktemp("llava-hf") / "tiny-llava-1.5-hf", words=["dog", "cat", "car"])


MODEL_NOTEBOOKS = [
    n
    for n in NOTEBOOKS
    if "model" in build.declared_parameters(build.NOTEBOOKS_DIR / f"{n}.ipynb")
    and not build.toy_only(build.NOTEBOOKS_DIR / f"{n}.ipynb")
]


@pytest.mark.notebook
@pytest.mark.parametrize("name", MODEL_NOTEBOOKS)
def test_notebook_runs_a_llava_hf_checkpoint_folder(tmp_path, llava_hf_folder, name):
    """The real-model path (``-p model=/path/to/llava-1.5-7b-hf``) on a tiny random llava-hf-format folder: CLIP
    tower at 336 px, Vicuna prompt, from_pretrained. Its text is noise, so this checks that every cell copes (no
    hallucination, no recall, random answers), not what the numbers are."""
    out = _run(tmp_path, name, {"model": str(llava_hf_folder)})
    assert out.status == "executed", out.error
    nb = json.loads(out.output.read_text())
    streams = "".join(
        "".join(o.get("text", ""))
        for c in nb["cells"]
        for o in c.get("outputs", [])
        if o.get("output_type") == "stream"
    )
    glued = {
        o["metadata"]["scrapbook"]["name"]: o["data"].get("application/papermill.record/text/plain")
        for c in nb["cells"]
        for o in c.get("outputs", [])
        if "scrapbook" in o.get("metadata", {})
    }
    if name == "01_erank_shortfall":  # the checkpoint's own tower and projector, not ToyLLaVA's DINOv2
        assert str(llava_hf_folder) in glued["tower"] and str(llava_hf_folder) in glued["projector_text"]
    else:
        assert f"model {llava_hf_folder} (llava_v1 prompt, 576 visual tokens)" in streams
    prov = json.loads((tmp_path / "smoke" / "provenance" / f"{name}.json").read_text())
    assert prov["parameters"]["model"] == str(llava_hf_folder)


def test_toy_chapter_is_skipped_for_another_model(tmp_path, llava_hf_folder):
    out = _run(tmp_path, "00_toy_world_and_model", {"model": str(llava_hf_folder)})
    assert out.status == "skipped" and "ToyLLaVA only" in out.error and out.output is None


@pytest.fixture(scope="module")
def qwen_folder(tmp_path_factory):
    from prunelab.models.tiny_qwen import save_tiny_qwen2_5_vl_hf

    return save_tiny_qwen2_5_vl_hf(tmp_path_factory.mktemp("qwen") / "tiny-qwen2.5-vl", words=["dog", "cat", "car"])


def _streams_and_glue(out):
    nb = json.loads(out.output.read_text())
    outputs = [o for c in nb["cells"] for o in c.get("outputs", [])]
    streams = "".join("".join(o.get("text", "")) for o in outputs if o.get("output_type") == "stream")
    glued = {
        o["metadata"]["scrapbook"]["name"]: o["data"].get("application/papermill.record/text/plain")
        for o in outputs
        if "scrapbook" in o.get("metadata", {})
    }
    return streams, glued


@pytest.mark.notebook
@pytest.mark.parametrize("name", MODEL_NOTEBOOKS)
def test_notebook_runs_a_qwen2_5_vl_folder(tmp_path, qwen_folder, name):
    """``-p model=/path/to/Qwen2.5-VL`` on a tiny random Qwen2.5-VL folder (36 merged tokens per toy image, Qwen's
    ChatML prompt) with each chapter's smoke methods, all of which Qwen2.5-VL runs (no [CLS] needed)."""
    out = _run(tmp_path, name, {"model": str(qwen_folder)})
    assert out.status == "executed", out.error
    streams, glued = _streams_and_glue(out)
    if name == "01_erank_shortfall":  # the checkpoint's own ViT and merger
        assert f"the ViT of {qwen_folder}" in glued["tower"] and str(qwen_folder) in glued["projector_text"]
    else:
        assert f"model {qwen_folder} (qwen_chatml prompt, 36 visual tokens)" in streams


@pytest.mark.notebook
def test_a_method_qwen_cannot_run_fails_the_chapter_up_front(tmp_path, qwen_folder):
    out = _run(tmp_path, "02_chair_hallucination", {"model": str(qwen_folder), "methods": ["FasterVLM", "VisionZip"]})
    assert out.status == "failed"
    assert "VisionZip cannot run on this model" in out.error and "[CLS]" in out.error


@pytest.fixture(scope="module")
def next_folder(tmp_path_factory):
    from prunelab.models.tiny_next import save_tiny_llava_next_hf

    return save_tiny_llava_next_hf(tmp_path_factory.mktemp("next") / "tiny-llava-next", words=["dog", "cat", "car"])


@pytest.mark.notebook
@pytest.mark.parametrize("name", MODEL_NOTEBOOKS)
def test_notebook_runs_a_llava_next_folder(tmp_path, next_folder, name):
    """``-p model=/path/to/llava-v1.6-hf`` on a tiny random LLaVA-NeXT folder (anyres: a 336 px toy image is a base
    tile and 2 x 2 crops, 320 visual tokens plus 16 newlines; LLaVA-1.5's Vicuna prompt, the folder having no chat
    template) with each chapter's smoke methods, all of which LLaVA-NeXT runs."""
    out = _run(tmp_path, name, {"model": str(next_folder)})
    assert out.status == "executed", out.error
    streams, glued = _streams_and_glue(out)
    if name == "01_erank_shortfall":  # the checkpoint's own tower (its base tile) and projector
        assert str(next_folder) in glued["tower"] and str(next_folder) in glued["projector_text"]
    else:
        assert f"model {next_folder} (llava_v1 prompt, 320 visual tokens)" in streams

"""The papermill build: parameter files and -p values, input keys, skip-when-unchanged, failures never replace
a good copy, provenance records."""

from __future__ import annotations

import json

import nbformat
import pytest

from prunelab.book import build
from prunelab.errors import UnknownNameError


def _notebook(path, body="y = x * 2\nprint('y is', y)"):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("x = 1", metadata={"tags": ["parameters"]}), nbformat.v4.new_code_cell(body)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


@pytest.fixture
def nbdir(tmp_path):
    d = tmp_path / "notebooks"
    d.mkdir()
    _notebook(d / "a.ipynb")
    return d


def _plan(nbdir, tmp_path, params=None):
    return build.plan(
        ["a"],
        params={"a": params or {}},
        notebooks_dir=nbdir,
        build_dir=tmp_path / "b",
        chapters_dir=tmp_path / "chapters",
    )


def test_parse_cli_params_reads_yaml_values():
    got = build.parse_cli_params(["model=/x/llava", "budgets=[64, 128]", "n_images=5", "device=cuda", "methods="])
    assert got == {"model": "/x/llava", "budgets": [64, 128], "n_images": 5, "device": "cuda", "methods": None}
    with pytest.raises(UnknownNameError, match="name=value"):
        build.parse_cli_params(["budgets"])


def test_params_file_flat_and_per_notebook(tmp_path, monkeypatch):
    monkeypatch.setattr(build, "list_notebooks", lambda *a, **k: ["a", "b"])
    flat = tmp_path / "flat.yml"
    flat.write_text("device: cuda\nseed: 3\n")
    assert build.load_params_file(flat, ["a", "b"]) == {
        "a": {"device": "cuda", "seed": 3},
        "b": {"device": "cuda", "seed": 3},
    }
    per = tmp_path / "per.yml"
    per.write_text('"*": {seed: 1}\na: {n_images: 9}\n')
    assert build.load_params_file(per, ["a", "b"]) == {"a": {"seed": 1, "n_images": 9}, "b": {"seed": 1}}
    with pytest.raises(UnknownNameError, match="does not exist"):
        build.load_params_file(tmp_path / "missing.yml", ["a"])


def test_undeclared_parameter_is_an_error(nbdir, tmp_path):
    with pytest.raises(UnknownNameError, match="declared by none"):
        _plan(nbdir, tmp_path, {"typo": 1})


def test_input_key_depends_on_parameters_source_and_notebook(nbdir, tmp_path):
    k1 = _plan(nbdir, tmp_path, {"x": 2})[0].key
    assert k1 == _plan(nbdir, tmp_path, {"x": 2})[0].key
    assert k1 != _plan(nbdir, tmp_path, {"x": 3})[0].key
    p = nbdir / "a.ipynb"
    assert build.input_key(p, {"x": 2}, "src1") != build.input_key(p, {"x": 2}, "src2")
    _notebook(p, body="y = x * 3")
    assert k1 != _plan(nbdir, tmp_path, {"x": 2})[0].key


def test_execute_skip_fail_and_provenance(nbdir, tmp_path):
    logs = []
    (o,) = build.run(_plan(nbdir, tmp_path, {"x": 21}), log=logs.append)
    assert o.status == "executed"
    nb = json.loads(o.output.read_text())
    assert any("y is 42" in "".join(out.get("text", "")) for c in nb["cells"] for out in c.get("outputs", []))
    prov = json.loads((tmp_path / "b" / "provenance" / "a.json").read_text())
    assert prov["parameters"] == {"x": 21} and prov["injected_parameters"] == {"x": 21}
    assert prov["wall_time_s"] > 0 and {"torch", "python"} <= set(prov["packages"]) and prov["device"]["cpus"] >= 1
    # The published chapter is the executed notebook with its code folded but the parameters (chapter_view).
    published = json.loads((tmp_path / "chapters" / "a.ipynb").read_text())
    assert [c["source"] for c in published["cells"]] == [c["source"] for c in nb["cells"]]
    assert [c["metadata"]["tags"] for c in published["cells"]] == [
        ["parameters"],
        ["injected-parameters"],
        ["hide-input"],
    ]
    # Unchanged inputs: skipped.
    (o2,) = build.run(_plan(nbdir, tmp_path, {"x": 21}), log=logs.append)
    assert o2.status == "up-to-date"
    # A failing run names the cell and error, keeps the last good copy, leaves the failed copy beside it.
    good = o.output.read_bytes()
    _notebook(nbdir / "a.ipynb", body="raise ValueError('bad budget: pick 1..576')")
    (o3,) = build.run(_plan(nbdir, tmp_path, {"x": 21}), log=logs.append)
    assert o3.status == "failed" and "ValueError: bad budget" in o3.error
    assert o.output.read_bytes() == good and (tmp_path / "b" / "notebooks" / "a.failed.ipynb").exists()


def test_sync_chapters_removes_stale(tmp_path):
    (tmp_path / "old.ipynb").write_text("{}")
    (tmp_path / "a.ipynb").write_text("{}")
    build.sync_chapters(["a"], tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.ipynb"]


def test_parallel_runs_start_the_longest_notebook_first(tmp_path):
    d = tmp_path / "nbs"
    d.mkdir()
    for name, secs in (("a", 10), ("b", None), ("c", 300), ("d", 10)):
        p = _notebook(d / f"{name}.ipynb")
        if secs is not None:
            nb = nbformat.read(p, as_version=4)
            nb.metadata["prunelab"] = {"expected_s": secs}
            nbformat.write(nb, p)
    jobs = build.plan(["a", "b", "c", "d"], notebooks_dir=d, build_dir=tmp_path / "b", chapters_dir=None)
    assert build.expected_seconds(d / "b.ipynb") == 0
    assert [j.name for j in build.execution_order(jobs, 1)] == ["a", "b", "c", "d"]
    assert [j.name for j in build.execution_order(jobs, 2)] == ["c", "a", "d", "b"]


def test_kernel_threads_share_the_cpus_and_restore_the_environment(monkeypatch):
    import os

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setenv("MKL_NUM_THREADS", "7")  # the caller's own choice is kept
    with build.kernel_threads(2, cpus=2):
        assert os.environ["OMP_NUM_THREADS"] == "1" and os.environ["MKL_NUM_THREADS"] == "7"
    assert "OMP_NUM_THREADS" not in os.environ and os.environ["MKL_NUM_THREADS"] == "7"
    with build.kernel_threads(3, cpus=16):
        assert os.environ["OMP_NUM_THREADS"] == "5"
    with build.kernel_threads(1, cpus=2):  # one kernel: torch's own default
        assert "OMP_NUM_THREADS" not in os.environ


def test_concurrent_builds_of_one_notebook_use_distinct_temporary_files(nbdir, tmp_path, monkeypatch):
    """Two builds of one notebook overlap (another shell, another --jobs pool): each must write its own temporary
    copy, so neither overwrites nor publishes the other's half-executed notebook (issue 13, item 14)."""
    import os

    import papermill

    job = _plan(nbdir, tmp_path)[0]
    job.output_dir.mkdir(parents=True)
    # What another build of "a" has on disk under the old fixed name while it runs.
    other = job.output_dir / ".a.running.ipynb"
    other.write_text("the other build's notebook")
    written = []

    def fake_execute(src, out, **kw):
        written.append(out)
        nb = nbformat.read(src, as_version=4)
        nb.cells[1].source = f"# run {len(written)}"
        nbformat.write(nb, out)
        if len(written) == 1:  # a second build starts while the first one is still executing
            assert build.execute_job(job).status == "executed"
        assert nbformat.read(out, as_version=4).cells[1].source == f"# run {written.index(out) + 1}"

    monkeypatch.setattr(papermill, "execute_notebook", fake_execute)
    assert build.execute_job(job).status == "executed"
    assert len(written) == 2 and written[0] != written[1]
    assert all(str(os.getpid()) in os.path.basename(w) for w in written)
    assert other.read_text() == "the other build's notebook"  # untouched
    assert not [p for p in job.output_dir.iterdir() if p.name.endswith(".running.ipynb") and p != other]

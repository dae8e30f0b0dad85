"""Bad parameters fail up front, in one line naming the parameter (or file) and the fix (issue 13, items 7, 9, 10,
11): one vocabulary across the notebooks, the README's GPU command planned through the build, budgets never
truncated, empty method lists refused, unreadable weights and bad YAML named. Nothing here executes a notebook."""

from __future__ import annotations

import json
import re
import shlex
import struct

import pytest
import torch

from prunelab.book import build
from prunelab.errors import AssetError, BudgetError, PrunelabError, UnknownNameError
from prunelab.models import loader
from prunelab.paths import REPO_ROOT
from prunelab.study import generation, params, runner

NB = build.NOTEBOOKS_DIR


def _one_line(err) -> str:
    msg = str(err.value)
    assert "\n" not in msg and isinstance(err.value, PrunelabError), msg
    return msg


def _weights(folder, config=None):
    """A folder with a config.json and a small, valid safetensors file."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config or {"model_type": "llava"}))
    save_file({"w": torch.zeros(4, 4)}, str(folder / "model.safetensors"))
    return folder


def _notebook(path, params_src, meta=None):
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell(params_src, metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell("print('ran')"),
    ]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    if meta:
        nb.metadata["prunelab"] = meta
    nbformat.write(nb, path)


# --------------------------------------------------------------------------------------------------------------
# Item 7: one vocabulary; the README's GPU command; toy-only chapter skipped; parameters a notebook cannot take


def test_notebooks_share_one_parameter_vocabulary():
    """A declared name may not be a variant (plural/singular) of a shared name: `image_sets` in chapter 01 made
    `-p image_set=...` silently miss it."""

    def stem(s):
        return s[:-1] if s.endswith("s") else s

    vocab = {stem(v): v for v in params.VOCABULARY}
    for name in build.list_notebooks():
        for p in build.declared_parameters(NB / f"{name}.ipynb"):
            assert p in params.VOCABULARY or stem(p) not in vocab, (
                f"{name} declares {p!r}; the shared name is {vocab[stem(p)]!r}"
            )


def _readme_gpu_params(model, coco):
    readme = (REPO_ROOT / "README.md").read_text()
    cmd = re.search(r"python -m prunelab\.book\.build notebooks(.*?)```", readme, re.S).group(1).replace("\\\n", " ")
    items = [tok for flag, tok in zip(shlex.split(cmd), shlex.split(cmd)[1:]) if flag == "-p"]
    items = [
        i.replace("/path/to/llava-1.5-7b-hf", str(model))
        .replace("/path/to/val2014", str(coco))
        .replace("device=cuda", "device=cpu")
        for i in items
    ]  # the test machine has no GPU
    return build.parse_cli_params(items)


def test_readme_gpu_command_plans_every_chapter(tmp_path):
    model, coco = _weights(tmp_path / "llava-1.5-7b-hf"), tmp_path / "val2014"
    coco.mkdir()
    cli = _readme_gpu_params(model, coco)
    assert set(cli) == {"model", "device", "image_set", "n_images"}
    names = build.list_notebooks()
    jobs = {
        j.name: j
        for j in build.plan(names, params={n: dict(cli) for n in names}, build_dir=tmp_path / "b", chapters_dir=None)
    }
    toy = jobs["00_toy_world_and_model"]
    assert build.toy_only(toy.input_path) and toy.skip and "ToyLLaVA only" in toy.skip and str(model) in toy.skip
    assert jobs["01_erank_shortfall"].parameters["image_set"] == f"coco:{coco}"  # it used to run toyworld + photos
    for n in ("02_chair_hallucination", "03_simple_vs_complex", "04_adaptive_pruning"):
        assert jobs[n].parameters == {**cli} and not jobs[n].notes and not jobs[n].skip
    glance = jobs["00_methods_at_a_glance"]
    assert glance.notes == ["does not take model; it runs with its own default(s) for those"]
    assert "model" not in glance.parameters and glance.parameters["image_set"] == f"coco:{coco}"
    # The embedded model keeps the toy chapter.
    (toy2,) = build.plan(
        ["00_toy_world_and_model"],
        params={"00_toy_world_and_model": {"model": "toyllava"}},
        build_dir=tmp_path / "b",
        chapters_dir=None,
    )
    assert not toy2.skip


def test_run_reports_notes_and_skips_before_executing(tmp_path):
    d = tmp_path / "nbs"
    d.mkdir()
    _notebook(d / "a_toy.ipynb", "model = 'toyllava'\nseed = 0", {"toy_only": True})
    _notebook(d / "b_vision.ipynb", "image_set = 'photos'\nseed = 0")
    folder = _weights(tmp_path / "llava")
    jobs = build.plan(
        ["a_toy", "b_vision"],
        params={n: {"model": str(folder), "seed": 1} for n in ("a_toy", "b_vision")},
        notebooks_dir=d,
        build_dir=tmp_path / "b",
        chapters_dir=None,
    )
    logs = []
    outcomes = {o.name: o for o in build.run(jobs, log=logs.append)}
    assert outcomes["a_toy"].status == "skipped" and outcomes["b_vision"].status == "executed"
    assert not (tmp_path / "b" / "notebooks" / "a_toy.ipynb").exists()
    first_exec = next(i for i, line in enumerate(logs) if "executing" in line)
    said = logs[:first_exec]
    assert any("b_vision: does not take model" in line for line in said)
    assert any("a_toy: skipped" in line and "ToyLLaVA only" in line for line in said)


def test_toy_model_detection(tmp_path):
    assert loader.is_toy_model("toyllava") and loader.is_toy_model("toyllava-subset")
    assert loader.is_toy_model(_weights(tmp_path / "toy", {"model_type": "llava", "toyllava_vocab_digest": "ab"}))
    assert not loader.is_toy_model(_weights(tmp_path / "llava")) and not loader.is_toy_model("/no/such/dir")
    with pytest.raises(UnknownNameError) as ei:
        params.validate(model=str(tmp_path / "llava"), toy_only=True)
    assert "ToyLLaVA" in _one_line(ei) and "skips" in _one_line(ei)


# --------------------------------------------------------------------------------------------------------------
# Item 9: budgets are integers, never truncated; strings from -p are split, not read character by character


@pytest.mark.parametrize("bad", [[1.5], [16.7], [True], ["64"], "64", [64, "128"]])
def test_run_vision_refuses_non_integral_budgets(bad):
    # An empty image list fails right after the budget check: a truncated budget would reach it.
    with pytest.raises(BudgetError) as ei:
        runner.run_vision([], ["FasterVLM"], bad)
    assert "integer" in _one_line(ei)


def test_string_budgets_are_refused_not_split_into_characters():
    with pytest.raises(BudgetError) as ei:
        params.validate(budgets="64")
    assert "'64'" in _one_line(ei) and "'6'" not in _one_line(ei)


def test_build_reads_budgets_64_and_64_128(tmp_path):
    d = tmp_path / "nbs"
    d.mkdir()
    _notebook(d / "a.ipynb", "budgets = [64, 128]\nmethods = ['FasterVLM']")

    def injected(**given):
        (job,) = build.plan(["a"], params={"a": given}, notebooks_dir=d, build_dir=tmp_path / "b", chapters_dir=None)
        return job.parameters

    assert injected(**build.parse_cli_params(["budgets=64,128"])) == {"budgets": [64, 128]}
    assert injected(budgets="64") == {"budgets": [64]}
    assert injected(budgets="[64, 128]") == {"budgets": [64, 128]}
    assert injected(methods="FasterVLM, DivPrune") == {"methods": ["FasterVLM", "DivPrune"]}
    with pytest.raises(BudgetError) as ei:
        injected(budgets="64,12.5")
    assert _one_line(ei).startswith("a: budget must be an integer") and "12.5" in _one_line(ei)


@pytest.mark.parametrize(
    "bad,words",
    [([0], "keeps no visual token"), ([1.5], "integer"), ("64", "string"), ([True], "integer"), ([], "empty")],
)
def test_run_generation_budgets_fail_before_the_model_is_touched(bad, words):
    # model=None cannot be loaded: any error other than the budget's would come from it.
    with pytest.raises((BudgetError, UnknownNameError)) as ei:
        generation.run_generation(None, [], ["FasterVLM"], bad)
    msg = _one_line(ei)
    assert words in msg and "1073741824" not in msg and "1,073,741,824" not in msg


# --------------------------------------------------------------------------------------------------------------
# Item 10: empty or null methods refused up front


@pytest.mark.parametrize("name", ["02_chair_hallucination", "03_simple_vs_complex", "04_adaptive_pruning"])
def test_null_methods_refused_by_the_build_where_none_has_no_meaning(tmp_path, name):
    with pytest.raises(UnknownNameError) as ei:
        build.plan([name], params={name: build.parse_cli_params(["methods="])}, build_dir=tmp_path, chapters_dir=None)
    assert _one_line(ei).startswith(f"{name}: methods is null")


@pytest.mark.parametrize("name", build.list_notebooks())
def test_empty_methods_refused_by_the_build(tmp_path, name):
    if "methods" not in build.declared_parameters(NB / f"{name}.ipynb"):
        pytest.skip("no methods parameter")
    with pytest.raises(UnknownNameError) as ei:
        build.plan([name], params={name: {"methods": []}}, build_dir=tmp_path, chapters_dir=None)
    assert "methods is empty" in _one_line(ei)


def test_null_methods_keep_their_meaning_where_declared(tmp_path):
    # Chapters 00 (glance) and 01 declare methods=None as "every image-only method".
    for name in ("00_methods_at_a_glance", "01_erank_shortfall"):
        assert build.declared_parameters(NB / f"{name}.ipynb")["methods"] is None
        (job,) = build.plan([name], params={name: {"methods": None}}, build_dir=tmp_path, chapters_dir=None)
        assert job.parameters == {"methods": None}


def test_empty_or_null_methods_in_the_library():
    with pytest.raises(UnknownNameError, match="methods is empty"):
        params.validate(methods=[])
    with pytest.raises(UnknownNameError, match="methods is null"):
        params.validate(methods=None, methods_required=True)
    assert params.validate(methods=None).methods is None
    with pytest.raises(UnknownNameError, match="methods is empty"):
        generation.run_generation(None, [], [], [64])
    with pytest.raises(UnknownNameError, match="methods is None"):
        runner.run_vision([], None, [64])


# --------------------------------------------------------------------------------------------------------------
# Item 11: corrupt or pickle weights, bad YAML, scalar parameters before the model, max_new_tokens=0, paths


def test_corrupt_safetensors_named_before_loading(tmp_path):
    folder = _weights(tmp_path / "m", {"model_type": "llava", "toyllava_vocab_digest": "ab"})
    good = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(b"\xff" * 64)  # "header too large" to safetensors
    with pytest.raises(AssetError) as ei:
        loader.load_generation_model(str(folder), device="cpu")
    msg = _one_line(ei)
    assert str(folder / "model.safetensors") in msg and "corrupt" in msg and "copy" in msg
    (folder / "model.safetensors").write_bytes(good[:-8])  # cut short: the table promises more data
    with pytest.raises(AssetError, match="truncated"):
        loader.check_model(str(folder))
    (n,) = struct.unpack("<Q", good[:8])
    (folder / "model.safetensors").write_bytes(good[:8] + b"{" * n + good[8 + n :])
    with pytest.raises(AssetError, match="unreadable header"):
        loader.check_model(str(folder))


def test_pickle_only_checkpoint_refused_with_the_fix(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    torch.save({"w": torch.zeros(2)}, folder / "pytorch_model.bin")
    with pytest.raises(AssetError) as ei:
        loader.check_model(str(folder))
    msg = _one_line(ei)
    assert "pytorch_model.bin" in msg and "pickle" in msg and "safe_serialization=True" in msg
    assert "weights_only" not in msg


def test_sharded_checkpoint_with_a_missing_shard(tmp_path):
    folder = _weights(tmp_path / "m")
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"w": "model.safetensors", "v": "model-00002-of-00002.safetensors"}})
    )
    with pytest.raises(AssetError, match="model-00002-of-00002.safetensors"):
        loader.check_model(str(folder))


@pytest.mark.parametrize("model", ["/no/such/llava-1.5-7b-hf", "./models/llava", "~/nowhere/llava", "a/b/c"])
def test_path_like_model_is_not_sent_to_the_hub(model):
    with pytest.raises(AssetError) as ei:
        loader.check_model(model)
    msg = _one_line(ei)
    assert "does not exist" in msg and "huggingface-cli" not in msg


def test_bad_yaml_in_p_and_params_file_is_one_line(tmp_path, capsys):
    with pytest.raises(UnknownNameError) as ei:
        build.parse_cli_params(["budgets=[64, 128"])
    assert "-p 'budgets=[64, 128'" in _one_line(ei) and "YAML" in _one_line(ei)
    bad = tmp_path / "p.yml"
    bad.write_text("budgets: [64, 128\nseed: 0\n")
    with pytest.raises(UnknownNameError) as ei:
        build.load_params_file(bad, ["a"])
    assert str(bad) in _one_line(ei) and "line" in _one_line(ei)
    assert build.main(["notebooks", "--params-file", str(bad)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(bad) in err and "Traceback" not in err


@pytest.mark.parametrize(
    "given,words",
    [
        ({"seed": "0"}, "seed must be"),
        ({"seed": -1}, "seed must be"),
        ({"n_images": 0}, "n_images must be"),
        ({"n_images": True}, "n_images must be"),
        ({"max_new_tokens": 0}, "max_new_tokens must be"),
        ({"results_dir": 5}, "results_dir must be"),
    ],
)
def test_scalar_parameters_checked_before_the_model(tmp_path, given, words):
    # The model folder does not exist: its error would come first if the scalars were checked after it.
    with pytest.raises(PrunelabError) as ei:
        params.validate(model=str(tmp_path / "missing-model"), **given)
    assert words in _one_line(ei)
    with pytest.raises(PrunelabError) as ei:  # and the build refuses the same values before running anything
        build.plan(
            ["02_chair_hallucination"], params={"02_chair_hallucination": given}, build_dir=tmp_path, chapters_dir=None
        )
    assert words in _one_line(ei)


def test_results_dir_that_cannot_be_a_folder(tmp_path):
    f = tmp_path / "a-file"
    f.write_text("x")
    for bad in (f, f / "sub"):
        with pytest.raises(AssetError) as ei:
            params.validate(results_dir=str(bad))
        assert "results_dir" in _one_line(ei)
    assert params.validate(results_dir=str(tmp_path / "new" / "deeper")).results_dir == tmp_path / "new" / "deeper"
    assert not (tmp_path / "new").exists()  # checking creates nothing


def test_max_new_tokens_zero_is_not_the_default():
    assert params.validate(max_new_tokens=None).max_new_tokens is None
    assert params.validate(max_new_tokens=8).max_new_tokens == 8
    with pytest.raises(UnknownNameError, match="max_new_tokens must be a positive integer"):
        params.validate(max_new_tokens=0)


def _validation_of(name: str, **values):
    """Run a notebook's parameters cell, then (with ``values`` overriding it, as papermill would) the imports and
    the ``P = ...`` validation statement of its next code cell: the notebook's own up-front check, without
    loading a model or running the rest."""
    import ast

    nb = json.loads((NB / f"{name}.ipynb").read_text())
    params_cell, first = [c for c in nb["cells"] if c["cell_type"] == "code"][:2]
    ns: dict = {}
    exec("".join(params_cell["source"]), ns)
    ns.update(values)
    tree = ast.parse("".join(first["source"]))
    keep = [
        n
        for n in tree.body
        if isinstance(n, (ast.Import, ast.ImportFrom))
        or (isinstance(n, ast.Assign) and getattr(n.targets[0], "id", None) == "P")
    ]
    exec(compile(ast.Module(keep, []), name, "exec"), ns)
    return ns["P"]


BAD_IN_NOTEBOOK = [
    ("methods", [], "methods is empty"),
    ("seed", "0", "seed must be"),
    ("n_images", 0, "n_images must be"),
    ("max_new_tokens", 0, "max_new_tokens must be"),
    ("results_dir", 5, "results_dir must be"),
]


@pytest.mark.parametrize("name", build.list_notebooks())
def test_each_notebook_validates_its_parameters_up_front(name):
    declared = build.declared_parameters(NB / f"{name}.ipynb")
    bad = list(BAD_IN_NOTEBOOK)
    if declared.get("methods", None) is not None:  # None has no "every method" meaning there (chapters 02-04)
        bad.append(("methods", None, "methods is null"))
    _validation_of(name)  # the defaults pass
    for param, value, words in bad:
        if param in declared:
            with pytest.raises(PrunelabError, match=words):
                _validation_of(name, **{param: value})

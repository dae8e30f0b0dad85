"""prunelab inside lmms-eval (:mod:`prunelab.lmms`): task files, scoring, erank statistics, and offline runs of
``--model prunelab`` on the embedded ToyLLaVA in one process and under ``torchrun --nproc_per_node 2`` on CPU.

The task, scoring and statistics tests need no lmms-eval; the runs use the overlay venv ``.venv-lmms`` that
``make lmms`` builds (lmms-eval's pins kept out of ``.venv``) and skip without it.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path

import pytest
import torch

from prunelab.errors import CapabilityError
from prunelab.eval.pope import pope_metrics
from prunelab.lmms import stats as S
from prunelab.lmms.tasks import TASK_YAMLS, build, scoring
from prunelab.toyworld import get_scene, pope_questions

ROOT = Path(__file__).resolve().parents[1]
TASKS = "prunelab_pope_toy,prunelab_chair_toy"
LIMIT = 5  # 5 documents per task: odd, so the second rank is padded by repetition


def test_build_writes_the_scenes_questions_and_yamls(tmp_path):
    counts = build(tmp_path, n=2)
    pope = json.loads((tmp_path / "pope_toy.json").read_text())
    chair = json.loads((tmp_path / "chair_toy.json").read_text())
    want = [q for i in range(2) for q in pope_questions(get_scene("test", i), "adversarial")]
    assert counts == {"pope": len(want), "chair": 2}
    assert [(d["question"], d["answer"]) for d in pope] == [(q["question"], q["answer"]) for q in want]
    assert [d["objects"] for d in chair] == [get_scene("test", i).categories for i in range(2)]
    assert all(Path(d["image"]).is_file() for d in pope + chair)
    assert all((tmp_path / y).is_file() for y in TASK_YAMLS)
    assert S.image_paths(tmp_path) == sorted(Path(d["image"]) for d in chair)


def test_pope_aggregation_counts_a_padded_document_once():
    recs = [
        {"question_id": "a", "image_id": "x", "label": "yes", "answer": "Yes"},
        {"question_id": "b", "image_id": "x", "label": "no", "answer": "Yes"},
        {"question_id": "c", "image_id": "y", "label": "yes", "answer": "No"},
    ]
    # one of three right, and repeating a document (lmms-eval's padding of a short rank) changes nothing
    assert scoring.pope_accuracy(recs) == pytest.approx(1 / 3)
    assert scoring.pope_accuracy(recs + [recs[0], recs[0]]) == pytest.approx(1 / 3)
    # the yes-ratio counts the answers: 0 when every answer is "No", though two of the three labels are "yes"
    assert scoring.pope_yes_ratio([dict(r, answer="No") for r in recs]) == 0.0
    assert scoring.pope_f1(recs) == pytest.approx(pope_metrics(["yes", "no", "yes"], ["Yes", "Yes", "No"]).f1)


def test_chair_aggregation_scores_against_the_scene_categories():
    recs = [
        {"image_id": "s1", "objects": ["dog"], "caption": "A dog and a cat."},
        {"image_id": "s2", "objects": ["cat"], "caption": "A cat."},
    ]
    assert scoring.chair_s(recs + [recs[0]]) == pytest.approx(0.5)  # the cat in s1 is hallucinated
    assert scoring.chair_i(recs) == pytest.approx(1 / 3)
    assert scoring.chair_recall(recs) == pytest.approx(1.0)


def test_stats_file_must_match_the_method_options(tmp_path):
    good = {
        "format": S.FORMAT,
        "spec": {"features": "vision", "center": False, "row_normalize": False, "spectrum": "singular"},
        "stats": {"mean": 5.0, "min": 1.0, "max": 9.0, "std": 1.0, "n": 3},
        "model": "m",
    }
    S.save_stats(tmp_path / "s.json", good)
    assert S.load_stats(tmp_path / "s.json", S.make_pruner("agilepruner"), "m")["mean"] == 5.0
    with pytest.raises(CapabilityError, match="erank_center|center"):
        S.load_stats(tmp_path / "s.json", S.make_pruner("agilepruner", {"erank_center": True}))
    with pytest.raises(CapabilityError, match="another model"):
        S.load_stats(tmp_path / "s.json", S.make_pruner("agilepruner"), "other")


# ---------------------------------------------------------------------------------------------------------------
# Runs (lmms-eval installed)


LMMS_PY = ROOT / ".venv-lmms" / "bin" / "python"  # make lmms: lmms-eval's pins over .venv's packages


def _lmms_ready() -> str | None:
    if not LMMS_PY.is_file():
        return f"no lmms-eval venv at {LMMS_PY.parent.parent}; run make lmms"
    probe = (
        "import lmms_eval.evaluator; from importlib.metadata import entry_points; "
        "assert any(e.name == 'prunelab' for e in entry_points(group='lmms_eval.models')), 'no prunelab entry point'"
    )
    r = subprocess.run([str(LMMS_PY), "-c", probe], capture_output=True, text=True)
    return None if r.returncode == 0 else f"lmms-eval venv not usable ({r.stderr.strip()[-200:]}); run make lmms"


needs_lmms = pytest.mark.skipif(_lmms_ready() is not None, reason=str(_lmms_ready()))


def _env(tmp: Path) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1")
    env["HF_DATASETS_CACHE"] = str(tmp / "hf-datasets")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "lib"), env.get("PYTHONPATH")) if p)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _eval(tmp: Path, out: str, model_args: str, nproc: int = 1) -> subprocess.CompletedProcess:
    launch = [str(LMMS_PY)]
    if nproc > 1:
        launch += ["-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port", str(_free_port())]
    cmd = launch + ["-m", "prunelab.lmms", "eval", "--model", "prunelab", "--model_args", model_args, "--tasks", TASKS]
    cmd += [
        "--include_path",
        str(tmp / "data"),
        "--limit",
        str(LIMIT),
        "--log_samples",
        "--output_path",
        str(tmp / out),
    ]
    return subprocess.run(cmd, env=_env(tmp), capture_output=True, text=True, timeout=900)


def _records(out: Path) -> dict:
    """``{task: {doc_id: text}}`` from the samples files; a padded (repeated) document must agree with itself."""
    recs: dict = {}
    for f in sorted(out.rglob("*_samples_*.jsonl")):
        task = f.stem.split("_samples_", 1)[1]
        for line in f.read_text().splitlines():
            d = json.loads(line)
            prev = recs.setdefault(task, {}).setdefault(d["doc_id"], d["filtered_resps"])
            assert prev == d["filtered_resps"], f"{task} doc {d['doc_id']} answered twice differently"
    return recs


def _metrics(out: Path) -> dict:
    (f,) = sorted(out.rglob("*_results.json"))
    res = json.loads(f.read_text())["results"]
    return {t: {k: v for k, v in m.items() if not k.startswith(("alias", "samples"))} for t, m in res.items()}


@pytest.fixture(scope="module")
def lmms_runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lmms")
    build(tmp / "data", n=2)
    env = _env(tmp)
    cal = [str(LMMS_PY), "-m", "prunelab.lmms", "calibrate", str(tmp / "data"), "--method", "agilepruner"]
    r = subprocess.run(
        cal + ["--device", "cpu", "-o", str(tmp / "stats.json")], env=env, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr[-2000:]
    args = f"pretrained=toyllava,method=agilepruner,budget=64,erank_stats={tmp / 'stats.json'},device=cpu"
    one = _eval(tmp, "one", args)
    assert one.returncode == 0, one.stdout[-3000:] + one.stderr[-3000:]
    two = _eval(tmp, "two", args, nproc=2)
    assert two.returncode == 0, two.stdout[-3000:] + two.stderr[-3000:]
    return tmp, args


@needs_lmms
def test_one_and_two_processes_give_the_same_records(lmms_runs):
    tmp, _ = lmms_runs
    one, two = _records(tmp / "one"), _records(tmp / "two")
    assert set(one) == {"prunelab_pope_toy", "prunelab_chair_toy"}
    assert all(sorted(v) == list(range(min(LIMIT, len(v)))) for v in one.values()), one
    assert one == two
    assert _metrics(tmp / "one") == _metrics(tmp / "two")


@needs_lmms
def test_the_plugin_answers_as_prunelab_does(lmms_runs):
    """The POPE answers equal the adapter's own greedy run on the same prompt, image, method, budget and stats."""
    from PIL import Image

    from prunelab.models.loader import load_generation_model

    tmp, _ = lmms_runs
    torch.set_num_threads(1)
    gm = load_generation_model("toyllava", device="cpu")
    pruner = S.make_pruner("agilepruner")
    stats = S.load_stats(tmp / "stats.json", pruner, gm.fingerprint)
    docs = json.loads((tmp / "data" / "pope_toy.json").read_text())[:LIMIT]
    got = _records(tmp / "one")["prunelab_pope_toy"]
    for k, d in enumerate(docs):
        with Image.open(d["image"]) as im:
            pv = gm.pixels(im.convert("RGB"))
        ids = torch.tensor(gm.prompt_ids(d["question"]))
        out = gm.adapter.run(
            [ids], pv, pruner, 64, max_new_tokens=8, erank_stats=stats, eos_token_id=gm.tokenizer.eos_token_id
        )
        assert got[k] == out.texts[0], (k, d["question"])


@needs_lmms
def test_a_failed_run_exits_non_zero(lmms_runs):
    tmp, _ = lmms_runs
    # AgilePruner without its erank statistics: the model refuses to start; lmms-eval itself would exit 0
    r = _eval(tmp, "bad", "pretrained=toyllava,method=agilepruner,budget=64,device=cpu")
    assert r.returncode == 1, r.stdout[-2000:] + r.stderr[-2000:]
    assert "reads dataset erank statistics" in r.stdout + r.stderr
    assert "wrote no results" in r.stderr


_ARG_CHECKS = """
import sys
from pathlib import Path
from prunelab.errors import CapabilityError, UnknownNameError
from prunelab.lmms.model import PrunelabLMM

from PIL import Image
from prunelab.models.tiny_next import save_tiny_llava_next_hf

# every family the loader loads is served: a tiny LLaVA-NeXT folder answers through the plugin
folder = save_tiny_llava_next_hf(Path(sys.argv[1]) / "next", words=["Is", "there", "a", "dog", "?"])
lm = PrunelabLMM(pretrained=str(folder), method="FasterVLM", budget=16, device="cpu")
answer = lm._generate("Is there a dog?", [Image.new("RGB", (336, 336), (90, 120, 30))], {"max_new_tokens": 2})
assert isinstance(answer, str), answer
for kwargs, err, text in (
    (dict(pretrained="toyllava", budgte=64), UnknownNameError, "unknown prunelab model args"),
    (dict(pretrained="toyllava", batch_size=4), CapabilityError, "one request at a time"),
):
    try:
        PrunelabLMM(**kwargs)
    except err as e:
        assert text in str(e), (kwargs, str(e))
    else:
        raise SystemExit(f"no error for {kwargs}")
print("ok")
"""


@needs_lmms
def test_model_args_are_checked_before_loading(tmp_path):
    r = subprocess.run(
        [str(LMMS_PY), "-c", _ARG_CHECKS, str(tmp_path)], env=_env(tmp_path), capture_output=True, text=True
    )
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stdout[-2000:] + r.stderr[-2000:]

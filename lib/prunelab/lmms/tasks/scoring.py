"""The lmms-eval task functions of the toy-world tasks: images, prompts, and scoring with prunelab's own metrics.

lmms-eval's built-in POPE scores by exact string match and its ``pope_yes_ratio`` counts the ground truth, not the
answers; its CHAIR needs NLTK data. These functions score instead with :func:`prunelab.eval.pope.pope_metrics`
(POPE's ``evaluate.py`` answer rule, yes-ratio of the answers) and :func:`prunelab.eval.chair.evaluate_chair`
(CHAIR_S / CHAIR_I / recall of OPERA's ``chair.py``). The task YAMLs name them as
``!function prunelab.lmms.tasks.scoring.<name>`` (lmms-eval falls back to importing the module).

Each ``process_results`` returns one record per document under every metric key; an aggregation receives the
records of all ranks and de-duplicates them by question / image id, so a document that lmms-eval repeated to pad a
rank counts once.
"""

from __future__ import annotations

from PIL import Image

from prunelab.eval.chair import evaluate_chair
from prunelab.eval.groundtruth import toyworld_ground_truth
from prunelab.eval.pope import pope_metrics

POPE_METRICS = ("pope_accuracy", "pope_precision", "pope_recall", "pope_f1", "pope_yes_ratio")
CHAIR_METRICS = ("chair_s", "chair_i", "chair_recall", "chair_length")


def doc_to_visual(doc: dict) -> list:
    with Image.open(doc["image"]) as im:
        return [im.convert("RGB")]


def pope_doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    kw = lmms_eval_specific_kwargs or {}
    return f"{kw.get('pre_prompt', '')}{doc['question']}{kw.get('post_prompt', '')}"


def chair_doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    kw = lmms_eval_specific_kwargs or {}
    return f"{kw.get('pre_prompt', '')}{doc['prompt']}{kw.get('post_prompt', '')}"


def _answer(results) -> str:
    return results[0] if results else ""


def pope_process_results(doc: dict, results) -> dict:
    rec = {"question_id": doc["question_id"], "image_id": doc["image_id"], "label": doc["answer"]}
    rec["answer"] = _answer(results)
    return {k: rec for k in POPE_METRICS}


def chair_process_results(doc: dict, results) -> dict:
    rec = {"image_id": doc["image_id"], "objects": list(doc["objects"]), "caption": _answer(results)}
    return {k: rec for k in CHAIR_METRICS}


def _unique(records: list[dict], key: str) -> list[dict]:
    seen: dict = {}
    for r in records:
        seen.setdefault(r[key], r)
    return [seen[k] for k in sorted(seen)]


def pope_result(records: list[dict]):
    """:class:`~prunelab.eval.pope.PopeResult` of the de-duplicated records (POPE's reference answer rule)."""
    recs = _unique(records, "question_id")
    return pope_metrics([r["label"] for r in recs], [r["answer"] for r in recs])


def chair_result(records: list[dict]):
    """:class:`~prunelab.eval.chair.ChairResult` of the de-duplicated captions against the scenes' categories."""
    recs = _unique(records, "image_id")
    gt = toyworld_ground_truth(labels={r["image_id"]: r["objects"] for r in recs})
    return evaluate_chair({r["image_id"]: r["caption"] for r in recs}, gt, on_bad="flag")


def pope_accuracy(records):
    return pope_result(records).accuracy


def pope_precision(records):
    return pope_result(records).precision


def pope_recall(records):
    return pope_result(records).recall


def pope_f1(records):
    return pope_result(records).f1


def pope_yes_ratio(records):
    return pope_result(records).yes_ratio


def chair_s(records):
    return chair_result(records).chair_s


def chair_i(records):
    return chair_result(records).chair_i


def chair_recall(records):
    return chair_result(records).recall


def chair_length(records):
    return chair_result(records).length

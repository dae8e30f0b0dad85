"""POPE: polling-based object probing (Li et al., EMNLP 2023) — question sets and metrics.

Reference: ``AoiDragon/POPE`` (``main.py``, ``utils.py::pope``, ``utils.py::compute_co_occurrence``,
``evaluate.py``); LLaVA's ``llava/eval/eval_pope.py`` applies the same answer rule. Semantics followed:

* images with at least ``sample_num`` (3) ground-truth objects are eligible; ``n_images`` of them are sampled;
* object frequencies and co-occurrence counts are computed over the *selected* image set;
* for each of ``sample_num`` positive objects of an image, one "yes" question, then one "no" question whose object
  is chosen by the setting, never an object of the image nor one already asked about for it:
  ``random`` — uniform over all objects seen in the set; ``popular`` — the most frequent such object;
  ``adversarial`` — the object co-occurring most often with that positive; the last two fall back to a random
  object when the ranked list is exhausted;
* prompt ``"Is there a {} in the image?"`` with "an" before a vowel;
* metrics with "yes" as the positive class: accuracy, precision, recall, F1, yes-ratio.

Choices where the reference is silent or not reproducible (documented, parameterised):

* all randomness comes from ``random.Random(seed)`` (the reference is unseeded); ties in frequency /
  co-occurrence rankings are broken by category name (the reference's order depends on dict insertion order);
* positives: ``positives="first"`` takes the first ``sample_num`` objects in COCO category order (the reference
  takes the file's order); ``"random"`` (default) draws them with the seeded generator;
* ``reference_quirks=True`` reproduces POPE's ``template.replace("a", "an")``, which also turns "image" into
  "imange" in vowel-initial questions. That is the wording of the COCO question files as first released
  (``output/coco/coco_pope_*.json`` at commits ``28f884a`` and ``e3e3926``: 246 of 8,910 questions); the files
  were corrected later ("Fix spelling errors", ``edebdda`` and ``109985c``) and the current ones (9,000
  questions) contain none;
* answers: ``parser="reference"`` (default, for numbers comparable with published POPE results) is POPE's rule,
  ``evaluate.py`` lines 12-21: keep the text before the first ".", drop commas, split on spaces; "No", "no" or
  "not" among the words -> no, anything else -> yes. ``parser="robust"`` reads the answer as a person would
  (leading yes/no after a list marker or an echoed question, an explicit yes or no word, then negation /
  affirmation phrases) and returns ``None`` when it cannot tell, which ``on_unparsed`` then handles explicitly.
  The two differ on answers such as "1. No" (reference: yes, its first "."-sentence is "1"; robust: no) or
  "I don't see a dog." (reference: yes, it knows no "don't"; robust: no).
"""

from __future__ import annotations

import json
import math
import random
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from prunelab.errors import PrunelabError, UnknownNameError
from prunelab.eval.groundtruth import GroundTruth
from prunelab.eval.mentions import SynonymTable
from prunelab.paths import atomic_write

SETTINGS = ("random", "popular", "adversarial")
TEMPLATE = "Is there a {} in the image?"


class PopeError(PrunelabError, ValueError):
    """Bad POPE input: too few images/objects, mismatched answers, unparseable answers under ``on_unparsed='raise'``."""


@dataclass(frozen=True)
class PopeQuestion:
    question_id: int
    image_id: object
    object: str
    text: str
    label: str  # "yes" | "no"
    setting: str

    def to_dict(self) -> dict:
        return asdict(self)


def question_text(obj: str, template: str = TEMPLATE, reference_quirks: bool = False) -> str:
    """Fill the template; "a" -> "an" before a vowel (``reference_quirks``: POPE's replace-every-"a" version)."""
    if obj[:1] in "aeiou":
        if reference_quirks:
            return template.replace("a", "an").format(obj)
        return re.sub(r"\ba\b(?=\s*\{\})", "an", template).format(obj)
    return template.format(obj)


def _as_mapping(ground_truth) -> dict:
    if isinstance(ground_truth, GroundTruth):
        return ground_truth.as_dict()
    if not isinstance(ground_truth, Mapping):
        raise PopeError(
            f"ground truth must be a GroundTruth or a mapping image_id -> categories, got {type(ground_truth).__name__}"
        )
    return {k: frozenset(v) for k, v in ground_truth.items()}


def object_frequencies(gt: Mapping) -> Counter:
    """How many images of the set contain each object."""
    c: Counter = Counter()
    for objs in gt.values():
        c.update(set(objs))
    return c


def co_occurrence(gt: Mapping) -> dict[str, list[str]]:
    """For each object, the other objects ranked by the number of images they share with it (ties by name)."""
    counts: dict[str, Counter] = {}
    for objs in gt.values():
        objs = set(objs)
        for a in objs:
            ca = counts.setdefault(a, Counter())
            for b in objs:
                if b != a:
                    ca[b] += 1
    return {a: [b for b, _ in sorted(c.items(), key=lambda kv: (-kv[1], kv[0]))] for a, c in counts.items()}


def _sort_key(x):
    return (0, x, "") if isinstance(x, (int, float)) else (1, 0, str(x))


def select_images(ground_truth, n_images: int | None = None, *, sample_num: int = 3, seed: int = 0) -> list:
    """Eligible image ids (>= ``sample_num`` objects), sorted; a seeded sample of ``n_images`` if given."""
    gt = _as_mapping(ground_truth)
    eligible = sorted((i for i, o in gt.items() if len(o) >= sample_num), key=_sort_key)
    if n_images is None:
        return eligible
    if n_images > len(eligible):
        raise PopeError(
            f"only {len(eligible)} images have >= {sample_num} objects, asked for {n_images}; lower n_images or sample_num"
        )
    return random.Random(seed).sample(eligible, n_images)


def build_questions(
    ground_truth,
    setting: str,
    *,
    image_ids: Iterable | None = None,
    n_images: int | None = None,
    sample_num: int = 3,
    seed: int = 0,
    positives: str = "random",
    template: str = TEMPLATE,
    reference_quirks: bool = False,
    category_order: Iterable[str] | None = None,
) -> list[PopeQuestion]:
    """POPE questions for one setting: per image, ``sample_num`` (yes, no) pairs — 2·sample_num questions.

    ``image_ids`` fixes the image set (each must have >= ``sample_num`` objects); otherwise :func:`select_images`
    picks ``n_images`` (all eligible when None). Same ``seed`` -> same questions.
    """
    if setting not in SETTINGS:
        raise UnknownNameError(f"unknown POPE setting {setting!r}; use one of {SETTINGS}")
    if positives not in ("random", "first"):
        raise UnknownNameError(f"unknown positives={positives!r}; use 'random' or 'first'")
    gt = _as_mapping(ground_truth)
    if image_ids is None:
        ids = select_images(gt, n_images, sample_num=sample_num, seed=seed)
    else:
        ids = list(image_ids)
        for i in ids:
            if i not in gt:
                raise PopeError(f"image {i!r} has no ground truth; pass ids from the ground truth")
            if len(gt[i]) < sample_num:
                raise PopeError(
                    f"image {i!r} has {len(gt[i])} objects < sample_num={sample_num}; drop it or lower sample_num"
                )
    if not ids:
        raise PopeError(f"no image has >= {sample_num} objects; lower sample_num or use richer images")
    chosen = {i: gt[i] for i in ids}
    freq = object_frequencies(chosen)
    pool = sorted(freq)
    popular = sorted(freq, key=lambda o: (-freq[o], o))
    cooc = co_occurrence(chosen)
    if category_order is None:
        category_order = SynonymTable.load().categories
    rank = {c: k for k, c in enumerate(category_order)}
    rng = random.Random(f"pope:{setting}:{seed}")
    out: list[PopeQuestion] = []
    qid = 1
    for iid in ids:
        objs = chosen[iid]
        ordered = sorted(objs, key=lambda o: (rank.get(o, len(rank)), o))
        pos_list = ordered[:sample_num] if positives == "first" else rng.sample(ordered, sample_num)
        asked: set[str] = set()
        for pos in pos_list:
            asked.add(pos)
            out.append(PopeQuestion(qid, iid, pos, question_text(pos, template, reference_quirks), "yes", setting))
            qid += 1
            ranked = {"random": (), "popular": popular, "adversarial": cooc.get(pos, [])}[setting]
            neg = next((o for o in ranked if o not in asked and o not in objs), None)
            if neg is None:
                cands = [o for o in pool if o not in asked and o not in objs]
                if not cands:
                    raise PopeError(
                        f"image {iid!r}: no object left to ask a 'no' question about (pool of {len(pool)}); use more images"
                    )
                neg = rng.choice(cands)
            asked.add(neg)
            out.append(PopeQuestion(qid, iid, neg, question_text(neg, template, reference_quirks), "no", setting))
            qid += 1
    return out


def build_pope(ground_truth, *, settings: Iterable[str] = SETTINGS, **kwargs) -> dict[str, list[PopeQuestion]]:
    """All three settings on the same image set (selected once with ``seed``)."""
    gt = _as_mapping(ground_truth)
    if kwargs.get("image_ids") is None:
        kwargs["image_ids"] = select_images(
            gt, kwargs.pop("n_images", None), sample_num=kwargs.get("sample_num", 3), seed=kwargs.get("seed", 0)
        )
    else:
        kwargs.pop("n_images", None)
    return {s: build_questions(gt, s, **kwargs) for s in settings}


def save_questions(path: str | Path, questions: list[PopeQuestion]) -> Path:
    """JSON lines in POPE's format (``question_id, image, text, label``) plus ``object`` and ``setting``."""
    with atomic_write(path, "w") as fh:
        for q in questions:
            d = {
                "question_id": q.question_id,
                "image": q.image_id,
                "text": q.text,
                "label": q.label,
                "object": q.object,
                "setting": q.setting,
            }
            fh.write(json.dumps(d) + "\n")
    return Path(path)


_OBJ_FROM_TEXT = re.compile(r"is there an? (.+?) in the (?:image|imange)\?", re.I)


def load_questions(path: str | Path, setting: str = "") -> list[PopeQuestion]:
    """Read POPE-format JSON lines (ours or the official ``coco_pope_*.json``)."""
    qs = []
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as err:
        raise PopeError(f"cannot read POPE questions {path} ({err.strerror}); check the path") from err
    for k, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
            text, label = d["text"], d["label"]
            iid = d.get("image", d.get("image_id"))
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise PopeError(
                f"{path} line {k + 1} is not a POPE question (needs text, label, image); fix the file"
            ) from err
        if label not in ("yes", "no"):
            raise PopeError(f"{path} line {k + 1}: label {label!r} is not 'yes'/'no'; fix the file")
        obj = d.get("object")
        if obj is None:
            m = _OBJ_FROM_TEXT.search(text)
            obj = m.group(1) if m else ""
        qs.append(PopeQuestion(d.get("question_id", k + 1), iid, obj, text, label, d.get("setting", setting)))
    return qs


# ----------------------------------------------------------------------------------------------------------------
# Answers and metrics
# ----------------------------------------------------------------------------------------------------------------
_NEG = re.compile(
    r"\b(no|not|none|nothing|nobody|neither|nor|never|cannot|can't|can not|isn't|aren't|don't|doesn't|didn't|"
    r"wasn't|weren't|absent|without)\b|n't\b"
)
_POS = re.compile(
    r"\b(yes|yeah|yep|correct|indeed|there is|there are|there's|i see|i can see|can be seen|is visible|are visible|"
    r"is present|are present|contains|shows|depicts|features)\b"
)
_LEAD = re.compile(r"^[\s\"'`*(\[]*(yes|no)\b")
# A list marker or label before the answer: "1. No", "(a) yes", "- no", "Answer: yes".
_MARKER = re.compile(r"^\s*(?:\(?\d{1,2}[.)]|\(?[a-d]\)|[-*\u2022]|answer\s*:)\s*")
_SENTENCE = re.compile(r"(?<=[.!?])\s+")
_YES_WORD = re.compile(r"\byes\b")
_NO_WORD = re.compile(r"\bno\b")
PARSERS = ("reference", "robust")


def _reference_parse(text: str) -> str:
    # POPE evaluate.py, lines 12-21: the first "."-sentence, commas dropped, split on single spaces.
    t = text.split(".")[0] if "." in text else text
    words = t.replace(",", "").split(" ")
    return "no" if ("No" in words or "not" in words or "no" in words) else "yes"


def _robust_parse(text: str) -> str | None:
    t = _MARKER.sub("", text.replace("\u2019", "'").strip().lower(), count=1)
    sentences = [x for x in _SENTENCE.split(t) if x.strip()]
    # An answer that starts by echoing the question ("Is there a dog? No.") is read from after the question.
    while len(sentences) > 1 and sentences[0].rstrip().endswith("?"):
        sentences.pop(0)
    if not sentences:
        return None
    first = _MARKER.sub("", sentences[0], count=1)
    m = _LEAD.match(first)
    if m:
        return m.group(1)
    # An explicit yes or no word decides over hedges around it ("Not sure, but yes.", "Without a doubt, yes.").
    has_yes, has_no = bool(_YES_WORD.search(first)), bool(_NO_WORD.search(first))
    if has_yes != has_no:
        return "yes" if has_yes else "no"
    if _NEG.search(first):
        return "no"
    if _POS.search(first):
        return "yes"
    return None


def parse_yes_no(text, parser: str = "reference") -> str | None:
    """Map a free-form answer to ``"yes"``/``"no"``; ``None`` for a non-string, or (robust only) when it cannot tell.

    ``reference`` (default): POPE's ``evaluate.py`` rule (module docstring), never ``None`` for a string.
    ``robust``: after a list marker ("1.") and an echoed question ("Is there a dog?"), a leading yes/no decides;
    else, in that first sentence, a lone explicit "yes" or "no" word; else a negation (-> no) or an affirmation
    phrase (-> yes); neither -> ``None``.
    """
    if parser not in PARSERS:
        raise UnknownNameError(f"unknown answer parser {parser!r}; use 'reference' or 'robust'")
    if not isinstance(text, str):
        return None
    return _reference_parse(text) if parser == "reference" else _robust_parse(text)


@dataclass
class PopeResult:
    accuracy: float
    precision: float
    recall: float
    f1: float
    yes_ratio: float
    tp: int
    fp: int
    tn: int
    fn: int
    n: int
    n_unparsed: int
    parser: str
    on_unparsed: str
    predictions: list  # per question: "yes" | "no" | None

    def summary(self, scale: float = 100.0, ndigits: int | None = 1) -> dict:
        vals = {
            "Accuracy": self.accuracy,
            "Precision": self.precision,
            "Recall": self.recall,
            "F1": self.f1,
            "Yes-ratio": self.yes_ratio,
        }
        vals = {k: v * scale for k, v in vals.items()}
        if ndigits is not None:
            vals = {k: round(v, ndigits) for k, v in vals.items()}
        vals.update(n=self.n, n_unparsed=self.n_unparsed)
        return vals


def _div(a, b) -> float:
    return a / b if b else math.nan


def pope_metrics(labels, answers, *, parser: str = "reference", on_unparsed: str = "exclude") -> PopeResult:
    """Accuracy / precision / recall / F1 / yes-ratio with "yes" as positive class.

    ``labels``: ``"yes"``/``"no"`` strings or :class:`PopeQuestion` objects; ``answers``: model outputs (free text)
    in the same order. ``parser``: :func:`parse_yes_no`'s (default POPE's own rule, as published numbers use).
    ``on_unparsed`` (answers the parser cannot read: the robust parser's ``None``, or a non-string):
    ``"exclude"`` leaves them out of every metric and reports their count, ``"no"`` counts them as "no" (wrong on
    positives), ``"raise"`` errors.
    """
    labels = [q.label if isinstance(q, PopeQuestion) else q for q in labels]
    answers = list(answers)
    if len(labels) != len(answers):
        raise PopeError(f"{len(answers)} answers for {len(labels)} questions; answer every question in order")
    if on_unparsed not in ("exclude", "no", "raise"):
        raise UnknownNameError(f"unknown on_unparsed={on_unparsed!r}; use 'exclude', 'no' or 'raise'")
    for k, lab in enumerate(labels):
        if lab not in ("yes", "no"):
            raise PopeError(f"label #{k} is {lab!r}, not 'yes'/'no'; fix the question set")
    preds = [parse_yes_no(a, parser) for a in answers]
    n_unparsed = sum(p is None for p in preds)
    if n_unparsed and on_unparsed == "raise":
        k = preds.index(None)
        raise PopeError(
            f"{n_unparsed} answers are neither yes nor no (first #{k}: {str(answers[k])[:60]!r}); use on_unparsed='exclude' or 'no'"
        )
    tp = fp = tn = fn = 0
    n_yes = n_used = 0
    for lab, p in zip(labels, preds):
        if p is None:
            if on_unparsed == "exclude":
                continue
            p = "no"
        n_used += 1
        n_yes += p == "yes"
        if p == "yes":
            tp += lab == "yes"
            fp += lab == "no"
        else:
            tn += lab == "no"
            fn += lab == "yes"
    precision, recall = _div(tp, tp + fp), _div(tp, tp + fn)
    f1 = (
        _div(2 * precision * recall, precision + recall)
        if not (math.isnan(precision) or math.isnan(recall))
        else math.nan
    )
    return PopeResult(
        _div(tp + tn, n_used),
        precision,
        recall,
        f1,
        _div(n_yes, n_used),
        tp,
        fp,
        tn,
        fn,
        n_used,
        n_unparsed,
        parser,
        on_unparsed,
        preds,
    )

"""CHAIR object-hallucination metrics (Rohrbach et al., EMNLP 2018), with OPERA's Recall and Len (methods-spec §3.3).

Reference implementation whose semantics this follows: ``LisaAnne/Hallucination`` ``utils/chair.py`` as ported to
Python 3 in ``shikiw/OPERA`` ``chair.py`` (class ``CHAIR``: ``caption_to_words``, ``compute_chair``). Written anew
for this project; behaviour matches it rule by rule. Captions become object mentions by the
:class:`~prunelab.eval.mentions.CaptionParser` (rules 1-4 in :mod:`prunelab.eval.mentions`, shared with the ground
truth that parses COCO's reference captions); this module scores them.

Metrics over a caption set (micro averages, mentions counted with repetition):

* ``CHAIR_i`` = hallucinated mentions / all mentions;
* ``CHAIR_s`` = captions with at least one hallucinated mention / captions;
* ``Recall``  = sum over captions of |distinct mentioned categories in GT| / sum of |GT| (OPERA);
* ``Len``     = mean number of merged tokens per caption, punctuation included (OPERA stores 0.01x this and prints
  x100, i.e. the printed value is this mean).

Text path. OPERA tokenises with NLTK's trained Punkt model (``punkt_tab``) and lemmatises with POS tags from
NLTK's perceptron tagger (``averaged_perceptron_tagger_eng``). Neither data package can be fetched here and no
verified offline copy exists (:mod:`prunelab.eval.textproc`), so without them ``auto`` takes the *fallback*: untrained
Punkt and every word lemmatised as a noun. Every result says which path produced it (``config["text_path"]``,
:attr:`ChairResult.text_path`, a ``text_path`` entry in :meth:`ChairResult.summary` and column in
:meth:`ChairResult.to_frame`), and :func:`evaluate_chair` raises a
:class:`~prunelab.eval.textproc.FallbackPathWarning` on the fallback. On OPERA's 6,000 logged captions the fallback
changes the mentions of 398 captions (6.6%; CHAIR_s 69.62 vs 69.87, Recall 64.28 vs 64.86; measured against
OPERA's own ``chair.py`` for issue 13), in both directions:

* OPERA counts verb and participle forms its tagger reduces to an object word, the fallback does not: "seated"
  (VBN -> "seat" -> chair), "skiing" (VBG -> "ski" -> skis), "tied" (VBN -> "tie" -> tie);
* OPERA misses plurals its tagger reads as adjectives (WordNet's adjective lemmatiser leaves them as they are),
  the fallback counts them: "two giraffes", "baby geese".

Deliberate, documented differences from the reference code (none changes a metric):

* mention positions are indices into the merged token list (the reference's ``idxs`` shift after a "seat" is
  removed and are not used for any metric);
* an undefined ratio (no mentions at all, no GT objects at all) is ``nan``, not a ZeroDivisionError;
* bad input (non-string or empty caption, image without ground truth) raises a one-line
  :class:`~prunelab.errors.PrunelabError`, or with ``on_bad="flag"`` is flagged per caption (see
  :func:`evaluate_chair`); the reference silently scores unknown images against an empty set.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

from prunelab.errors import UnknownNameError
from prunelab.eval.groundtruth import MissingGroundTruthError, as_ground_truth
from prunelab.eval.mentions import CaptionError, CaptionParser, Mention
from prunelab.eval.textproc import REFERENCE_FIX, warn_if_fallback
from prunelab.paths import atomic_write


# ----------------------------------------------------------------------------------------------------------------
# Scoring
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class CaptionScore:
    """Per-caption CHAIR details; ``included`` is False for flagged captions left out of the aggregates."""

    image_id: object
    caption: object
    tokens: list[str] = field(default_factory=list)
    mentions: list[Mention] = field(default_factory=list)
    hallucinated: list[Mention] = field(default_factory=list)
    gt_objects: list[str] = field(default_factory=list)
    recalled: list[str] = field(default_factory=list)
    flag: str | None = None
    included: bool = True

    @property
    def n_mentions(self) -> int:
        return len(self.mentions)

    @property
    def n_hallucinated(self) -> int:
        return len(self.hallucinated)

    @property
    def chair_s(self) -> int:
        return int(self.n_hallucinated > 0)

    @property
    def chair_i(self) -> float:
        return self.n_hallucinated / self.n_mentions if self.n_mentions else math.nan

    @property
    def recall(self) -> float:
        return len(self.recalled) / len(self.gt_objects) if self.gt_objects else math.nan

    @property
    def length(self) -> int:
        return len(self.tokens)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(
            chair_s=self.chair_s,
            chair_i=self.chair_i,
            recall=self.recall,
            length=self.length,
            n_mentions=self.n_mentions,
            n_hallucinated=self.n_hallucinated,
        )
        return d


def _ratio(num: float, den: float) -> float:
    return num / den if den else math.nan


@dataclass
class ChairResult:
    """Aggregated CHAIR metrics (fractions in 0..1; :meth:`summary` gives the paper's x100 with one decimal)."""

    captions: list[CaptionScore]
    config: dict

    def _inc(self) -> list[CaptionScore]:
        return [c for c in self.captions if c.included]

    @property
    def text_path(self) -> str:
        """``"reference"`` (OPERA's tokenizer and tagger), ``"fallback"`` (see :mod:`prunelab.eval.textproc`) or
        ``"unknown"`` (a result rebuilt without its config)."""
        return self.config.get("text_path", "unknown")

    @property
    def n_captions(self) -> int:
        return len(self._inc())

    @property
    def n_mentions(self) -> int:
        return sum(c.n_mentions for c in self._inc())

    @property
    def n_hallucinated(self) -> int:
        return sum(c.n_hallucinated for c in self._inc())

    @property
    def n_hallucinated_captions(self) -> int:
        return sum(c.chair_s for c in self._inc())

    @property
    def n_gt_objects(self) -> int:
        return sum(len(c.gt_objects) for c in self._inc())

    @property
    def n_recalled(self) -> int:
        return sum(len(c.recalled) for c in self._inc())

    @property
    def chair_s(self) -> float:
        return _ratio(self.n_hallucinated_captions, self.n_captions)

    @property
    def chair_i(self) -> float:
        return _ratio(self.n_hallucinated, self.n_mentions)

    @property
    def recall(self) -> float:
        return _ratio(self.n_recalled, self.n_gt_objects)

    @property
    def length(self) -> float:
        return _ratio(sum(c.length for c in self._inc()), self.n_captions)

    @property
    def flags(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for c in self.captions:
            if c.flag:
                out[c.flag] = out.get(c.flag, 0) + 1
        return out

    def summary(self, scale: float = 100.0, ndigits: int | None = 1) -> dict:
        """``CHAIR_s``, ``CHAIR_i``, ``Recall`` (x``scale``) and ``Len`` (mean tokens), as reported in the paper,
        plus counts, flags and the ``text_path`` that produced them."""
        vals = {
            "CHAIR_s": self.chair_s * scale,
            "CHAIR_i": self.chair_i * scale,
            "Recall": self.recall * scale,
            "Len": self.length,
        }
        if ndigits is not None:
            vals = {k: round(v, ndigits) for k, v in vals.items()}
        vals.update(n_captions=self.n_captions, n_mentions=self.n_mentions, flags=self.flags, text_path=self.text_path)
        return vals

    def to_frame(self):
        """One row per caption (pandas)."""
        import pandas as pd

        rows = []
        for c in self.captions:
            rows.append(
                {
                    "image_id": c.image_id,
                    "caption": c.caption,
                    "included": c.included,
                    "flag": c.flag,
                    "length": c.length,
                    "n_mentions": c.n_mentions,
                    "n_hallucinated": c.n_hallucinated,
                    "chair_s": c.chair_s,
                    "chair_i": c.chair_i,
                    "recall": c.recall,
                    "mentioned": [m.category for m in c.mentions],
                    "hallucinated_words": [(m.word, m.category) for m in c.hallucinated],
                    "gt_objects": c.gt_objects,
                    "recalled": c.recalled,
                    "text_path": self.text_path,
                }
            )
        return pd.DataFrame(rows)

    def to_dict(self) -> dict:
        return {
            "overall": self.summary(scale=1.0, ndigits=None),
            "config": self.config,
            "captions": [c.to_dict() for c in self.captions],
        }

    def save(self, path: str | Path, **extra) -> Path:
        """Write the result (overall metrics, config incl. the text-processing path, per-caption details) as JSON.

        ``extra`` (e.g. ``image_ids=...``, ``protocol=...``) is stored under ``"extra"`` — save the evaluated image
        ids with every COCO result (methods-spec §3.3).
        """
        path = Path(path)
        payload = self.to_dict()
        if extra:
            payload["extra"] = extra
        with atomic_write(path, "w") as fh:
            json.dump(payload, fh, indent=1, default=_json_default, allow_nan=True)
        return path


def combined_text_path(paths, *, warn: str | None = None) -> str:
    """The text path of a set of scored captions (e.g. a table's ``chair_text_path`` column): ``"reference"``,
    ``"fallback"``, ``"mixed (fallback, reference)"`` or ``"unknown"`` (nothing recorded). With ``warn`` (what is
    being built, e.g. ``"CHAIR table"``), anything but ``"reference"`` raises a
    :class:`~prunelab.eval.textproc.FallbackPathWarning`."""
    vals = sorted(
        {
            v
            for p in paths
            if isinstance(p, str) and p
            for v in (p[len("mixed (") : -1].split(", ") if p.startswith("mixed (") else [p])
        }
    )
    label = vals[0] if len(vals) == 1 else ("unknown" if not vals else f"mixed ({', '.join(vals)})")
    if warn is not None:
        warn_if_fallback(
            {
                "text_path": label,
                "text_path_note": (
                    f"captions scored on the {label!r} text path, not OPERA's reference path (punkt_tab + perceptron "
                    f"tagger); CHAIR differs from published numbers (see prunelab.eval.chair); {REFERENCE_FIX}"
                ),
            },
            warn,
            stacklevel=4,
        )
    return label


def _json_default(o):
    if isinstance(o, (set, frozenset)):
        return sorted(o)
    if hasattr(o, "item"):
        return o.item()
    return str(o)


def _iter_captions(captions) -> list[tuple[object, object]]:
    """Accept ``{image_id: caption}``, ``[(image_id, caption)]`` or ``[{"image_id":..., "caption":...}]``."""
    if isinstance(captions, Mapping):
        return list(captions.items())
    out = []
    for i, item in enumerate(captions):
        if isinstance(item, Mapping):
            if "image_id" not in item or "caption" not in item:
                raise CaptionError(
                    f"caption record #{i} lacks 'image_id' or 'caption' (keys: {sorted(item)[:5]}); pass records with both keys"
                )
            out.append((item["image_id"], item["caption"]))
        elif isinstance(item, (tuple, list)) and len(item) == 2:
            out.append((item[0], item[1]))
        else:
            raise CaptionError(f"caption record #{i} is {type(item).__name__}; pass (image_id, caption) pairs or dicts")
    return out


def evaluate_chair(
    captions,
    ground_truth,
    *,
    parser: CaptionParser | None = None,
    on_bad: str = "raise",
    progress: bool = False,
    **parser_kwargs,
) -> ChairResult:
    """Score generated captions against per-image ground-truth categories.

    Warns (:class:`~prunelab.eval.textproc.FallbackPathWarning`) when the parser is not on OPERA's text path; the
    result records the path either way (:attr:`ChairResult.text_path`).

    Parameters
    ----------
    captions : ``{image_id: caption}``, ``[(image_id, caption)]`` or ``[{"image_id", "caption"}]``.
    ground_truth : a :class:`prunelab.eval.groundtruth.GroundTruth` or a plain ``{image_id: set_of_categories}``.
    parser : a :class:`CaptionParser` (built with ``parser_kwargs`` if omitted).
    on_bad : ``"raise"`` (default): a non-string or empty caption, or an image id without ground truth, raises a
        one-line error. ``"flag"``: such captions are kept in ``result.captions`` with ``flag`` set to
        ``"not_a_string"``, ``"no_ground_truth"`` (both left out of every aggregate) or ``"empty_caption"``
        (scored as the reference would: no mentions, zero length, GT counted in Recall).
    """
    if on_bad not in ("raise", "flag"):
        raise UnknownNameError(f"unknown on_bad={on_bad!r}; use 'raise' or 'flag'")
    parser = parser or CaptionParser(**parser_kwargs)
    gt = as_ground_truth(ground_truth, categories=parser.categories)
    items = _iter_captions(captions)
    it = items
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(items, desc="CHAIR", unit="caption")
    scores: list[CaptionScore] = []
    for image_id, caption in it:
        if not isinstance(caption, str):
            if on_bad == "raise":
                raise CaptionError(
                    f"caption for image {image_id!r} is {type(caption).__name__}, not a string; fix the caption file or use on_bad='flag'"
                )
            scores.append(CaptionScore(image_id, caption, flag="not_a_string", included=False))
            continue
        try:
            gt_objs = gt.objects(image_id)
        except MissingGroundTruthError:
            if on_bad == "raise":
                raise
            scores.append(CaptionScore(image_id, caption, flag="no_ground_truth", included=False))
            continue
        flag = None
        if not caption.strip():
            if on_bad == "raise":
                raise CaptionError(
                    f"caption for image {image_id!r} is empty; check the generation step or use on_bad='flag'"
                )
            flag = "empty_caption"
        parsed = parser.parse(caption)
        hall = [m for m in parsed.mentions if m.category not in gt_objs]
        recalled = sorted({m.category for m in parsed.mentions if m.category in gt_objs})
        scores.append(
            CaptionScore(
                image_id,
                caption,
                list(parsed.tokens),
                list(parsed.mentions),
                hall,
                sorted(gt_objs),
                recalled,
                flag=flag,
            )
        )
    config = parser.describe()
    config["ground_truth"] = gt.describe()
    config["on_bad"] = on_bad
    warn_if_fallback(config, "CHAIR", stacklevel=3)
    return ChairResult(scores, config)


_WS = re.compile(r"\s+")


def load_captions_file(path: str | Path, image_id_key: str = "image_id", caption_key: str = "caption") -> list[tuple]:
    """Read OPERA-style ``.json`` (list of dicts) or ``.jsonl`` caption files into ``(image_id, caption)`` pairs."""
    path = Path(path)
    try:
        if path.suffix == ".jsonl":
            recs = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        else:
            recs = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise CaptionError(
            f"cannot read captions from {path} ({_WS.sub(' ', str(err))}); pass a .json list or .jsonl file"
        ) from err
    if not isinstance(recs, list):
        raise CaptionError(
            f"{path} must hold a list of records with {image_id_key!r} and {caption_key!r}; got {type(recs).__name__}"
        )
    out = []
    for i, r in enumerate(recs):
        if not isinstance(r, dict) or image_id_key not in r or caption_key not in r:
            raise CaptionError(
                f"{path} record #{i} lacks {image_id_key!r}/{caption_key!r}; fix the file or pass image_id_key/caption_key"
            )
        out.append((r[image_id_key], r[caption_key]))
    return out

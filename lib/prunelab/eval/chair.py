"""CHAIR object-hallucination metrics (Rohrbach et al., EMNLP 2018), with OPERA's Recall and Len (methods-spec §3.3).

Reference implementation whose semantics this follows: ``LisaAnne/Hallucination`` ``utils/chair.py`` as ported to
Python 3 in ``shikiw/OPERA`` ``chair.py`` (class ``CHAIR``: ``caption_to_words``, ``compute_chair``). Written anew
for this project; behaviour matches it rule by rule:

1. lower-case, tokenise, lemmatise (:mod:`prunelab.eval.textproc`; the path used is recorded, see below);
2. merge adjacent token pairs greedily left to right with :data:`DOUBLE_WORDS` plus "baby/adult <animal>" -> animal,
   "passenger jet/train" -> jet/train, "bow tie" -> tie, "toilet seat" -> toilet, "wine glas" -> wine glass;
3. if both "toilet" and "seat" are among the merged tokens, drop every "seat";
4. keep tokens found in the synonym vocabulary (``data/chair/synonyms.txt``) and map each to its COCO category.

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

from prunelab.errors import PrunelabError, UnknownNameError
from prunelab.paths import atomic_write, data_dir

# The reference's list of COCO "double words", in its order; it lists "hot dog" and "teddy bear" twice (29 entries,
# 27 distinct). "stove top oven" has three words and so never matches the pairwise merge (kept for fidelity).
DOUBLE_WORDS = (
    "motor bike", "motor cycle", "air plane", "traffic light", "street light", "traffic signal", "stop light",
    "fire hydrant", "stop sign", "parking meter", "suit case", "sports ball", "baseball bat", "baseball glove",
    "tennis racket", "wine glass", "hot dog", "cell phone", "mobile phone", "teddy bear", "hair drier",
    "potted plant", "bow tie", "laptop computer", "stove top oven", "hot dog", "teddy bear", "home plate",
    "train track",
)
#: "baby X" / "adult X" -> X, so that "baby" and "adult" (person synonyms) do not fire for animals.
ANIMAL_WORDS = ("bird", "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "animal", "cub")
#: "passenger X" -> X, so that "passenger" (a person synonym) does not fire for vehicles.
VEHICLE_WORDS = ("jet", "train")


def merge_table() -> dict[str, str]:
    """Pair -> replacement used by the merge step, built in the reference's order (later rules win)."""
    table = {w: w for w in DOUBLE_WORDS}
    for a in ANIMAL_WORDS:
        table[f"baby {a}"] = a
        table[f"adult {a}"] = a
    for v in VEHICLE_WORDS:
        table[f"passenger {v}"] = v
    table["bow tie"] = "tie"
    table["toilet seat"] = "toilet"
    table["wine glas"] = "wine glass"  # for pattern's singularize("glasses") == "glas"; harmless with WordNet
    return table


class CaptionError(PrunelabError, ValueError):
    """A caption that cannot be scored (not a string, or empty)."""


class SynonymTableError(PrunelabError, ValueError):
    """A malformed CHAIR synonym table."""


def default_synonyms_path() -> Path:
    return data_dir() / "chair" / "synonyms.txt"


# ----------------------------------------------------------------------------------------------------------------
# Synonym table
# ----------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SynonymTable:
    """The CHAIR object vocabulary: 80 COCO categories, each with the words that count as a mention of it.

    ``entries[category]`` lists ``(word, unmatchable_in_reference)`` pairs, the category name first.
    """

    categories: tuple[str, ...]
    entries: Mapping[str, tuple[tuple[str, bool], ...]]
    source: str = ""

    @classmethod
    def load(cls, path: str | Path | None = None) -> SynonymTable:
        """Parse the project's table (``canonical: syn, syn`` per line; ``!`` marks reference-unmatchable)."""
        path = Path(path) if path is not None else default_synonyms_path()
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as err:
            raise SynonymTableError(f"cannot read CHAIR synonym table {path} ({err.strerror}); restore data/chair/synonyms.txt from git") from err
        cats: list[str] = []
        entries: dict[str, tuple[tuple[str, bool], ...]] = {}
        seen: dict[str, str] = {}
        for lineno, raw in enumerate(text.splitlines(), 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            if ":" not in line:
                raise SynonymTableError(f"{path}:{lineno}: expected 'category: synonym, ...'; fix the line")
            head, _, tail = line.partition(":")
            cat = head.strip()
            words: list[tuple[str, bool]] = [(cat, False)]
            for item in tail.split(","):
                item = item.strip()
                if not item:
                    continue
                quirk = item.startswith("!")
                word = item[1:].strip() if quirk else item
                words.append((word, quirk))
            for word, _ in words:
                if word != word.lower() or "  " in word:
                    raise SynonymTableError(f"{path}:{lineno}: entry {word!r} must be lower-case with single spaces; fix it")
                if word in seen:
                    raise SynonymTableError(f"{path}:{lineno}: {word!r} already listed under {seen[word]!r}; keep one")
                seen[word] = cat
            cats.append(cat)
            entries[cat] = tuple(words)
        if len(cats) != 80:
            raise SynonymTableError(f"{path} has {len(cats)} categories, expected the 80 COCO categories; fix the table")
        return cls(tuple(cats), entries, str(path))

    def vocabulary(self, reference_quirks: bool = True) -> dict[str, str]:
        """Word -> category for every word that can match a (lower-cased) caption token or merged pair."""
        return {w: c for c in self.categories for w, quirk in self.entries[c] if not (quirk and reference_quirks)}

    def quirk_entries(self) -> list[tuple[str, str]]:
        """``(category, word)`` for entries the reference lists but can never match."""
        return [(c, w) for c in self.categories for w, q in self.entries[c] if q]


def parse_reference_synonyms(text: str) -> dict[str, str]:
    """The reference table's word -> category map, built exactly as OPERA does (``strip`` + ``split(', ')``).

    Keeps the reference's raw keys, e.g. ``' motor bike'`` and ``'iPhone'``; use :func:`compare_with_reference`
    for a readable comparison.
    """
    inverse: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.strip().split(", ")
        for p in parts:
            inverse[p] = parts[0]
    inverse.pop("", None)  # blank lines (OPERA's embedded text starts and ends with one) yield ''; never a token
    return inverse


def compare_with_reference(reference_path: str | Path, table: SynonymTable | None = None) -> list[str]:
    """Every difference between our table and the reference table, one human-readable line each.

    Compares both views: our quirk-preserving vocabulary against every raw reference key, and each raw key that
    can never match (stray space, upper case) is reported with the reason.
    """
    table = table or SynonymTable.load()
    ref = parse_reference_synonyms(Path(reference_path).read_text(encoding="utf-8"))
    ours = table.vocabulary(reference_quirks=True)
    ours_all = table.vocabulary(reference_quirks=False)
    diffs = []
    for word, cat in sorted(ref.items()):
        if word in ours:
            if ours[word] != cat:
                diffs.append(f"{word!r}: reference -> {cat!r}, ours -> {ours[word]!r}")
            continue
        why = []
        if word != word.strip():
            why.append("leading/trailing space")
        if word != word.lower():
            why.append("upper case (captions are lower-cased)")
        tag = " and ".join(why) if why else "missing from our table"
        norm = word.strip().lower()
        note = f"; ours lists {norm!r} as a reference_quirks-only entry of {ours_all[norm]!r}" if norm in ours_all and norm not in ours else ""
        diffs.append(f"{word!r} ({cat}): reference entry never matches: {tag}{note}" if why else f"{word!r} ({cat}): {tag}")
    for word, cat in sorted(ours.items()):
        if word not in ref:
            diffs.append(f"{word!r} ({cat}): in our table, not in the reference")
    ref_cats = list(dict.fromkeys(ref.values()))
    if ref_cats != list(table.categories):
        diffs.append(f"category order/names differ: reference {ref_cats} vs ours {list(table.categories)}")
    return diffs


# ----------------------------------------------------------------------------------------------------------------
# Caption parser
# ----------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Mention:
    word: str  # the (lemmatised, merged) token that matched
    category: str  # its COCO category
    index: int  # position in the merged token list


@dataclass(frozen=True)
class ParsedCaption:
    tokens: tuple[str, ...]  # after lower-case, tokenise, lemmatise, pair merge (what Len counts)
    mentions: tuple[Mention, ...]

    @property
    def categories(self) -> list[str]:
        return [m.category for m in self.mentions]


class CaptionParser:
    """The CHAIR caption -> object-mention parser, applied identically to generated and ground-truth captions.

    Parameters
    ----------
    synonyms : :class:`SynonymTable` or path (default ``data/chair/synonyms.txt``).
    reference_quirks : keep the reference table's never-matching entries out of the vocabulary (default True, for
        comparability with published CHAIR numbers). False treats "motor bike", "cheesecake" and "iphone" as
        ordinary synonyms.
    tokenizer, lemmatizer : forwarded to :class:`prunelab.eval.textproc.TextProcessor` (``"auto"`` picks OPERA's path
        when the NLTK data exist and the documented offline fallback otherwise; :meth:`describe` says which).
    """

    def __init__(self, synonyms: SynonymTable | str | Path | None = None, *, reference_quirks: bool = True,
                 tokenizer: str = "auto", lemmatizer: str = "auto", text_processor=None):
        from prunelab.eval.textproc import get_text_processor

        self.table = synonyms if isinstance(synonyms, SynonymTable) else SynonymTable.load(synonyms)
        self.reference_quirks = bool(reference_quirks)
        self.vocab = self.table.vocabulary(self.reference_quirks)
        self.merges = merge_table()
        self.text = text_processor if text_processor is not None else get_text_processor(tokenizer, lemmatizer)

    @property
    def categories(self) -> tuple[str, ...]:
        return self.table.categories

    def merge(self, lemmas: list[str]) -> list[str]:
        """Greedy left-to-right merge of adjacent pairs found in :func:`merge_table`."""
        out, i, n = [], 0, len(lemmas)
        merges = self.merges
        while i < n:
            if i + 1 < n:
                rep = merges.get(f"{lemmas[i]} {lemmas[i + 1]}")
                if rep is not None:
                    out.append(rep)
                    i += 2
                    continue
            out.append(lemmas[i])
            i += 1
        return out

    def mentions_from_tokens(self, tokens: list[str]) -> list[Mention]:
        drop_seat = "toilet" in tokens and "seat" in tokens  # "the seat of the toilet" is not a chair
        vocab = self.vocab
        return [Mention(t, vocab[t], i) for i, t in enumerate(tokens)
                if t in vocab and not (drop_seat and t == "seat")]

    def parse(self, caption: str) -> ParsedCaption:
        if not isinstance(caption, str):
            raise CaptionError(f"caption must be a string, got {type(caption).__name__}; pass the decoded text")
        tokens = self.merge(self.text.process(caption))
        return ParsedCaption(tuple(tokens), tuple(self.mentions_from_tokens(tokens)))

    def objects(self, caption: str) -> set[str]:
        """Distinct COCO categories mentioned in ``caption``."""
        return set(self.parse(caption).categories)

    def describe(self) -> dict:
        from prunelab.eval.textproc import file_sha256

        d = dict(self.text.describe())
        d.update(reference_quirks=self.reference_quirks, synonyms=self.table.source,
                 synonyms_sha256=file_sha256(self.table.source) if self.table.source and Path(self.table.source).exists() else None)
        return d


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
        d.update(chair_s=self.chair_s, chair_i=self.chair_i, recall=self.recall, length=self.length,
                 n_mentions=self.n_mentions, n_hallucinated=self.n_hallucinated)
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
        vals = {"CHAIR_s": self.chair_s * scale, "CHAIR_i": self.chair_i * scale, "Recall": self.recall * scale,
                "Len": self.length}
        if ndigits is not None:
            vals = {k: round(v, ndigits) for k, v in vals.items()}
        vals.update(n_captions=self.n_captions, n_mentions=self.n_mentions, flags=self.flags, text_path=self.text_path)
        return vals

    def to_frame(self):
        """One row per caption (pandas)."""
        import pandas as pd

        rows = []
        for c in self.captions:
            rows.append({
                "image_id": c.image_id, "caption": c.caption, "included": c.included, "flag": c.flag,
                "length": c.length, "n_mentions": c.n_mentions, "n_hallucinated": c.n_hallucinated,
                "chair_s": c.chair_s, "chair_i": c.chair_i, "recall": c.recall,
                "mentioned": [m.category for m in c.mentions],
                "hallucinated_words": [(m.word, m.category) for m in c.hallucinated],
                "gt_objects": c.gt_objects, "recalled": c.recalled, "text_path": self.text_path,
            })
        return pd.DataFrame(rows)

    def to_dict(self) -> dict:
        return {"overall": self.summary(scale=1.0, ndigits=None), "config": self.config,
                "captions": [c.to_dict() for c in self.captions]}

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
    from prunelab.eval.textproc import REFERENCE_FIX, warn_if_fallback

    vals = sorted({v for p in paths if isinstance(p, str) and p
                   for v in (p[len("mixed ("):-1].split(", ") if p.startswith("mixed (") else [p])})
    label = vals[0] if len(vals) == 1 else ("unknown" if not vals else f"mixed ({', '.join(vals)})")
    if warn is not None:
        warn_if_fallback({"text_path": label, "text_path_note": (
            f"captions scored on the {label!r} text path, not OPERA's reference path (punkt_tab + perceptron "
            f"tagger); CHAIR differs from published numbers (see prunelab.eval.chair); {REFERENCE_FIX}")}, warn, stacklevel=4)
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
                raise CaptionError(f"caption record #{i} lacks 'image_id' or 'caption' (keys: {sorted(item)[:5]}); pass records with both keys")
            out.append((item["image_id"], item["caption"]))
        elif isinstance(item, (tuple, list)) and len(item) == 2:
            out.append((item[0], item[1]))
        else:
            raise CaptionError(f"caption record #{i} is {type(item).__name__}; pass (image_id, caption) pairs or dicts")
    return out


def evaluate_chair(captions, ground_truth, *, parser: CaptionParser | None = None, on_bad: str = "raise",
                   progress: bool = False, **parser_kwargs) -> ChairResult:
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
    from prunelab.eval.groundtruth import MissingGroundTruthError, as_ground_truth

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
                raise CaptionError(f"caption for image {image_id!r} is {type(caption).__name__}, not a string; fix the caption file or use on_bad='flag'")
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
                raise CaptionError(f"caption for image {image_id!r} is empty; check the generation step or use on_bad='flag'")
            flag = "empty_caption"
        parsed = parser.parse(caption)
        hall = [m for m in parsed.mentions if m.category not in gt_objs]
        recalled = sorted({m.category for m in parsed.mentions if m.category in gt_objs})
        scores.append(CaptionScore(image_id, caption, list(parsed.tokens), list(parsed.mentions), hall,
                                   sorted(gt_objs), recalled, flag=flag))
    config = parser.describe()
    config["ground_truth"] = gt.describe()
    config["on_bad"] = on_bad
    from prunelab.eval.textproc import warn_if_fallback

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
        raise CaptionError(f"cannot read captions from {path} ({_WS.sub(' ', str(err))}); pass a .json list or .jsonl file") from err
    if not isinstance(recs, list):
        raise CaptionError(f"{path} must hold a list of records with {image_id_key!r} and {caption_key!r}; got {type(recs).__name__}")
    out = []
    for i, r in enumerate(recs):
        if not isinstance(r, dict) or image_id_key not in r or caption_key not in r:
            raise CaptionError(f"{path} record #{i} lacks {image_id_key!r}/{caption_key!r}; fix the file or pass image_id_key/caption_key")
        out.append((r[image_id_key], r[caption_key]))
    return out

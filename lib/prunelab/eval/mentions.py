"""Captions -> COCO object mentions: the CHAIR synonym table and caption parser (methods-spec §3.3).

Reference implementation whose semantics this follows: ``LisaAnne/Hallucination`` ``utils/chair.py`` as ported to
Python 3 in ``shikiw/OPERA`` ``chair.py`` (class ``CHAIR``: ``caption_to_words``). Written anew for this project;
behaviour matches it rule by rule:

1. lower-case, tokenise, lemmatise (:mod:`prunelab.eval.textproc`; the path used is recorded, see
   :mod:`prunelab.eval.chair`);
2. merge adjacent token pairs greedily left to right with :data:`DOUBLE_WORDS` plus "baby/adult <animal>" -> animal,
   "passenger jet/train" -> jet/train, "bow tie" -> tie, "toilet seat" -> toilet, "wine glas" -> wine glass;
3. if both "toilet" and "seat" are among the merged tokens, drop every "seat";
4. keep tokens found in the synonym vocabulary (``data/chair/synonyms.txt``) and map each to its COCO category.

The same parser reads generated captions (:mod:`prunelab.eval.chair` scores them) and COCO's reference captions
(:class:`prunelab.eval.groundtruth.CocoGroundTruth`), so both sides see one vocabulary.
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from prunelab.errors import PrunelabError
from prunelab.eval.textproc import file_sha256, get_text_processor
from prunelab.paths import data_dir

# The reference's list of COCO "double words", in its order; it lists "hot dog" and "teddy bear" twice (29 entries,
# 27 distinct). "stove top oven" has three words and so never matches the pairwise merge (kept for fidelity).
DOUBLE_WORDS = (
    "motor bike",
    "motor cycle",
    "air plane",
    "traffic light",
    "street light",
    "traffic signal",
    "stop light",
    "fire hydrant",
    "stop sign",
    "parking meter",
    "suit case",
    "sports ball",
    "baseball bat",
    "baseball glove",
    "tennis racket",
    "wine glass",
    "hot dog",
    "cell phone",
    "mobile phone",
    "teddy bear",
    "hair drier",
    "potted plant",
    "bow tie",
    "laptop computer",
    "stove top oven",
    "hot dog",
    "teddy bear",
    "home plate",
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
            raise SynonymTableError(
                f"cannot read CHAIR synonym table {path} ({err.strerror}); restore data/chair/synonyms.txt from git"
            ) from err
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
                    raise SynonymTableError(
                        f"{path}:{lineno}: entry {word!r} must be lower-case with single spaces; fix it"
                    )
                if word in seen:
                    raise SynonymTableError(f"{path}:{lineno}: {word!r} already listed under {seen[word]!r}; keep one")
                seen[word] = cat
            cats.append(cat)
            entries[cat] = tuple(words)
        if len(cats) != 80:
            raise SynonymTableError(
                f"{path} has {len(cats)} categories, expected the 80 COCO categories; fix the table"
            )
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
        note = (
            f"; ours lists {norm!r} as a reference_quirks-only entry of {ours_all[norm]!r}"
            if norm in ours_all and norm not in ours
            else ""
        )
        diffs.append(
            f"{word!r} ({cat}): reference entry never matches: {tag}{note}" if why else f"{word!r} ({cat}): {tag}"
        )
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

    def __init__(
        self,
        synonyms: SynonymTable | str | Path | None = None,
        *,
        reference_quirks: bool = True,
        tokenizer: str = "auto",
        lemmatizer: str = "auto",
        text_processor=None,
    ):
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
        return [Mention(t, vocab[t], i) for i, t in enumerate(tokens) if t in vocab and not (drop_seat and t == "seat")]

    def parse(self, caption: str) -> ParsedCaption:
        if not isinstance(caption, str):
            raise CaptionError(f"caption must be a string, got {type(caption).__name__}; pass the decoded text")
        tokens = self.merge(self.text.process(caption))
        return ParsedCaption(tuple(tokens), tuple(self.mentions_from_tokens(tokens)))

    def objects(self, caption: str) -> set[str]:
        """Distinct COCO categories mentioned in ``caption``."""
        return set(self.parse(caption).categories)

    def describe(self) -> dict:
        d = dict(self.text.describe())
        d.update(
            reference_quirks=self.reference_quirks,
            synonyms=self.table.source,
            synonyms_sha256=file_sha256(self.table.source)
            if self.table.source and Path(self.table.source).exists()
            else None,
        )
        return d


def caption_spans(caption: str, ground_truth_objects, parser=None) -> list[tuple[int, int, str, str]]:
    """Character spans of the CHAIR object mentions in ``caption``: ``(start, end, category, "hallucinated" |
    "correct")``. The caption is parsed exactly as :meth:`prunelab.eval.mentions.CaptionParser.parse` does (tokenise,
    lemmatise, merge pairs, map synonyms); tokens are then located in the lower-cased text left to right. A
    mention whose token cannot be located (a tokenizer rewrite such as quotes) is left out."""
    parser = parser or CaptionParser()
    lower = caption.lower()
    raw = parser.text.tokenize(lower)
    lemmas = parser.text.lemmatize(raw)
    spans: list[tuple[int, int] | None] = []
    pos = 0
    for tok in raw:
        k = lower.find(tok, pos)
        if k < 0:
            spans.append(None)
            continue
        spans.append((k, k + len(tok)))
        pos = k + len(tok)
    merged: list[str] = []
    merged_spans: list[tuple[int, int] | None] = []
    i = 0
    while i < len(lemmas):
        rep = parser.merges.get(f"{lemmas[i]} {lemmas[i + 1]}") if i + 1 < len(lemmas) else None
        if rep is not None:
            a, b = spans[i], spans[i + 1]
            merged.append(rep)
            merged_spans.append((a[0], b[1]) if a and b else None)
            i += 2
        else:
            merged.append(lemmas[i])
            merged_spans.append(spans[i])
            i += 1
    gt = set(ground_truth_objects)
    out = []
    for m in parser.mentions_from_tokens(merged):
        sp = merged_spans[m.index]
        if sp is not None:
            out.append((sp[0], sp[1], m.category, "correct" if m.category in gt else "hallucinated"))
    return out


HIGHLIGHT = {"hallucinated": "background-color:#f4a6a6;font-weight:bold", "correct": "background-color:#c7e9c0"}


def highlight_caption(caption: str, ground_truth_objects, parser=None) -> str:
    """HTML of ``caption`` with hallucinated object mentions in red and correct ones in green (title = category)."""

    out, last = [], 0
    for s, e, cat, kind in caption_spans(caption, ground_truth_objects, parser):
        out.append(html.escape(caption[last:s]))
        out.append(
            f'<span style="{HIGHLIGHT[kind]}" title="{html.escape(cat)} ({kind})">{html.escape(caption[s:e])}</span>'
        )
        last = e
    out.append(html.escape(caption[last:]))
    return "".join(out)

"""Detailed descriptions and POPE questions for toy scenes, generated from the exact ground truth.

Descriptions answer :data:`DESCRIBE_PROMPT` (LLaVA's detailed-description instruction). They are written from
varied templates: an overview listing every object with its count in words, per-object sentences with
position, size and relations, the background, the distractor icons and, often, the scene's context. Every
object word is a COCO category name or one of its CHAIR synonyms (see :mod:`prunelab.toyworld.categories`),
sometimes in the plural, so CHAIR's synonym and lemma machinery is exercised exactly as on COCO captions.
Descriptions never name an object that is not in the scene; words for distractors, backgrounds and contexts
are never COCO synonyms.

POPE (Li et al. 2023, "Evaluating Object Hallucination in Large Vision-Language Models",
github.com/RUCAIBox/POPE, ``POPE/main.py``): per image, ground-truth objects give "yes" questions and as many
absent objects give "no" questions, chosen three ways: *random* (uniform among absent categories), *popular*
(the most frequent categories of the dataset) and *adversarial* (the categories that co-occur most with the
image's objects). The toy world has no sampled annotation statistics, so frequency and co-occurrence come from
the generative model itself (:func:`~prunelab.toyworld.categories.category_frequency`,
:func:`~prunelab.toyworld.categories.cooccurrence`). The question keeps POPE's template verbatim, COCO name
and article "a" included ("Is there a apple in the image?" is what POPE asks too).
"""

from __future__ import annotations

import re

import numpy as np

from prunelab.errors import UnknownNameError
from prunelab.toyworld import categories as C
from prunelab.toyworld.scenes import CANVAS, Scene, SceneObject, scene_rng

#: The instruction every description answers (a module constant so prompts never drift).
DESCRIBE_PROMPT = "Please describe this image in detail."
#: POPE's question template; ``{object}`` is the COCO category name.
POPE_TEMPLATE = "Is there a {object} in the image?"
POPE_SETTINGS = ("random", "popular", "adversarial")

NUMBERS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve")


# --------------------------------------------------------------------------------------------- noun phrases
class _Phrase:
    """How one described group (all objects of a category) is named in one description."""

    def __init__(self, cat: C.Category, noun: C.Noun, count: int):
        self.cat, self.noun, self.count = cat, noun, count

    def head(self) -> str:
        m = self.cat.measure
        if self.count == 1:
            return f"{m} of {self.noun.singular}" if m else self.noun.singular
        if m:
            return f"{m}s of {self.noun.plural}"
        return self.noun.plural

    def indefinite(self) -> str:
        """'a dog', 'three dogs', 'a pair of skis', 'two heads of broccoli'."""
        if self.count == 1:
            h = self.head()
            return ("an " if h[0] in "aeiou" else "a ") + h
        return f"{NUMBERS[self.count] if self.count < len(NUMBERS) else self.count} {self.head()}"

    def definite(self) -> str:
        if self.count == 1:
            return "the " + self.head()
        return f"the {NUMBERS[self.count]} {self.head()}" if self.count <= 3 else "the " + self.head()

    def be(self) -> str:
        return "are" if self.count > 1 else "is"


def _nouns_for(cat: C.Category, objs: list[SceneObject]) -> list[C.Noun]:
    """Nouns usable for this group: category nouns plus variant nouns when every object is that variant."""
    nouns = list(cat.nouns)
    cps = {o.codepoint for o in objs}
    for v in cat.variants:
        if cps == {v.codepoint}:
            nouns += list(v.nouns)
    if len(objs) > 1:
        nouns = [n for n in nouns if n.plural is not None]
    return nouns


def _pick_noun(rng, nouns: list[C.Noun]) -> C.Noun:
    # The canonical word stays the most common, as in real captions.
    w = np.array([3.0] + [1.0] * (len(nouns) - 1))
    return nouns[int(rng.choice(len(nouns), p=w / w.sum()))]


def _join(items: list[str]) -> str:
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + " and " + items[-1]


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


# --------------------------------------------------------------------------------------------- geometry words
def _region(o: SceneObject) -> tuple[str, str]:
    cx, cy = o.center
    h = "left" if cx < CANVAS / 3 else "right" if cx > 2 * CANVAS / 3 else "center"
    v = "top" if cy < CANVAS / 3 else "bottom" if cy > 2 * CANVAS / 3 else "middle"
    return v, h


_LOC = {
    ("top", "left"): ["in the top left corner", "in the upper left", "at the top left"],
    ("top", "center"): ["at the top", "near the top", "in the upper part of the image"],
    ("top", "right"): ["in the top right corner", "in the upper right", "at the top right"],
    ("middle", "left"): ["on the left", "on the left side", "near the left edge"],
    ("middle", "center"): ["in the center", "in the middle", "in the middle of the image"],
    ("middle", "right"): ["on the right", "on the right side", "near the right edge"],
    ("bottom", "left"): ["in the bottom left corner", "in the lower left", "at the bottom left"],
    ("bottom", "center"): ["at the bottom", "near the bottom", "in the lower part of the image"],
    ("bottom", "right"): ["in the bottom right corner", "in the lower right", "at the bottom right"],
}


def _loc(rng, o: SceneObject) -> str:
    opts = _LOC[_region(o)]
    return opts[int(rng.integers(len(opts)))]


def _size_word(rng, o: SceneObject) -> str:
    if o.size >= 135:
        return ["large ", "big ", "large "][int(rng.integers(3))]
    if o.size <= 50:
        return ["small ", "little ", "small "][int(rng.integers(3))]
    return ""


def _relation(a: SceneObject, b: SceneObject) -> str:
    (ax, ay), (bx, by) = a.center, b.center
    dx, dy = ax - bx, ay - by
    if abs(dx) >= abs(dy):
        return "to the left of" if dx < 0 else "to the right of"
    return "above" if dy < 0 else "below"


# --------------------------------------------------------------------------------------------- descriptions
def _groups(scene: Scene, rng) -> list[tuple[_Phrase, list[SceneObject]]]:
    groups = []
    for name in scene.categories:
        objs = [o for o in scene.objects if o.category == name]
        cat = C.BY_NAME[name]
        groups.append((_Phrase(cat, _pick_noun(rng, _nouns_for(cat, objs)), len(objs)), objs))
    order = int(rng.integers(3))
    if order == 0:  # biggest first
        groups.sort(key=lambda g: -max(o.area for o in g[1]))
    elif order == 1:
        rng.shuffle(groups)
    return groups


def _overview(rng, scene: Scene, groups, mention_context: bool) -> str:
    listed = _join([g[0].indefinite() for g in groups])
    first = groups[0][0]
    ctx = C.BY_CONTEXT[scene.context].phrase
    if mention_context:
        t = [
            f"This image shows {ctx} with {listed}.",
            f"The picture looks like {ctx}: it contains {listed}.",
            f"This is {ctx}. In it we can see {listed}.",
            f"A colourful drawing of {ctx} with {listed}.",
        ]
    else:
        there = "are" if first.count > 1 else "is"
        t = [
            f"This image shows {listed}.",
            f"In this picture there {there} {listed}.",
            f"The picture contains {listed}.",
            f"We can see {listed} in this image.",
            f"A colourful drawing of {listed}.",
        ]
    return t[int(rng.integers(len(t)))]


def _group_sentence(rng, scene: Scene, phrase: _Phrase, objs: list[SceneObject], other=None) -> str:
    if phrase.count == 1:
        o = objs[0]
        the = f"the {_size_word(rng, o)}{phrase.head()}"
        loc = _loc(rng, o)
        if other is not None and rng.random() < 0.5:
            oph, oo = other
            return f"{_cap(the)} is {_relation(o, oo[0])} {oph.definite()}."
        t = [
            f"{_cap(the)} is {loc}.",
            f"{_cap(the)} can be seen {loc}.",
            f"{_cap(loc)} is {the}.",
            f"{_cap(loc)}, we can see {the}.",
        ]
        return t[int(rng.integers(len(t)))]
    regions = {_region(o) for o in objs}
    if len(regions) == 1:
        loc = _loc(rng, objs[0])
        t = [f"{_cap(phrase.definite())} are grouped {loc}.", f"{_cap(phrase.indefinite())} sit together {loc}."]
    elif phrase.count == 2:
        l1, l2 = _loc(rng, objs[0]), _loc(rng, objs[1])
        t = [f"{_cap(phrase.definite())} are {l1} and {l2}.", f"One of {phrase.definite()} is {l1}, the other is {l2}."]
    else:
        t = [
            f"{_cap(phrase.definite())} are spread across the image.",
            f"{_cap(phrase.definite())} are scattered around the picture.",
            f"{_cap(phrase.definite())} are in different places.",
        ]
    return t[int(rng.integers(len(t)))]


def _background_sentence(rng, scene: Scene) -> str:
    bg = scene.background["phrase"]
    they = "It is" if len(scene.objects) == 1 else "They are"
    if scene.background["kind"] == "plain":
        c = scene.background["colour"]
        t = [f"The background is plain {c}.", f"Everything is set against {bg}.", f"{they} shown on {bg}."]
    else:
        t = [f"The background is {bg}.", f"Everything is set against {bg}.", f"{they} drawn on {bg}."]
    return t[int(rng.integers(len(t)))]


def _distractor_sentence(rng, scene: Scene) -> str:
    by = {}
    for d in scene.distractors:
        by[d.category] = by.get(d.category, 0) + 1
    dmap = {d.word: d for d in C.DISTRACTORS}
    items = []
    for w, k in by.items():
        d = dmap[w]
        items.append((("an " if w[0] in "aeiou" else "a ") + w) if k == 1 else f"{NUMBERS[k]} {d.plural}")
    listed = _join(items)
    t = [
        f"Some decorative icons are also scattered around: {listed}.",
        f"There are also other icons in the picture, such as {listed}.",
        f"Besides the main objects, the image has {listed}.",
    ]
    return t[int(rng.integers(len(t)))]


def describe(scene: Scene, variant: int = 0) -> str:
    """A detailed description of ``scene`` (deterministic per ``variant``; different variants paraphrase).

    Mentions every ground-truth category with its exact count, and nothing else from COCO.
    """
    rng = scene_rng(scene.split, scene.index, scene.seed, f"describe/{int(variant)}/{int(scene.mirrored)}")
    if not scene.objects:
        return f"The image shows {scene.background['phrase']} with no clear objects."
    groups = _groups(scene, rng)
    p_ctx = {"simple": 0.3, "medium": 0.6, "complex": 0.7}[scene.complexity]
    mention_context = bool(rng.random() < p_ctx)
    sents = [_overview(rng, scene, groups, mention_context)]
    # Detail sentences: every group for small scenes, a random subset of at most 4 for big ones.
    idx = list(range(len(groups)))
    if len(idx) > 4:
        idx = sorted(rng.choice(len(idx), 4, replace=False).tolist())
    for k in idx:
        phrase, objs = groups[k]
        other = None
        if phrase.count == 1 and len(groups) > 1:
            j = (k + 1) % len(groups)
            if groups[j][0].count == 1:
                other = groups[j]
        sents.append(_group_sentence(rng, scene, phrase, objs, other))
    bg_first = rng.random() < 0.3
    bg = _background_sentence(rng, scene)
    if bg_first:
        sents.insert(1, bg)
    else:
        sents.append(bg)
    if scene.distractors and rng.random() < 0.7:
        sents.append(_distractor_sentence(rng, scene))
    if not mention_context and scene.complexity != "simple" and rng.random() < 0.5:
        sents.append(f"Overall, it looks like {C.BY_CONTEXT[scene.context].phrase}.")
    return " ".join(sents)


# --------------------------------------------------------------------------------------------- word matching
def _phrase_table() -> dict[tuple[str, ...], str]:
    table: dict[tuple[str, ...], str] = {}
    for cat in C.CATEGORIES:
        forms = {cat.name}
        for n in cat.all_nouns():
            forms.add(n.singular)
            if n.plural:
                forms.add(n.plural)
        for f in forms:
            table[tuple(f.lower().split())] = cat.name
    return table


_TABLE = _phrase_table()
_MAXLEN = max(len(k) for k in _TABLE)


def tokenize(text: str) -> list[str]:
    return re.findall(r"[a-z]+", text.lower())


def mentioned_categories(text: str) -> list[str]:
    """Categories named in ``text`` by this module's own nouns (longest phrase first), in order of mention.

    A plain surface matcher for tests and quick checks, not CHAIR: CHAIR's evaluator lives elsewhere and uses
    the full COCO synonym table with lemmatisation.
    """
    toks = tokenize(text)
    out, i = [], 0
    while i < len(toks):
        for n in range(min(_MAXLEN, len(toks) - i), 0, -1):
            cat = _TABLE.get(tuple(toks[i : i + n]))
            if cat is not None:
                out.append(cat)
                i += n
                break
        else:
            i += 1
    return out


# --------------------------------------------------------------------------------------------- POPE
def pope_negatives(scene: Scene, setting: str, k: int, rng: np.random.Generator | None = None) -> list[str]:
    """``k`` absent categories chosen by POPE's ``setting`` (random / popular / adversarial)."""
    present = set(scene.categories)
    absent = [c for c in C.CATEGORY_NAMES if c not in present]
    if setting == "random":
        rng = rng if rng is not None else scene_rng(scene.split, scene.index, scene.seed, "pope/random")
        return [absent[i] for i in rng.choice(len(absent), size=min(k, len(absent)), replace=False)]
    if setting == "popular":
        freq = C.category_frequency()
        return sorted(absent, key=lambda c: (-freq[c], c))[:k]
    if setting == "adversarial":
        co = C.cooccurrence()
        score = {c: sum(co[g][c] for g in present) for c in absent}
        return sorted(absent, key=lambda c: (-score[c], c))[:k]
    raise UnknownNameError(f"unknown POPE setting {setting!r}; choose one of {', '.join(POPE_SETTINGS)}")


def pope_questions(scene: Scene, setting: str = "adversarial", n_yes: int = 3, variant: int = 0) -> list[dict]:
    """Balanced POPE questions: up to ``n_yes`` present categories (yes) and as many absent ones (no), shuffled.

    Each item: ``{"question", "answer" ("yes"/"no"), "object", "setting"}``.
    """
    if setting not in POPE_SETTINGS:
        raise UnknownNameError(f"unknown POPE setting {setting!r}; choose one of {', '.join(POPE_SETTINGS)}")
    rng = scene_rng(scene.split, scene.index, scene.seed, f"pope/{setting}/{int(variant)}")
    present = scene.categories
    k = min(int(n_yes), len(present))
    yes = [present[i] for i in rng.choice(len(present), size=k, replace=False)] if k else []
    no = pope_negatives(scene, setting, k, rng)
    items = [(c, "yes") for c in yes] + [(c, "no") for c in no]
    order = rng.permutation(len(items))
    return [
        {
            "question": POPE_TEMPLATE.format(object=items[i][0]),
            "answer": items[i][1],
            "object": items[i][0],
            "setting": setting,
        }
        for i in order
    ]


def text_record(scene: Scene, n_descriptions: int = 1) -> dict:
    """Scene record plus ``n_descriptions`` paraphrased descriptions and POPE questions for every setting."""
    rec = scene.to_record()
    rec["prompt"] = DESCRIBE_PROMPT
    rec["descriptions"] = [describe(scene, v) for v in range(int(n_descriptions))]
    rec["pope"] = {s: pope_questions(scene, s) for s in POPE_SETTINGS}
    return rec

"""COCO categories drawn as Noto colour emoji, distractor emoji, and scene contexts with co-occurrence priors.

Every emoji below was checked by eye on a contact sheet of the Noto 2.042 font (``scenes.contact_sheet()`` rebuilds
it). 64 of the 80 COCO categories have a clear emoji; the 16 without one (fire hydrant, parking meter, bench,
snowboard, baseball bat, baseball glove, surfboard, fork, dining table, remote, microwave, oven, toaster, sink,
refrigerator, hair drier) never occur in the toy world.

Nouns: each category lists the surface words the descriptions may use for it. Every word is a COCO category
name or one of its synonyms in the CHAIR synonym table (Rohrbach et al. 2018, ``chair.py``; a copy is in
``shared/data/chair_synonyms.reference.txt``), and every plural lemmatises back to one of them, so CHAIR's
own synonym/lemma machinery recognises every mention. Some emoji carry extra variant-specific nouns (the taxi
is also a "taxi", the ram a "ram").

Contexts: a scene draws its objects from one context's weights (with a small out-of-context share, see
:data:`OUT_OF_CONTEXT`), so the usual companions of an object are predictable from language alone, which is
the mechanism by which a language model hallucinates when visual evidence is pruned.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

from prunelab.toyworld.coco import COCO_CATEGORIES


@dataclass(frozen=True)
class Noun:
    """One surface form: singular and plural (``None``: only used for a single object)."""

    singular: str
    plural: str | None

    def article(self) -> str:
        return "an" if self.singular[0] in "aeiou" else "a"


@dataclass(frozen=True)
class Variant:
    """One emoji drawing of a category: codepoint(s) as hex joined by '+', plus nouns specific to it."""

    codepoint: str
    nouns: tuple[Noun, ...] = ()

    @property
    def char(self) -> str:
        return "".join(chr(int(c, 16)) for c in self.codepoint.split("+"))


@dataclass(frozen=True)
class Category:
    name: str
    variants: tuple[Variant, ...]
    nouns: tuple[Noun, ...]
    #: a unit word for mass-like or pair nouns ("a pair of skis", "a head of broccoli"), else None
    measure: str | None = None

    @property
    def countable(self) -> bool:
        """Whether several objects of it can be described: some noun has a plural CHAIR lemmatises back.

        WordNet 3.0 turns "vases" into "vas" and does not know "smartphones", so the toy world never draws two
        vases (CHAIR would miss the plural, as it does on COCO captions).
        """
        return any(n.plural is not None for n in self.nouns)

    @property
    def coco_index(self) -> int:
        return COCO_CATEGORIES.index(self.name)

    def all_nouns(self) -> tuple[Noun, ...]:
        extra = tuple(n for v in self.variants for n in v.nouns)
        return self.nouns + extra


def N(singular: str, plural: str | None = "") -> Noun:
    """``plural=""`` means regular English plural (+s / +es)."""
    if plural == "":
        plural = singular + ("es" if singular.endswith(("s", "sh", "ch", "x")) else "s")
    return Noun(singular, plural)


def V(cp: str, *nouns: Noun) -> Variant:
    return Variant(cp, tuple(nouns))


def _cat(name, variants, nouns, measure=None) -> Category:
    return Category(name, tuple(variants), tuple(nouns), measure)


CATEGORIES: tuple[Category, ...] = (
    _cat("person", [V("1F6B6"), V("1F9CD"), V("1F3C3")], [N("person", "people"), N("man", None), N("woman", None)]),
    _cat("bicycle", [V("1F6B2")], [N("bicycle"), N("bike")]),
    _cat("car", [V("1F697"), V("1F699"), V("1F695", N("taxi"), N("cab"))], [N("car"), N("automobile")]),
    _cat("motorcycle", [V("1F3CD"), V("1F6F5", N("scooter"), N("moped"))], [N("motorcycle"), N("motorbike")]),
    _cat("airplane", [V("2708"), V("1F6E9")], [N("airplane"), N("plane"), N("aircraft", "aircraft")]),
    _cat("bus", [V("1F68C")], [N("bus")]),
    _cat("train", [V("1F686"), V("1F682", N("locomotive"))], [N("train")]),
    _cat("truck", [V("1F69A")], [N("truck"), N("lorry", "lorries")]),
    _cat(
        "boat",
        [V("26F5", N("sailboat")), V("1F6A4", N("speedboat")), V("1F6E5", N("motorboat"))],
        [N("boat"), N("ship")],
    ),
    _cat("traffic light", [V("1F6A6"), V("1F6A5")], [N("traffic light"), N("stoplight"), N("traffic signal")]),
    _cat("stop sign", [V("1F6D1")], [N("stop sign")]),
    _cat("bird", [V("1F426"), V("1F986", N("duck")), V("1F99C", N("parrot"))], [N("bird")]),
    _cat("cat", [V("1F408")], [N("cat"), N("kitten")]),
    _cat("dog", [V("1F415", N("puppy", "puppies")), V("1F429", N("poodle"))], [N("dog")]),
    _cat("horse", [V("1F40E")], [N("horse"), N("pony", "ponies")]),
    _cat("sheep", [V("1F411", N("lamb")), V("1F40F", N("ram"))], [N("sheep", "sheep")]),
    _cat("cow", [V("1F404"), V("1F402", N("ox", "oxen"), N("bull"))], [N("cow")]),
    _cat("elephant", [V("1F418")], [N("elephant")]),
    _cat("bear", [V("1F43B"), V("1F43C", N("panda"))], [N("bear")]),
    _cat("zebra", [V("1F993")], [N("zebra")]),
    _cat("giraffe", [V("1F992")], [N("giraffe")]),
    _cat("backpack", [V("1F392")], [N("backpack"), N("knapsack")]),
    _cat("umbrella", [V("2602"), V("1F302")], [N("umbrella")]),
    _cat("handbag", [V("1F45C"), V("1F45B", N("purse"))], [N("handbag")]),
    _cat("tie", [V("1F454")], [N("tie")]),
    _cat("suitcase", [V("1F9F3")], [N("suitcase")]),
    _cat("frisbee", [V("1F94F")], [N("frisbee")]),
    _cat("skis", [V("1F3BF")], [N("skis", "skis")], measure="pair"),
    _cat(
        "sports ball", [V("26BD", N("soccer ball")), V("1F3C0"), V("26BE"), V("1F3D0")], [N("ball"), N("sports ball")]
    ),
    _cat("kite", [V("1FA81")], [N("kite")]),
    _cat("skateboard", [V("1F6F9")], [N("skateboard")]),
    _cat("tennis racket", [V("1F3BE"), V("1F3F8")], [N("tennis racket"), N("racket")]),
    _cat("bottle", [V("1F37E"), V("1F9F4")], [N("bottle")]),
    _cat("wine glass", [V("1F377")], [N("wine glass")]),
    _cat("cup", [V("2615"), V("1F964"), V("1F375")], [N("cup")]),
    _cat("knife", [V("1F52A")], [N("knife", "knives")]),
    _cat("spoon", [V("1F944")], [N("spoon")]),
    _cat("bowl", [V("1F963")], [N("bowl")]),
    _cat("banana", [V("1F34C")], [N("banana")]),
    _cat("apple", [V("1F34E"), V("1F34F")], [N("apple")]),
    _cat("sandwich", [V("1F96A"), V("1F354", N("burger"), N("hamburger"))], [N("sandwich")]),
    _cat("orange", [V("1F34A")], [N("orange")]),
    _cat("broccoli", [V("1F966")], [N("broccoli", "broccoli")], measure="head"),
    _cat("carrot", [V("1F955")], [N("carrot")]),
    _cat("hot dog", [V("1F32D")], [N("hot dog")]),
    _cat("pizza", [V("1F355")], [N("pizza")]),
    _cat("donut", [V("1F369")], [N("donut"), N("doughnut")]),
    _cat("cake", [V("1F370"), V("1F9C1", N("cupcake")), V("1F382")], [N("cake")]),
    _cat("chair", [V("1FA91")], [N("chair")]),
    _cat("couch", [V("1F6CB")], [N("couch"), N("sofa")]),
    _cat("potted plant", [V("1FAB4")], [N("potted plant"), N("houseplant")]),
    _cat("bed", [V("1F6CF")], [N("bed")]),
    _cat("toilet", [V("1F6BD")], [N("toilet")]),
    _cat("tv", [V("1F4FA")], [N("television"), N("TV", None)]),
    _cat("laptop", [V("1F4BB")], [N("laptop"), N("laptop computer"), N("computer")]),
    _cat("mouse", [V("1F5B1")], [N("mouse", "mice")]),
    _cat("keyboard", [V("2328")], [N("keyboard")]),
    _cat("cell phone", [V("1F4F1")], [N("cell phone"), N("phone"), N("smartphone", None), N("mobile phone")]),
    _cat("book", [V("1F4D5"), V("1F4D7"), V("1F4D8"), V("1F4D9"), V("1F4D6")], [N("book")]),
    _cat("clock", [V("23F0"), V("1F570")], [N("clock")]),
    _cat("vase", [V("1F3FA")], [N("vase", None)]),
    _cat("scissors", [V("2702")], [N("scissors", "scissors")], measure="pair"),
    _cat("teddy bear", [V("1F9F8")], [N("teddy bear")]),
    _cat("toothbrush", [V("1FAA5")], [N("toothbrush")]),
)

CATEGORY_NAMES: tuple[str, ...] = tuple(c.name for c in CATEGORIES)
BY_NAME: dict[str, Category] = {c.name: c for c in CATEGORIES}


@dataclass(frozen=True)
class Distractor:
    """A non-COCO emoji used as clutter; ``word`` (never a CHAIR synonym) may appear in descriptions."""

    codepoint: str
    word: str
    plural: str

    @property
    def char(self) -> str:
        return chr(int(self.codepoint, 16))


DISTRACTORS: tuple[Distractor, ...] = tuple(
    Distractor(cp, w, p)
    for cp, w, p in (
        ("2B50", "star", "stars"),
        ("2764", "heart", "hearts"),
        ("1F333", "tree", "trees"),
        ("1F332", "fir tree", "fir trees"),
        ("1F338", "blossom", "blossoms"),
        ("1F33B", "sunflower", "sunflowers"),
        ("1F344", "mushroom", "mushrooms"),
        ("1F388", "balloon", "balloons"),
        ("1F381", "gift", "gifts"),
        ("1F319", "crescent moon", "crescent moons"),
        ("2600", "sun", "suns"),
        ("2601", "cloud", "clouds"),
        ("1F341", "maple leaf", "maple leaves"),
        ("1F48E", "gem", "gems"),
        ("1F514", "bell", "bells"),
        ("1F511", "key", "keys"),
        ("1F4A1", "light bulb", "light bulbs"),
        ("1F9E9", "puzzle piece", "puzzle pieces"),
        ("1F41A", "shell", "shells"),
        ("1F98B", "butterfly", "butterflies"),
        ("1F41F", "fish", "fish"),
        ("1F422", "turtle", "turtles"),
        ("1F40C", "snail", "snails"),
        ("1F347", "bunch of grapes", "bunches of grapes"),
        ("1F353", "strawberry", "strawberries"),
        ("1F3B5", "musical note", "musical notes"),
        ("1F308", "rainbow", "rainbows"),
        ("1F525", "flame", "flames"),
        ("1F3E0", "little house", "little houses"),
        ("1FAA8", "rock", "rocks"),
        ("1F33F", "herb", "herbs"),
        ("1F340", "clover", "clovers"),
    )
)


@dataclass(frozen=True)
class Context:
    """A scene type: category weights (relative) and the phrase descriptions use for it."""

    name: str
    phrase: str
    weights: dict = field(hash=False, compare=False, default_factory=dict)


CONTEXTS: tuple[Context, ...] = (
    Context(
        "street",
        "a street scene",
        {
            "car": 5,
            "person": 5,
            "bus": 3,
            "truck": 3,
            "bicycle": 3,
            "motorcycle": 3,
            "traffic light": 4,
            "stop sign": 3,
            "dog": 1,
            "umbrella": 2,
            "handbag": 1,
            "backpack": 1,
            "bird": 1,
            "cell phone": 1,
        },
    ),
    Context(
        "kitchen",
        "a kitchen",
        {
            "cup": 4,
            "bowl": 4,
            "knife": 3,
            "spoon": 3,
            "bottle": 3,
            "wine glass": 2,
            "banana": 2,
            "apple": 2,
            "orange": 2,
            "broccoli": 2,
            "carrot": 2,
            "cake": 1,
            "potted plant": 1,
            "clock": 1,
            "vase": 1,
            "scissors": 1,
        },
    ),
    Context(
        "meal",
        "a meal",
        {
            "pizza": 4,
            "sandwich": 4,
            "hot dog": 3,
            "donut": 3,
            "cake": 3,
            "cup": 3,
            "wine glass": 3,
            "bottle": 2,
            "knife": 2,
            "spoon": 2,
            "bowl": 2,
            "banana": 1,
            "apple": 1,
            "orange": 1,
        },
    ),
    Context(
        "living room",
        "a living room",
        {
            "couch": 5,
            "chair": 4,
            "tv": 4,
            "potted plant": 3,
            "book": 3,
            "clock": 2,
            "vase": 2,
            "laptop": 2,
            "cat": 2,
            "dog": 1,
            "teddy bear": 1,
            "cup": 1,
            "cell phone": 1,
        },
    ),
    Context(
        "bedroom",
        "a bedroom",
        {
            "bed": 5,
            "teddy bear": 3,
            "book": 3,
            "clock": 3,
            "laptop": 2,
            "cell phone": 2,
            "chair": 2,
            "potted plant": 1,
            "cat": 1,
            "backpack": 1,
            "tv": 1,
        },
    ),
    Context(
        "bathroom",
        "a bathroom",
        {"toilet": 5, "toothbrush": 4, "bottle": 3, "scissors": 2, "cup": 2, "potted plant": 1, "clock": 1, "vase": 1},
    ),
    Context(
        "office",
        "an office",
        {
            "laptop": 5,
            "keyboard": 4,
            "mouse": 4,
            "cell phone": 3,
            "book": 3,
            "chair": 3,
            "cup": 2,
            "scissors": 2,
            "tie": 2,
            "clock": 1,
            "backpack": 1,
            "potted plant": 1,
            "bottle": 1,
            "tv": 1,
        },
    ),
    Context(
        "farm", "a farm", {"horse": 4, "sheep": 4, "cow": 4, "dog": 2, "bird": 2, "cat": 1, "person": 2, "truck": 1}
    ),
    Context("zoo", "a zoo", {"elephant": 4, "zebra": 4, "giraffe": 4, "bear": 3, "bird": 2, "person": 1}),
    Context(
        "sports",
        "a sports scene",
        {
            "sports ball": 5,
            "tennis racket": 4,
            "skateboard": 3,
            "skis": 3,
            "frisbee": 3,
            "person": 4,
            "bottle": 2,
            "backpack": 2,
            "cup": 1,
        },
    ),
    Context(
        "park",
        "a park",
        {
            "kite": 4,
            "frisbee": 3,
            "dog": 4,
            "bicycle": 3,
            "person": 4,
            "bird": 3,
            "umbrella": 1,
            "sports ball": 2,
            "backpack": 1,
        },
    ),
    Context(
        "travel",
        "a travel scene",
        {
            "suitcase": 5,
            "airplane": 4,
            "backpack": 4,
            "train": 3,
            "bus": 2,
            "person": 4,
            "handbag": 3,
            "cell phone": 2,
            "umbrella": 1,
            "tie": 1,
            "boat": 1,
            "car": 1,
        },
    ),
    Context(
        "beach",
        "a beach",
        {
            "boat": 5,
            "umbrella": 4,
            "bird": 3,
            "person": 4,
            "bottle": 2,
            "kite": 2,
            "frisbee": 2,
            "sports ball": 2,
            "dog": 1,
            "cup": 1,
        },
    ),
)
CONTEXT_NAMES: tuple[str, ...] = tuple(c.name for c in CONTEXTS)
BY_CONTEXT: dict[str, Context] = {c.name: c for c in CONTEXTS}

#: Share of a scene's objects drawn uniformly from all categories instead of from its context.
OUT_OF_CONTEXT = 0.12


def context_distribution(context: str, out_of_context: float = OUT_OF_CONTEXT) -> dict[str, float]:
    """P(category | context): the context's normalised weights mixed with a uniform share."""
    w = BY_CONTEXT[context].weights
    tot = sum(w.values())
    u = out_of_context / len(CATEGORIES)
    return {c: (1 - out_of_context) * w.get(c, 0) / tot + u for c in CATEGORY_NAMES}


@lru_cache(maxsize=1)
def category_frequency() -> dict[str, float]:
    """Expected share of objects per category over the toy world (contexts equally likely).

    POPE's "popular" negatives are the most frequent categories of the dataset; this is that ranking computed
    from the generative model itself rather than from a sample.
    """
    out = dict.fromkeys(CATEGORY_NAMES, 0.0)
    for ctx in CONTEXT_NAMES:
        for c, p in context_distribution(ctx).items():
            out[c] += p / len(CONTEXTS)
    return out


@lru_cache(maxsize=1)
def cooccurrence() -> dict[str, dict[str, float]]:
    """Co-occurrence score P(a and b in one scene's draws) ~ sum over contexts of P(ctx) P(a|ctx) P(b|ctx).

    POPE's "adversarial" negatives are the absent categories that co-occur most with the present ones.
    """
    dists = [context_distribution(ctx) for ctx in CONTEXT_NAMES]
    return {
        a: {b: sum(d[a] * d[b] for d in dists) / len(dists) for b in CATEGORY_NAMES if b != a} for a in CATEGORY_NAMES
    }

"""CHAIR scoring speed: ``python -m prunelab.benchmarks.chair_speed [--n 500] [--words 100] [--seed 0] [--smoke]``.

Builds ``n`` synthetic detailed captions of about ``words`` words each (LLaVA-style sentences mixing COCO object
words, synonyms, plurals, two-word objects and filler), random ground-truth sets, and times: loading WordNet and
building the parser, scoring all captions with cold lemma caches, and scoring them again (warm). Target from the
project brief: 500 captions of ~100 words in <= 10 s on 2 cores. ``--smoke``: 20 captions of ~30 words. Prints
timings; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import random
import time

from prunelab.errors import UnknownNameError
from prunelab.eval.chair import evaluate_chair
from prunelab.eval.mentions import CaptionParser, SynonymTable
from prunelab.eval.textproc import TextProcessor

OBJECTS = [
    "dog",
    "dogs",
    "cat",
    "man",
    "woman",
    "people",
    "men",
    "children",
    "car",
    "cars",
    "bus",
    "traffic light",
    "hot dog",
    "teddy bear",
    "cell phone",
    "wine glasses",
    "knives",
    "forks",
    "table",
    "chair",
    "couch",
    "sofa",
    "laptop",
    "tv",
    "bench",
    "umbrella",
    "bicycle",
    "horses",
    "giraffe",
    "toilet",
    "sink",
    "pizza",
    "cup",
    "bottle",
    "book",
    "clock",
    "vase",
    "kite",
    "surfboard",
    "skis",
    "train",
    "boat",
    "bird",
    "mice",
]
ADJ = ["small", "large", "red", "white", "wooden", "busy", "sunny", "colorful", "old", "modern"]
TEMPLATES = [
    "The image shows a {a} {o} next to a {o2}.",
    "In the background, there are several {o} and a {a} {o2}.",
    "A {o} is sitting on the {o2}, while a {o3} stands nearby.",
    "There is also a {a} {o} placed near the {o2}, adding to the scene.",
    "Overall, the scene captures a {a} moment with {o} and {o2}.",
    "On the left side of the image, a {o} can be seen close to a {a} {o2}.",
]


def make_captions(n: int, words: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    caps = []
    for _ in range(n):
        parts, count = [], 0
        while count < words:
            s = rng.choice(TEMPLATES).format(
                a=rng.choice(ADJ), o=rng.choice(OBJECTS), o2=rng.choice(OBJECTS), o3=rng.choice(OBJECTS)
            )
            parts.append(s)
            count += len(s.split())
        caps.append(" ".join(parts))
    return caps


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--words", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--smoke", action="store_true", help="smoke run: 20 captions of ~30 words")
    args = ap.parse_args(argv)
    if args.smoke:
        args.n, args.words = 20, 30
    if args.n < 1 or args.words < 1:
        raise UnknownNameError(f"--n and --words must be >= 1, got {args.n} and {args.words}; pass e.g. --n 500")

    caps = make_captions(args.n, args.words, args.seed)
    rng = random.Random(args.seed + 1)
    cats = SynonymTable.load().categories
    gt = {i: set(rng.sample(cats, rng.randint(2, 8))) for i in range(args.n)}
    n_words = sum(len(c.split()) for c in caps)

    t0 = time.perf_counter()
    parser = CaptionParser(text_processor=TextProcessor())
    t_load = time.perf_counter() - t0
    t0 = time.perf_counter()
    res = evaluate_chair(list(enumerate(caps)), gt, parser=parser)
    t_cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    evaluate_chair(list(enumerate(caps)), gt, parser=parser)
    t_warm = time.perf_counter() - t0

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    d = parser.describe()
    print(f"chair_speed: {args.n} captions, {n_words} words ({n_words / args.n:.0f}/caption), {cores} cores visible")
    print(f"  text path       : {d['tokenizer_mode']} tokenizer, {d['lemmatizer_mode']} lemmatizer")
    print(f"  load WordNet    : {t_load:6.2f} s")
    print(f"  score (cold)    : {t_cold:6.2f} s  ({1e3 * t_cold / args.n:.2f} ms/caption)")
    print(f"  score (warm)    : {t_warm:6.2f} s")
    print(f"  load + cold     : {t_load + t_cold:6.2f} s   (target <= 10 s for 500 x ~100 words)")
    s = res.summary()
    print(f"  sanity          : CHAIR_s {s['CHAIR_s']}  CHAIR_i {s['CHAIR_i']}  Recall {s['Recall']}  Len {s['Len']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""POPE decoding speed: ``python -m prunelab.benchmarks.pope_batching [--images 4] [--methods ...] [--tiny] [--smoke]``.

For every image x method x budget, the POPE questions of the image are answered three ways on the same model and
the same tower output (the tower is timed once per image and left out):

* ``alone``: every question through :meth:`~prunelab.models.adapter.LlavaAdapter.run` on its own (selection,
  prefill and decoding per question: the study loop before the shared path);
* ``shared1``: :meth:`~prunelab.models.adapter.LlavaAdapter.run_shared_image` with ``batch_size=1`` (one selection
  per entry, questions decoded one by one);
* ``shared``: the same with all questions of the image in one left-padded batch (what
  :func:`prunelab.study.generation.run_generation` does by default).

Prints milliseconds per entry, the speed-up of each shared variant over ``alone`` and the share of answers that
are identical to ``alone`` (the batched path must give batch-1's answers). Default model: the committed ToyLLaVA
on toy test scenes; ``--tiny`` uses a seeded tiny LLaVA and synthetic images. ``--smoke`` is the smallest run of
the default model (2 images, 1 round, FasterVLM and Vanilla, 2 new tokens; what ``make bench-smoke`` and the
tests run). Asserts nothing; one torch thread; medians over ``--rounds`` interleaved rounds.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import time

from prunelab.errors import check_budget
from prunelab.paths import atomic_write

COLUMNS = [
    "method",
    "budget",
    "questions",
    "alone_ms",
    "shared1_ms",
    "shared_ms",
    "speedup_shared1",
    "speedup_shared",
    "identical",
]


def _setup(tiny: bool, n_images: int, seed: int):
    """(GenerationModel, [(image id, pixel values, [prompt ids])]) for the benchmark."""
    import numpy as np
    from PIL import Image

    from prunelab.models import loader as L
    from prunelab.study import generation as G

    if tiny:
        from prunelab.models.adapter import LlavaAdapter
        from prunelab.models.tiny import ToyTokenizer, tiny_llava

        model = tiny_llava("clip", seed=seed, text_layers=2)
        words = (
            f"USER: ASSISTANT: Is there a dog cat car person in the image? yes no {L.LLAVA_SHORT_ANSWER}".split()
            + [f"w{i}" for i in range(300)]
        )
        gm = L.from_adapter(LlavaAdapter(model, tokenizer=ToyTokenizer(model, words), device="cpu"), "hf_chat")
        rng = np.random.default_rng(seed)
        objects = ["dog", "cat", "car", "person"]
        out = []
        for i in range(n_images):
            img = Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
            qs = [gm.prompt_ids(gm.question_prompt(f"Is there a {o} in the image?")) for o in objects]
            out.append((f"synthetic-{i}", gm.pixels(img), qs))
        return gm, out
    from prunelab.study.data import load_image_set

    gm = L.load_generation_model("toyllava", device="cpu")
    items = load_image_set("toyworld:test", n=n_images, seed=seed)
    qs = G.pope_questions_for(items, "toyworld:test")
    return gm, [
        (it.id, gm.pixels(it.image), [gm.prompt_ids(gm.question_prompt(q.question)) for q in qs[it.id]]) for it in items
    ]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=4, help="images (>= 2: erank-calibrated methods need statistics)")
    ap.add_argument("--methods", nargs="+", default=["FasterVLM", "DivPrune", "AgilePruner", "Vanilla"])
    ap.add_argument("--budgets", nargs="+", type=int, default=None, help="default: 64 (ToyLLaVA) or 16 (--tiny)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--max-new-tokens", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tiny", action="store_true", help="a seeded tiny LLaVA instead of the committed ToyLLaVA")
    ap.add_argument("--csv", metavar="PATH", help="also write the table as CSV")
    ap.add_argument("--smoke", action="store_true", help="smoke run: 2 images, 1 round, FasterVLM + Vanilla, 2 tokens")
    args = ap.parse_args(argv)
    if args.smoke:
        args.images, args.rounds, args.max_new_tokens, args.methods = 2, 1, 2, ["FasterVLM", "Vanilla"]

    import torch

    from prunelab.study import generation as G

    torch.set_num_threads(1)
    gm, images = _setup(args.tiny, args.images, args.seed)
    ad = gm.adapter
    budgets = [check_budget(b, gm.n_image_tokens) for b in (args.budgets or ([16] if args.tiny else [64]))]
    specs = G.resolve_generation_methods(args.methods)
    eos = getattr(gm.tokenizer, "eos_token_id", None)
    encs = {}
    for iid, pv, _ in images:
        encs[iid] = ad.encode_images(pv, G._qk_layers_for(specs, ad))
    # Erank-calibrated methods (AgilePruner, +erank hybrids) get statistics from these images, as the study does.
    from prunelab.study.runner import erank_stats_from

    ctxs = [ad.context(encs[iid], 0) for iid, _, _ in images]
    stats = {
        es: erank_stats_from(G.spec_input_erank(c, es) for c in ctxs)
        for es in {sp.pruner.erank_stats_spec() for sp in specs if sp.pruner is not None} - {None}
    }
    n_q = sum(len(q) for _, _, q in images) / len(images)

    def one(variant, sp, b, iid, pv, qs):
        es = sp.pruner.erank_stats_spec() if sp.pruner is not None else None
        kw = dict(max_new_tokens=args.max_new_tokens, eos_token_id=eos, erank_stats=stats.get(es))
        budget = None if sp.pruner is None else b
        with ad.reuse_encoding(pv, encs[iid]):
            t0 = time.perf_counter()
            if variant == "alone":
                texts = [ad.run([torch.tensor(q)], pv, sp.pruner, budget, image_ids=[iid], **kw).texts[0] for q in qs]
            else:
                out = ad.run_shared_image(
                    [torch.tensor(q) for q in qs],
                    pv,
                    sp.pruner,
                    budget,
                    image_id=iid,
                    batch_size=1 if variant == "shared1" else max(1, len(qs)),
                    **kw,
                )
                texts = out.texts
            return time.perf_counter() - t0, texts

    rows = []
    for sp in specs:
        for b in [gm.n_image_tokens] if sp.pruner is None else budgets:
            times = {v: [] for v in ("alone", "shared1", "shared")}
            same, total = 0, 0
            for _ in range(args.rounds):
                for v in times:  # interleaved, so a load change hits every variant alike
                    secs, answers = 0.0, []
                    for iid, pv, qs in images:
                        s, t = one(v, sp, b, iid, pv, qs)
                        secs += s
                        answers.append(t)
                    times[v].append(secs / len(images))
                    if v == "alone":
                        ref = answers
                    else:
                        same += sum(x == y for a, r in zip(answers, ref) for x, y in zip(a, r))
                        total += sum(len(r) for r in ref)
            med = {v: statistics.median(ts) * 1000 for v, ts in times.items()}
            rows.append(
                {
                    "method": sp.label,
                    "budget": b,
                    "questions": f"{n_q:.1f}",
                    "alone_ms": f"{med['alone']:.1f}",
                    "shared1_ms": f"{med['shared1']:.1f}",
                    "shared_ms": f"{med['shared']:.1f}",
                    "speedup_shared1": f"{med['alone'] / med['shared1']:.2f}x",
                    "speedup_shared": f"{med['alone'] / med['shared']:.2f}x",
                    "identical": f"{same / total:.3f}" if total else "nan",
                }
            )
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"POPE decoding per image x method x budget ({'tiny LLaVA' if args.tiny else 'ToyLLaVA'}, {len(images)} "
        f"images, torch.set_num_threads(1), median of {args.rounds} rounds, load average {load:.1f})"
    )
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in COLUMNS}
    print("  ".join(c.ljust(widths[c]) for c in COLUMNS))
    for r in rows:
        print("  ".join(str(r[c]).ljust(widths[c]) for c in COLUMNS))
    if args.csv:
        with atomic_write(args.csv, "w") as fh:
            w = csv.DictWriter(fh, fieldnames=COLUMNS)
            w.writeheader()
            w.writerows(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

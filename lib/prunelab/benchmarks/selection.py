"""Selection cost vs the vision tower: ``python -m prunelab.benchmarks.selection [--images 4] [--budget 64]
[--repeats 5] [--greedy-repeats 5] [--threads 1] [--projector auto|none] [--csv PATH] [--smoke]``.

Question (project issue "selection speed"): how long does each pre-LLM method take to choose ``T = 64`` of the
576 tokens of one image, *as a share of the vision tower's forward on the same image*? Goal: <= 2 % for every
method except the PruMerge family, whose merge step (per kept token, a similarity row against all N tokens and a
neighbour sum; methods-spec §2.2 "Cost", the source's per-token Python loop) is the quadratic merge the goal
exempts. Second question: the incremental max–min greedy shared by DivPrune and FPS
(:mod:`prunelab.methods._greedy`, O(T·N)) vs the textbook recomputation (O(T²·N), methods-spec §2.5 "Cost"):
speed-up at T = 64, 128, 192 (goal >= 10x) and whether both pick the same tokens.

How it measures (real DINOv2-S/14 tower of the offline wheel, real photos from :mod:`prunelab.study.photos`):

* images: ``--images`` photos spread evenly over the photo manifest (``--smoke``, alias ``--quick``: scikit-image
  photos only), each resized to 336 px -> 576 patches;
* tower time: one batch-1 no-grad forward of the preprocessed image (``prunelab.models.vision._forward``: the forward
  :func:`prunelab.models.vision.encode_images` runs per batch, including the q/k recomputation of layers -2 and -1
  that VisionZip/PruMerge read; image decoding, resizing and cache hashing are *not* counted, so the ratio is
  the stricter one). No feature cache.
* selection time: ``pruner(ctx, T)`` (:meth:`prunelab.methods.base.Pruner.__call__`: the method's own
  selection/merge, without the erank statistics :func:`prunelab.methods.base.prune` adds afterwards). When a
  projector is present (ToyLLaVA's, ``--projector auto``) the projected tokens are computed once per image
  *before* timing, as LLaVA projects all tokens anyway; without one, DivPrune/FPS/AttnDiv run on the vision
  features (:func:`prunelab.study.runner.methods_for`, labelled ``features=vision``).
* AgilePruner and the erank-guided hybrids read dataset erank statistics: calibrated on the benchmark images
  with :func:`prunelab.methods.adaptive.calibrate_erank` (its defaults, as :func:`prunelab.study.runner.run_vision`).
* interleaving: after one untimed warm-up round per image, each of ``--repeats`` rounds times one tower
  forward and then every method once, on the same image, so both see the same machine load. Per image the
  median over rounds is taken; the table shows the median over images of the selection time, the tower time
  and their per-image ratio, and the worst image's ratio.
* threads: ``torch.set_num_threads(--threads)`` (default 1: the shared 2-core machine gives noisy, up to 5x
  slower multi-thread timings); the header states it and the host load average.

Prints two tables; asserts nothing. ``--csv`` writes the first table (atomically).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import time

from prunelab.benchmarks.common import add_timing_args, check_positive, median, pick_photos, torch_threads, write_csv
from prunelab.errors import BudgetError, UnknownNameError
from prunelab.study.photos import load_photo

GOAL_RATIO = 0.02  # selection / tower forward
GOAL_SPEEDUP = 10.0  # textbook / incremental greedy
GREEDY_BUDGETS = (64, 128, 192)
QK_LAYERS = (-2, -1)  # VisionZip reads layer -2 keys, PruMerge the last layer's q/k
COLUMNS = ["method", "family", "select_ms", "tower_ms", "ratio_pct", "max_ratio_pct", "goal"]


def is_exempt(name: str) -> bool:
    """PruMerge, PruMerge+ and the fixed-budget PruMerge+ merge every kept token with its key-nearest
    neighbours (methods-spec §2.2): the quadratic merges the <= 2 % goal leaves out."""
    return name.startswith("PruMerge")


def _fmt_row(vals, widths, left: int = 2) -> str:
    """One fixed-width line: the first ``left`` columns left-aligned, the rest right-aligned."""
    return "  ".join(str(v).ljust(w) if i < left else str(v).rjust(w) for i, (v, w) in enumerate(zip(vals, widths)))


def format_table(rows: list[dict]) -> str:
    widths = [max(len(COLUMNS[0]), *(len(r["method"]) for r in rows)), 10, 9, 9, 9, 13, 6]
    lines = [_fmt_row(COLUMNS, widths)]
    for r in rows:
        lines.append(
            _fmt_row(
                [
                    r["method"],
                    r["family"],
                    f"{r['select_ms']:.3f}",
                    f"{r['tower_ms']:.1f}",
                    f"{r['ratio_pct']:.3f}",
                    f"{r['max_ratio_pct']:.3f}",
                    r["goal"],
                ],
                widths,
            )
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_timing_args(ap, images=4, repeats=5, what="selection table")
    ap.add_argument("--budget", type=int, default=64, help="tokens kept, T (default 64)")
    ap.add_argument("--projector", default="auto", help="auto (ToyLLaVA's if present) | toyllava | none")
    ap.add_argument("--methods", default=None, help="comma-separated subset of the vision-only methods")
    ap.add_argument("--greedy-repeats", type=int, default=5, help="best-of repeats for the greedy speed-up (default 5)")
    ap.add_argument(
        "--smoke", "--quick", dest="quick", action="store_true", help="smoke run: 1 image, 1 round, greedy at T=64 only"
    )
    args = ap.parse_args(argv)

    if args.quick:
        args.images, args.repeats, args.greedy_repeats = 1, 1, 1
    check_positive(args, "repeats", "threads", "greedy_repeats")
    with torch_threads(args.threads):
        return _run(args)


def _run(args) -> int:
    import torch

    from prunelab.methods.adaptive import calibrate_erank
    from prunelab.methods.diversity import compare_greedy_speed
    from prunelab.models import vision
    from prunelab.models.encoders import load_projector
    from prunelab.study.runner import methods_for, resolve_methods, vision_methods

    greedy_budgets = (64,) if args.quick else GREEDY_BUDGETS

    source = "scikit-image" if args.quick else None
    names = pick_photos(args.images, source)
    tower = vision.default_tower()
    projector = load_projector(args.projector)
    all_methods = vision_methods()
    if args.methods:
        wanted = [m.strip() for m in args.methods.split(",") if m.strip()]
        unknown = [m for m in wanted if m not in all_methods]
        if unknown:
            raise UnknownNameError(f"--methods: unknown {', '.join(unknown)}; known: {', '.join(all_methods)}")
        all_methods = [m for m in all_methods if m in wanted]
    specs = resolve_methods(methods_for(all_methods, projected=projector is not None))

    # Encode once (no cache): contexts for the methods and the erank calibration; also warms the tower up. The
    # erank-guided hybrids need min < max, so a 1-image run calibrates on 2 photos (the first is the timed one).
    calib = pick_photos(max(2, args.images), source)
    images = [load_photo(n) for n in calib]
    out = vision.encode_images(
        images, tower, batch_size=1, qk_layers=QK_LAYERS, cache=False, names=calib, progress=False
    )
    ctxs = [vision.to_context(out, i, projector, image_id=calib[i]) for i in range(len(calib))]
    stats = calibrate_erank(ctxs)
    images, ctxs = images[: len(names)], ctxs[: len(names)]
    n_tok = ctxs[0].n_tokens
    if not 1 <= args.budget <= n_tok:
        raise BudgetError(f"--budget {args.budget} is out of range for {n_tok} tokens; pass 1..{n_tok}")
    for c in ctxs:
        c.erank_stats = stats
        if c.has_space("projected"):
            c.space("projected")  # computed once, outside the timings
    settings = vision.Preprocess()
    pixels = [vision.preprocess(img, settings)[None] for img in images]

    def time_tower(px):
        t0 = time.perf_counter()
        vision._forward(tower, px, QK_LAYERS)
        return time.perf_counter() - t0

    def time_select(spec, ctx):
        t0 = time.perf_counter()
        spec.pruner(ctx, args.budget)
        return time.perf_counter() - t0

    tower_med: list[float] = []
    sel_med: dict[str, list[float]] = {s.label: [] for s in specs}
    for px, ctx in zip(pixels, ctxs):
        time_tower(px)  # warm-up round (lazy imports, allocator)
        for s in specs:
            time_select(s, ctx)
        t_tower, t_sel = [], {s.label: [] for s in specs}
        for _ in range(args.repeats):
            t_tower.append(time_tower(px))
            for s in specs:
                t_sel[s.label].append(time_select(s, ctx))
        tower_med.append(median(t_tower))
        for s in specs:
            sel_med[s.label].append(median(t_sel[s.label]))

    rows = []
    for s in specs:
        ratios = [a / b for a, b in zip(sel_med[s.label], tower_med)]
        ratio = median(ratios)
        goal = "exempt" if is_exempt(s.pruner.name) else ("yes" if ratio <= GOAL_RATIO else "NO")
        rows.append(
            {
                "method": s.label,
                "family": s.pruner.family,
                "select_ms": 1e3 * median(sel_med[s.label]),
                "tower_ms": 1e3 * median(tower_med),
                "ratio_pct": 100 * ratio,
                "max_ratio_pct": 100 * max(ratios),
                "goal": goal,
            }
        )

    greedy = compare_greedy_speed(n=n_tok, budgets=greedy_budgets, repeats=args.greedy_repeats)

    load = os.getloadavg() if hasattr(os, "getloadavg") else (math.nan,) * 3
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(
        f"selection benchmark: T={args.budget} of {n_tok} tokens, {len(names)} image(s), {args.repeats} "
        f"interleaved round(s) per image after 1 warm-up"
    )
    print(
        f"  machine   : {platform.machine()}, {cores} cores visible, torch {torch.__version__}, "
        f"torch.set_num_threads({args.threads}), load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )
    print(
        f"  tower     : DINOv2-S/14 {vision.tower_fingerprint(tower)[:12]}, batch 1, no cache, forward incl. q/k "
        f"of layers {QK_LAYERS}; projector: {'ToyLLaVA' if projector is not None else 'none (vision features)'}"
    )
    print(f"  images    : {', '.join(names)}")
    print(
        f"  erank     : calibrated on {', '.join(calib)}: mean {stats['mean']:.2f} (min {stats['min']:.2f}, "
        f"max {stats['max']:.2f})"
    )
    print(
        f"  goal      : selection <= {100 * GOAL_RATIO:.0f}% of the tower forward (PruMerge family exempt); "
        "ratio = median over images of per-image median select / median tower"
    )
    print()
    print(format_table(rows))
    n_goal = [r for r in rows if r["goal"] != "exempt"]
    print(f"\n  {sum(r['goal'] == 'yes' for r in n_goal)}/{len(n_goal)} non-exempt methods meet the goal")
    print()
    print(
        f"greedy max-min speed-up (DivPrune/FPS core; incremental O(T*N) vs textbook O(T^2*N)); n={n_tok}, "
        f"d={greedy[0]['d']}, seeded random tokens, best of {args.greedy_repeats}; goal >= {GOAL_SPEEDUP:.0f}x"
    )
    gw = [6, 14, 11, 9, 9, 4]
    print(_fmt_row(["budget", "incremental_ms", "textbook_ms", "speedup", "identical", "goal"], gw, left=1))
    for g in greedy:
        print(
            _fmt_row(
                [
                    str(g["budget"]),
                    f"{1e3 * g['incremental_s']:.3f}",
                    f"{1e3 * g['textbook_s']:.3f}",
                    f"{g['speedup']:.1f}x",
                    "yes" if g["identical"] else "NO",
                    "yes" if g["speedup"] >= GOAL_SPEEDUP else "NO",
                ],
                gw,
                left=1,
            )
        )
    print(f"  (distance matrix, shared by both, {1e3 * greedy[0]['distance_s']:.1f} ms)")
    if args.csv:
        write_csv(rows, COLUMNS, args.csv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

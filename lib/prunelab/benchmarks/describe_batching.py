"""Description decoding speed: ``python -m prunelab.benchmarks.describe_batching [--model toyllava-s] [--smoke]``.

Runs the study loop (:func:`prunelab.study.generation.run_generation`, ``task="describe"``, no cache) twice on the
same images, methods and budgets: once with LLaVA's batch-1 protocol (``describe_batch_size=1``: every description
decoded alone) and once with an image's selections decoded ``--batch`` at a time
(``describe_batch_size=k``, :meth:`~prunelab.models.adapter.LlavaAdapter.run_selections`). Prints the wall time of
each, the speed-up and the share of descriptions that are identical to batch 1 (in fp32 they should all be; bf16
rounding of the padded batch may change a token). ``--smoke``: the tiny embedded model, 2 images, FasterVLM +
Vanilla, 4 new tokens (what ``make bench-smoke`` runs). Asserts nothing; one torch thread.
"""

from __future__ import annotations

import argparse
import time

from prunelab.benchmarks.common import check_positive, torch_threads, write_csv

COLUMNS = ["model", "dtype", "images", "selections", "batch", "batch1_s", "batched_s", "speedup", "identical"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="toyllava-s", help="embedded model name or a model folder")
    ap.add_argument("--images", type=int, default=2)
    ap.add_argument("--methods", nargs="+", default=["Vanilla", "FasterVLM", "DivPrune", "VisPruner"])
    ap.add_argument("--budgets", nargs="+", type=int, default=[64, 128])
    ap.add_argument("--batch", type=int, default=8, help="descriptions decoded together (describe_batch_size)")
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--csv", default=None, help="also write the table to this CSV file")
    ap.add_argument("--smoke", action="store_true", help="tiny model, 2 images, FasterVLM + Vanilla, 4 tokens")
    args = ap.parse_args(argv)
    if args.smoke:
        args.model, args.images, args.methods, args.max_new_tokens = "toyllava", 2, ["Vanilla", "FasterVLM"], 4
    check_positive(args, "images", "batch", "max_new_tokens", "threads")

    import torch

    from prunelab.models.loader import load_generation_model
    from prunelab.study.generation import run_generation

    with torch_threads(args.threads):
        gm = load_generation_model(args.model, device="cpu", dtype=getattr(torch, args.dtype))
        kw = dict(task="describe", n=args.images, max_new_tokens=args.max_new_tokens, cache_dir=False, progress=False)
        times, tables = {}, {}
        for k in (1, args.batch):
            t0 = time.perf_counter()
            tables[k] = run_generation(gm, "toyworld:test", args.methods, args.budgets, describe_batch_size=k, **kw)
            times[k] = time.perf_counter() - t0
    a, b = tables[1], tables[args.batch]
    row = {
        "model": args.model,
        "dtype": args.dtype,
        "images": args.images,
        "selections": len(a) // args.images,
        "batch": args.batch,
        "batch1_s": round(times[1], 2),
        "batched_s": round(times[args.batch], 2),
        "speedup": round(times[1] / times[args.batch], 2),
        "identical": f"{int((a['text'].to_numpy() == b['text'].to_numpy()).sum())}/{len(a)}",
    }
    print(" ".join(f"{k}={v}" for k, v in row.items()))
    if args.csv:
        write_csv([row], COLUMNS, args.csv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

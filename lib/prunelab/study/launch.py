"""The data-parallel study loop from the command line: one process per GPU, one shared cache, one merged table.

One GPU (or the CPU)::

    python -m prunelab.study.launch generation --model /ckpt/llava-1.5-7b-hf --image-set coco:/data/val2014 \\
        --n-images 500 --methods Vanilla,FasterVLM,DivPrune --budgets 64,128 --task describe --out describe.csv

N GPUs on one node: the same arguments under ``torchrun --standalone --nproc_per_node N -m prunelab.study.launch``.
Each rank joins a gloo process group (only barriers are exchanged; 24 h timeout, since a rank waits for the
slowest rank's whole share), runs on ``cuda:<LOCAL_RANK>``, computes its own images (:mod:`prunelab.study.shard`)
into ``--cache-dir`` (default: the prunelab cache), and rank 0 writes the merged table to ``--out`` (CSV, list
columns as JSON; :func:`prunelab.study.runner.save_table`). ``vision`` runs :func:`prunelab.study.runner.run_vision`
(the DINOv2 tower) instead of :func:`prunelab.study.generation.run_generation`.
"""

from __future__ import annotations

import argparse
import os
from datetime import timedelta
from pathlib import Path

from prunelab.study.shard import distributed, sharding


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"budgets must be comma-separated integers, got {text!r}") from None


def _names(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m prunelab.study.launch", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="loop", required=True)
    for name in ("generation", "vision"):
        s = sub.add_parser(name)
        s.add_argument("--image-set", required=True, help="toyworld:test, photos, coco:<dir>")
        s.add_argument("--methods", required=True, type=_names, help="comma-separated, e.g. Vanilla,FasterVLM")
        s.add_argument("--budgets", required=True, type=_ints, help="comma-separated kept-token counts")
        s.add_argument("--n-images", type=int, default=None, help="a seeded subset of this many images (default: all)")
        s.add_argument("--seed", type=int, default=0)
        s.add_argument("--device", default="auto")
        s.add_argument("--cache-dir", default=None, help="shared by every rank (default: the prunelab cache)")
        s.add_argument("--out", required=True, type=Path, help="CSV of the merged table (written by rank 0)")
        if name == "generation":
            s.add_argument("--model", default="toyllava", help="toyllava, an HF id or a llava-hf folder")
            s.add_argument("--task", default="describe", choices=("describe", "pope"))
            s.add_argument("--max-new-tokens", type=int, default=None)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    joined = False
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and "MASTER_ADDR" in os.environ and not distributed():
        import torch.distributed as dist

        dist.init_process_group("gloo", timeout=timedelta(hours=24))
        joined = True
    try:
        shard, device = sharding(None, args.device)
        common = dict(n=args.n_images, seed=args.seed, device=device, cache_dir=args.cache_dir, shard=shard)
        if args.loop == "generation":
            from prunelab.study.generation import run_generation

            df = run_generation(
                args.model, args.image_set, args.methods, args.budgets, task=args.task,
                max_new_tokens=args.max_new_tokens, **common,
            )  # fmt: skip
        else:
            from prunelab.study.runner import methods_for, run_vision

            # the DINOv2 tower has no projector: methods defaulting to the projected space run on the vision one
            df = run_vision(args.image_set, methods_for(args.methods, projected=False), args.budgets, **common)
        if shard.rank == 0:
            from prunelab.study.runner import save_table

            path = save_table(df, args.out.parent, args.out.stem)
            print(f"{len(df)} rows from {shard.world} rank(s) -> {path}")
    finally:
        if joined:
            import torch.distributed as dist

            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""``python -m prunelab.lmms calibrate ...`` and ``python -m prunelab.lmms eval <lmms-eval arguments>``.

``calibrate --pretrained M --method agilepruner DATA_DIR -o stats.json``: the erank statistics over every image of
the task files in ``DATA_DIR`` (:mod:`prunelab.lmms.stats`), once, before launch.

``eval ...``: lmms-eval's evaluation CLI with the same arguments (``--output_path`` required), run in this process
(so it works under ``torchrun --nproc_per_node N -m prunelab.lmms eval ...``). lmms-eval catches an error in the
run, prints it and exits 0 unless ``--verbosity DEBUG``; this wrapper exits 1 when the run wrote no results file
(rank 0) or raised (``--verbosity DEBUG``), so a failed run fails its caller.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from prunelab.errors import PrunelabError

__all__ = ["main", "results_files"]


def results_files(output_path: str | Path, since: float) -> list[Path]:
    """The lmms-eval results files (``*_results.json``) under ``output_path`` written at or after ``since``."""
    root = Path(output_path)
    return sorted(p for p in root.rglob("*_results.json") if p.stat().st_mtime >= since) if root.exists() else []


def _calibrate(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m prunelab.lmms calibrate", description="erank statistics, once")
    ap.add_argument("data_dir", help="a folder built by python -m prunelab.lmms.tasks build")
    ap.add_argument("--pretrained", default="toyllava")
    ap.add_argument("--method", default="agilepruner")
    ap.add_argument("--method-params", default=None, help="a JSON object of method parameters")
    ap.add_argument("--device", default="auto")
    ap.add_argument("-o", "--out", required=True)
    args = ap.parse_args(argv)
    import json

    import torch

    from prunelab.lmms import stats as S
    from prunelab.models.loader import load_generation_model

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    try:
        pruner = S.make_pruner(args.method, json.loads(args.method_params) if args.method_params else None)
        if pruner is None:
            raise PrunelabError("the unpruned model reads no erank statistics; pass --method agilepruner")
        gm = load_generation_model(args.pretrained, device=args.device)
        stats = S.calibrate(gm, pruner, S.image_paths(args.data_dir))
        S.save_stats(args.out, stats)
    except (PrunelabError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    st = stats["stats"]
    print(f"{args.out}: erank mean {st['mean']:.3f} (min {st['min']:.3f}, max {st['max']:.3f}) over {st['n']} images")
    return 0


def _eval(argv: list[str]) -> int:
    out = None
    for k, a in enumerate(argv):
        if a.startswith("--output_path="):
            out = a.split("=", 1)[1]
        elif a == "--output_path" and k + 1 < len(argv):
            out = argv[k + 1]
    if not out:
        print(
            "error: pass --output_path DIR (the wrapper checks that the run wrote its results there)", file=sys.stderr
        )
        return 2
    try:
        from lmms_eval.__main__ import cli_evaluate
    except ImportError as err:
        print(f"error: lmms-eval is not installed ({err}); run make lmms", file=sys.stderr)
        return 2
    start = time.time() - 1  # file times are whole seconds on some file systems
    sys.argv = ["lmms-eval", *argv]
    try:
        cli_evaluate()
    except Exception as err:  # --verbosity DEBUG: lmms-eval re-raises
        print(f"error: the lmms-eval run failed: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    if int(os.environ.get("RANK", 0)) == 0 and not results_files(out, start):
        print(
            f"error: the lmms-eval run wrote no results under {out}; it failed (see the traceback above)",
            file=sys.stderr,
        )
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("calibrate", "eval"):
        print(__doc__.strip(), file=sys.stderr)
        return 2
    return _calibrate(argv[1:]) if argv[0] == "calibrate" else _eval(argv[1:])


if __name__ == "__main__":
    sys.exit(main())

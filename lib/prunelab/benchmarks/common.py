"""What the timing benchmarks share: their common flags, the check of counted flags, the thread setting."""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import math
import statistics

from prunelab.errors import BudgetError, UnknownNameError
from prunelab.paths import atomic_write
from prunelab.study.photos import list_photos


def add_timing_args(ap: argparse.ArgumentParser, *, images: int, repeats: int, what: str = "table") -> None:
    """``--images``, ``--repeats``, ``--threads`` and ``--csv`` with the benchmark's own defaults."""
    ap.add_argument("--images", type=int, default=images, help=f"photos to time on (default {images})")
    ap.add_argument(
        "--repeats", type=int, default=repeats, help=f"interleaved timing rounds per image (default {repeats})"
    )
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads on CPU (default 1)")
    ap.add_argument("--csv", default=None, help=f"also write the {what} to this CSV file")


def check_positive(args: argparse.Namespace, *flags: str) -> None:
    """One line naming the first counted flag below 1."""
    for flag in flags:
        if getattr(args, flag) < 1:
            raise BudgetError(
                f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}; pass a positive integer"
            )


@contextlib.contextmanager
def torch_threads(n: int, *, apply: bool = True):
    """Run with ``n`` torch intra-op threads (when ``apply``), then give in-process callers (tests) theirs back."""
    import torch

    before = torch.get_num_threads()
    if apply:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def pick_photos(n: int, source: str | None = None) -> list[str]:
    """``n`` photo names spread evenly over the manifest (deterministic); ``source`` restricts them to one
    package (``--smoke`` uses ``scikit-image``, installed with the package, so smoke runs fetch nothing)."""
    names = list_photos(source=source)
    if not 1 <= n <= len(names):
        raise UnknownNameError(f"--images {n} is out of range; pass 1..{len(names)} (photos in the manifest)")
    return [names[(i * len(names)) // n] for i in range(n)]


def median(xs) -> float:
    """Median of the measured values (``None`` and NaN skipped: a method without that stage), NaN for none."""
    xs = [x for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    return statistics.median(xs) if xs else math.nan


def write_csv(rows: list[dict], columns: list[str], path) -> None:
    """The benchmark's table as CSV (its ``columns``, in order), written atomically; prints where it went."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: r.get(k, "") for k in columns})
    with atomic_write(path, "w") as fh:
        fh.write(buf.getvalue())
    print(f"\nwrote {path}")

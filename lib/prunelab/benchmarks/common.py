"""What the timing benchmarks share: their common flags, the check of counted flags, the thread setting."""
from __future__ import annotations

import argparse
import contextlib

from prunelab.errors import BudgetError


def add_timing_args(ap: argparse.ArgumentParser, *, images: int, repeats: int, what: str = "table") -> None:
    """``--images``, ``--repeats``, ``--threads`` and ``--csv`` with the benchmark's own defaults."""
    ap.add_argument("--images", type=int, default=images, help=f"photos to time on (default {images})")
    ap.add_argument("--repeats", type=int, default=repeats,
                    help=f"interleaved timing rounds per image (default {repeats})")
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

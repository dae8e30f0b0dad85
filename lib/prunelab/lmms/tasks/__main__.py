"""``python -m prunelab.lmms.tasks build OUT [--n 10] [--split test] [--setting adversarial]``."""

from __future__ import annotations

import argparse
import sys

from prunelab.errors import PrunelabError
from prunelab.lmms.tasks import build


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m prunelab.lmms.tasks", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="write toy-world POPE / CHAIR task files and YAMLs into OUT")
    b.add_argument("out")
    b.add_argument("--n", type=int, default=10, help="scenes (POPE asks 6 questions per scene)")
    b.add_argument("--split", default="test")
    b.add_argument("--setting", default="adversarial", help="POPE negative sampling: random, popular, adversarial")
    b.add_argument("--start", type=int, default=0, help="first scene index")
    args = ap.parse_args(argv)
    try:
        counts = build(args.out, n=args.n, split=args.split, setting=args.setting, start=args.start)
    except PrunelabError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{args.out}: {counts['pope']} POPE questions, {counts['chair']} CHAIR images")
    return 0


if __name__ == "__main__":
    sys.exit(main())

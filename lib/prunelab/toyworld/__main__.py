"""Command line for the toy world: ``python -m prunelab.toyworld {manifest,verify,export,sheet}``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from prunelab.errors import PrunelabError
from prunelab.toyworld import splits, text
from prunelab.toyworld.scenes import COMPLEXITIES, make_scene, render


def _sheet(path: Path, per_row: int = 6) -> None:
    from PIL import Image

    sheet = Image.new("RGB", (per_row * 340, len(COMPLEXITIES) * 340), "white")
    for r, level in enumerate(COMPLEXITIES):
        for k in range(per_row):
            sheet.paste(render(make_scene("sheet", k, 0, level)), (k * 340, r * 340))
    sheet.save(path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m prunelab.toyworld", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("manifest", help="rewrite data/toyworld/test_ids.csv and test_checksum.txt")
    v = sub.add_parser("verify", help="check the test split against the committed checksums")
    v.add_argument("--records-only", action="store_true", help="skip rendering (compare scene records only)")
    e = sub.add_parser("export", help="write scene records + descriptions + POPE questions as JSON lines")
    e.add_argument("split", choices=list(splits.SPLIT_SIZES))
    e.add_argument("out", type=Path)
    e.add_argument("--descriptions", type=int, default=1, help="paraphrases per scene")
    e.add_argument("--limit", type=int, default=None)
    s = sub.add_parser("sheet", help="draw a contact sheet of simple / medium / complex scenes")
    s.add_argument("out", type=Path)
    s.add_argument("--emoji", action="store_true", help="draw every emoji of the category table instead")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "manifest":
            print(splits.write_test_manifest())
        elif args.cmd == "verify":
            res = splits.verify_test_split(images=not args.records_only)
            print(json.dumps({k: res[k] for k in ("records_ok", "images_ok")}))
        elif args.cmd == "export":
            from tqdm.auto import tqdm

            from prunelab.paths import atomic_write

            n = (
                splits.SPLIT_SIZES[args.split]
                if args.limit is None
                else min(args.limit, splits.SPLIT_SIZES[args.split])
            )
            with atomic_write(args.out, "w") as fh:
                for scene in tqdm(splits.load_split(args.split, limit=n), total=n, desc=f"export {args.split}"):
                    fh.write(json.dumps(text.text_record(scene, args.descriptions)) + "\n")
        elif args.cmd == "sheet":
            if args.emoji:
                from prunelab.toyworld.scenes import contact_sheet

                contact_sheet(args.out)
            else:
                _sheet(args.out)
    except PrunelabError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Look after the result caches: ``python -m prunelab.study.cache {du,prune,clear} [--root DIR]``.

The runners cache what they compute under the prunelab cache folder (``PRUNELAB_CACHE`` or
``~/.cache/prunelab``, :func:`prunelab.paths.cache_dir`), one sub-folder per kind (:data:`KINDS`). Entries of
``runs`` and ``generation`` live under a folder named for the cache format and the hash of the code that
computes them (:func:`prunelab.study.tablecache.version_dir`), so every library edit leaves the old folder unread;
``vision-features`` entries record their format in the safetensors header. The commands:

* ``du``: files and bytes per kind, and how much of it ``prune`` would drop; the offline assets next to them
  (the converted DINOv2 tower, WordNet, Debian packages, wheels) are listed, never touched;
* ``prune``: drop every entry no current code reads (other code hashes, older formats, the pre-2 layouts) and
  temporary ``.part`` files older than an hour (a crashed write; a running one is younger); ``--dry-run`` lists;
* ``clear --yes``: delete the result caches of every kind (or ``--kind`` ones); without ``--yes`` it only says
  what it would delete. Everything is recomputed on the next run.

``analysis`` entries (erank-greedy selections) carry no code hash: ``prune`` keeps them, ``clear`` removes them.
Pruning while a notebook kernel with an older library is still running costs that kernel its cache hits, nothing
else (its writes re-create its folder).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import struct
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from prunelab.errors import UnknownNameError
from prunelab.paths import cache_dir

#: The kinds this tool manages: sub-folder of the cache -> what writes it.
KINDS = {
    "runs": "run_vision rows and image statistics (prunelab.study.runner)",
    "generation": "run_generation entries and image statistics (prunelab.study.generation)",
    "vision-features": "vision tower outputs per image (prunelab.models.vision)",
    "analysis": "erank-greedy selections (prunelab.study.analysis)",
}
STALE_PART_S = 3600  # a .part file this old is a crashed write, not a running one


@dataclass
class Usage:
    files: int = 0
    bytes: int = 0
    stale: list[Path] = field(default_factory=list)
    stale_files: int = 0
    stale_bytes: int = 0


def _size(path: Path) -> tuple[int, int]:
    """(files, bytes) under ``path`` (a file or a folder; symbolic links are not followed)."""
    if path.is_symlink() or path.is_file():
        return 1, path.lstat().st_size
    files = size = 0
    for dirpath, _, names in os.walk(path):
        for n in names:
            with contextlib.suppress(OSError):
                size += os.lstat(os.path.join(dirpath, n)).st_size
                files += 1
    return files, size


def current_versions() -> dict[str, str]:
    """The folder name (format x code hash) the current library reads, per versioned kind."""
    from prunelab.study import generation, runner
    from prunelab.study.tablecache import code_hash, version_dir

    return {
        "runs": version_dir(runner.CACHE_FORMAT, code_hash(runner._CODE_FILES)),
        "generation": version_dir(generation.CACHE_FORMAT, code_hash(generation._CODE_FILES)),
    }


def _features_format(path: Path) -> str | None:
    """The ``format`` recorded in a safetensors file's header metadata (``None``: unreadable)."""
    try:
        with open(path, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            if n > 1 << 24:
                return None
            return json.loads(fh.read(n)).get("__metadata__", {}).get("format")
    except (OSError, ValueError, struct.error, AttributeError):
        return None


def _old_part(path: Path, now: float) -> bool:
    with contextlib.suppress(OSError):
        return path.name.endswith(".part") and now - path.lstat().st_mtime > STALE_PART_S
    return False


def scan(root: Path, kind: str, versions: dict[str, str] | None = None) -> Usage:
    """What ``kind`` holds under ``root`` and which of it no current code reads."""
    base = root / kind
    u = Usage()
    if not base.exists():
        return u
    u.files, u.bytes = _size(base)
    now = time.time()
    if kind in ("runs", "generation"):
        current = (versions or current_versions())[kind]
        for child in sorted(base.iterdir()):
            if child.name != current:
                u.stale.append(child)
        cur = base / current
        if cur.is_dir():
            u.stale += sorted(p for p in cur.rglob("*.part") if _old_part(p, now))
    elif kind == "vision-features":
        from prunelab.models.vision import CACHE_FORMAT

        for p in sorted(base.rglob("*")):
            if p.is_file() and (
                _old_part(p, now) or (p.suffix == ".safetensors" and _features_format(p) != str(CACHE_FORMAT))
            ):
                u.stale.append(p)
    else:
        u.stale += sorted(p for p in base.rglob("*.part") if _old_part(p, now))
    for p in u.stale:
        f, b = _size(p)
        u.stale_files += f
        u.stale_bytes += b
    return u


def _remove(path: Path) -> None:
    if path.is_symlink() or not path.is_dir():
        with contextlib.suppress(OSError):
            path.unlink()
    else:
        shutil.rmtree(path, ignore_errors=True)


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def du(root: Path, out=None) -> dict[str, Usage]:
    """Print files, bytes and what prune would drop, per kind; returns the :class:`Usage` per kind."""
    out = out or sys.stdout
    versions = current_versions()
    usage = {k: scan(root, k, versions) for k in KINDS}
    print(f"prunelab cache: {root}", file=out)
    print(f"  {'kind':16} {'files':>7} {'size':>10}  {'prune drops':>22}  what", file=out)
    for k, u in usage.items():
        drops = f"{human(u.stale_bytes)} ({u.stale_files} files)" if u.stale_files else "-"
        print(f"  {k:16} {u.files:7d} {human(u.bytes):>10}  {drops:>22}  {KINDS[k]}", file=out)
    total = sum(u.bytes for u in usage.values())
    print(
        f"  {'results total':16} {sum(u.files for u in usage.values()):7d} {human(total):>10}  "
        f"{human(sum(u.stale_bytes for u in usage.values())):>22}",
        file=out,
    )
    feats = usage["vision-features"]
    if feats.files:
        print(f"  vision-features : {human(feats.bytes / feats.files)} per image on average", file=out)
    assets = sorted(p for p in root.iterdir() if p.name not in KINDS) if root.is_dir() else []
    if assets:
        sizes = ", ".join(
            f"{p.name} -> {os.readlink(p)}" if p.is_symlink() else f"{p.name} {human(_size(p)[1])}" for p in assets
        )
        print(
            f"  not managed here (offline assets and models; make assets / make toy-model rebuild them): {sizes}",
            file=out,
        )
    return usage


def prune(root: Path, dry_run: bool = False, out=None) -> int:
    """Remove what no current code reads; returns the bytes freed (or that would be, with ``dry_run``)."""
    out = out or sys.stdout
    versions = current_versions()
    freed = 0
    for k in KINDS:
        u = scan(root, k, versions)
        for p in u.stale:
            f, b = _size(p)
            print(
                f"  {'would remove' if dry_run else 'removed'} {p.relative_to(root)} ({f} files, {human(b)})", file=out
            )
            if not dry_run:
                _remove(p)
        freed += u.stale_bytes
    verb = "would free" if dry_run else "freed"
    print(
        f"prune: {verb} {human(freed)} in {root} (current code: runs/{versions['runs']}, "
        f"generation/{versions['generation']})",
        file=out,
    )
    return freed


def clear(root: Path, kinds: list[str], yes: bool, out=None) -> int:
    """Delete the given kinds; without ``yes`` only report. Returns the process exit status."""
    out = out or sys.stdout
    targets = [(k, root / k) for k in kinds if (root / k).exists()]
    total = sum(_size(p)[1] for _, p in targets)
    if not targets:
        print(f"clear: nothing cached under {root} for {', '.join(kinds)}", file=out)
        return 0
    if not yes:
        print(
            f"clear: would delete {', '.join(k for k, _ in targets)} under {root} ({human(total)}; everything is "
            "recomputed on the next run); pass --yes to delete it",
            file=out,
        )
        return 1
    for _, p in targets:
        _remove(p)
    print(f"clear: deleted {', '.join(k for k, _ in targets)} under {root} ({human(total)})", file=out)
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m prunelab.study.cache", description=__doc__.splitlines()[0])
    ap.add_argument("--root", default=None, help="the cache folder (default: PRUNELAB_CACHE or ~/.cache/prunelab)")
    sub = ap.add_subparsers(dest="command", required=True)
    sub.add_parser("du", help="sizes per kind, and what prune would drop")
    p = sub.add_parser("prune", help="drop entries no current code reads")
    p.add_argument("--dry-run", action="store_true", help="list, remove nothing")
    c = sub.add_parser("clear", help="delete the result caches (needs --yes)")
    c.add_argument("--kind", action="append", default=None, help=f"one of {', '.join(KINDS)} (repeatable; default all)")
    c.add_argument("--yes", action="store_true", help="really delete")
    args = ap.parse_args(argv)
    root = Path(args.root) if args.root else cache_dir(create=False)
    if args.root and not root.is_dir():
        raise UnknownNameError(f"--root {root} is not a folder; pass the prunelab cache folder (~/.cache/prunelab)")
    if args.command == "du":
        du(root)
        return 0
    if args.command == "prune":
        prune(root, dry_run=args.dry_run)
        return 0
    kinds = args.kind or list(KINDS)
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise UnknownNameError(f"--kind {', '.join(unknown)} is unknown; use {', '.join(KINDS)}")
    return clear(root, kinds, args.yes)


if __name__ == "__main__":
    from prunelab.errors import PrunelabError

    try:
        raise SystemExit(main())
    except PrunelabError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None

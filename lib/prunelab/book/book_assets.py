"""Serve the book's JavaScript locally: ``python -m prunelab.book.book_assets vendor | check``.

Jupyter Book 1 pages load MathJax 3, require.js and the ipywidgets HTML manager from CDNs by default; offline,
maths shows as raw TeX and widgets as empty boxes (book-toolchain.md). The three packages are pinned in
``book/package.json`` / ``book/package-lock.json`` and installed with ``npm ci``; this module copies the files
the pages need from ``book/node_modules`` into ``book/vendor/`` (git-ignored), which ``_config.yml`` lists in
``html_static_path`` and names in ``mathjax_path`` and ``nb_ipywidgets_js``.

The folder is deliberately *not* called ``_static``: JB1 would add every ``.js``/``.css`` found under a
``_static/`` folder to every page (dozens of MathJax script tags).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from prunelab.errors import AssetError
from prunelab.paths import REPO_ROOT, atomic_dir

BOOK_DIR = REPO_ROOT / "book"

# (package, path inside the package, destination inside book/vendor, skip patterns for directories).
VENDORED = (
    ("requirejs", "require.js", "require.js", ()),
    # embed-amd.js (the AMD bundle with the built-in widget models) finds its icon fonts next to itself
    # (webpack's automatic public path); the non-AMD and library bundles are not loaded by the pages.
    ("@jupyter-widgets/html-manager", "dist", "html-manager", ("embed.js", "libembed-amd.js")),
    # The whole ES5 tree: the combined component loads its fonts, TeX extensions (autoload) and the menu's
    # accessibility parts from paths relative to itself.
    ("mathjax", "es5", "mathjax", ()),
)
# Files the pages never load.
_SKIP_ALWAYS = ("*.map", "*.LICENSE.txt", "*.d.ts")

# What _config.yml points at (relative to the static root); `check` verifies each exists.
REQUIRE_JS = "require.js"
WIDGETS_JS = "html-manager/embed-amd.js"
MATHJAX_JS = "mathjax/tex-mml-chtml.js"
ENTRY_POINTS = (REQUIRE_JS, WIDGETS_JS, MATHJAX_JS)


def _pinned_versions(book_dir: Path) -> dict[str, str]:
    pkg = book_dir / "package.json"
    if not pkg.exists():
        raise AssetError(f"{pkg} is missing; restore it from git (it pins the book's JavaScript)")
    return dict(json.loads(pkg.read_text())["dependencies"])


def _installed_version(node_modules: Path, package: str) -> str | None:
    meta = node_modules / package / "package.json"
    if not meta.exists():
        return None
    return json.loads(meta.read_text()).get("version")


def vendor(book_dir: Path = BOOK_DIR) -> Path:
    """Copy the pinned JavaScript from ``book_dir/node_modules`` into ``book_dir/vendor`` (atomically).

    Raises :class:`AssetError` if a package is missing or its installed version differs from the pin.
    Returns the vendor directory.
    """
    node_modules = book_dir / "node_modules"
    pins = _pinned_versions(book_dir)
    for package, want in pins.items():
        have = _installed_version(node_modules, package)
        if have is None:
            raise AssetError(f"npm package {package} is not installed; run `cd {book_dir} && npm ci` first")
        if have != want:
            raise AssetError(
                f"npm package {package} is {have} but package.json pins {want}; run `cd {book_dir} && npm ci`"
            )
    with atomic_dir(book_dir / "vendor") as tmp:
        for package, inner, dest, skip in VENDORED:
            src = node_modules / package / inner
            if not src.exists():
                raise AssetError(f"{src} is missing from the npm package {package}; run `cd {book_dir} && npm ci`")
            target = tmp / dest
            if src.is_dir():
                shutil.copytree(src, target, ignore=shutil.ignore_patterns(*_SKIP_ALWAYS, *skip))
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, target)
        (tmp / "VERSIONS.json").write_text(json.dumps(pins, indent=1, sort_keys=True) + "\n")
    return book_dir / "vendor"


def check(book_dir: Path = BOOK_DIR) -> list[str]:
    """Entry-point files the book configuration names that are missing from ``book_dir/vendor`` (empty = ok)."""
    vendor_dir = book_dir / "vendor"
    return [p for p in ENTRY_POINTS if not (vendor_dir / p).is_file()]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m prunelab.book.book_assets", description=__doc__.splitlines()[0])
    ap.add_argument("command", choices=("vendor", "check"))
    ap.add_argument("--book-dir", type=Path, default=BOOK_DIR)
    args = ap.parse_args(argv)
    try:
        if args.command == "vendor":
            out = vendor(args.book_dir)
            size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
            print(f"[book_assets] vendored {', '.join(v[0] for v in VENDORED)} into {out} ({size / 2**20:.1f} MiB)")
            return 0
        missing = check(args.book_dir)
        if missing:
            print(
                f"[book_assets] missing in {args.book_dir / 'vendor'}: {', '.join(missing)}; "
                "run `make js` (npm ci + python -m prunelab.book.book_assets vendor)",
                file=sys.stderr,
            )
            return 1
        print("[book_assets] ok")
        return 0
    except AssetError as err:
        print(f"[book_assets] {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())

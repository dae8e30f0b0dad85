"""Where things live: the committed ``data/`` folder, the rebuildable cache, and atomic file writes.

* ``data_dir()``: the repository's ``data/`` (small committed files); override with ``PRUNELAB_DATA``.
* ``cache_dir()``: rebuildable assets (converted DINOv2 weights, unpacked Debian packages, feature caches);
  ``PRUNELAB_CACHE`` or ``~/.cache/prunelab``. Never committed.
* ``atomic_write``: write to a temporary sibling then ``os.replace`` it, so a crash never leaves a
  half-written file under the final name.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def data_dir() -> Path:
    return Path(os.environ.get("PRUNELAB_DATA", REPO_ROOT / "data"))


def cache_dir(*parts: str, create: bool = True) -> Path:
    base = Path(os.environ.get("PRUNELAB_CACHE", Path.home() / ".cache" / "prunelab"))
    p = base.joinpath(*parts)
    if create:
        p.mkdir(parents=True, exist_ok=True)
    return p


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb"):
    """Open a temporary file next to ``path``; on success rename it onto ``path``, on error delete it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as fh:
            yield fh
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike):
    """Build a directory under a temporary name; rename it onto ``path`` only when the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

"""Where things live: the committed ``data/`` folder, the rebuildable cache, and atomic file writes.

* ``data_dir()``: the repository's ``data/`` (small committed files); override with ``PRUNELAB_DATA``.
* ``cache_dir()``: rebuildable assets (converted DINOv2 weights, unpacked Debian packages, feature caches);
  ``PRUNELAB_CACHE`` or ``~/.cache/prunelab``. Never committed.
* ``atomic_write``: write to a temporary sibling then ``os.replace`` it, so a crash never leaves a
  half-written file under the final name. The file gets the mode a plain ``open`` would give it
  (``0o666 & ~umask``), not ``mkstemp``'s private 0600, so results on a shared machine stay readable.
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


def current_umask() -> int:
    """The process umask, read without changing it where Linux shows it (``/proc/self/status``, kernel >= 4.7);
    elsewhere set and restored at once (``os.umask`` has no read-only form)."""
    with contextlib.suppress(OSError, ValueError), open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb"):
    """Open a temporary file next to ``path``; on success rename it onto ``path``, on error delete it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp's 0600 would survive the rename
        with os.fdopen(fd, mode) as fh:
            yield fh
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike):
    """Build a directory under a temporary name; rename it onto ``path`` only when the block succeeds (mode
    ``0o777 & ~umask``, as ``mkdir`` gives, not ``mkdtemp``'s 0700)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent))
    try:
        os.chmod(tmp, 0o777 & ~current_umask())
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

"""Fetch files from Debian packages without installing them system-wide.

Offline assets (WordNet for CHAIR, the Noto colour emoji font for the toy world, OpenCV's sample photos) come
from Debian's registry, the only one besides PyPI and npm that the build machines reach. ``apt-get download``
fetches the ``.deb`` as any user; ``dpkg -x`` unpacks it into a private folder under the cache, so nothing
in ``/usr`` changes and no root is needed once the package lists exist.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from prunelab.errors import AssetError
from prunelab.paths import atomic_dir, cache_dir


def fetch_deb(package: str, *, dest: Path | None = None) -> Path:
    """Unpack Debian ``package`` into ``dest`` (default ``cache/debian/<package>``) once; return ``dest``.

    Idempotent: an existing complete unpack (marked by ``.complete``) is reused. Raises :class:`AssetError` with
    the manual fix when ``apt-get``/``dpkg`` are missing or the download fails.
    """
    dest = Path(dest) if dest is not None else cache_dir("debian", create=True) / package
    if (dest / ".complete").exists():
        return dest
    if shutil.which("apt-get") is None or shutil.which("dpkg") is None:
        raise AssetError(
            f"cannot fetch Debian package {package!r}: apt-get/dpkg not found; install it yourself "
            f"(e.g. `apt-get install {package}`) or copy its files into {dest}"
        )
    with atomic_dir(dest) as tmp:
        dl = tmp / ".download"
        dl.mkdir()
        cmd = ["apt-get", "download", package]
        res = subprocess.run(cmd, cwd=dl, capture_output=True, text=True)
        if res.returncode != 0:
            # Package lists may be missing on a fresh machine; refresh once (needs root), then retry.
            subprocess.run(["apt-get", "update", "-qq"], capture_output=True, text=True)
            res = subprocess.run(cmd, cwd=dl, capture_output=True, text=True)
        debs = sorted(dl.glob("*.deb"))
        if res.returncode != 0 or not debs:
            msg = (res.stderr or res.stdout).strip().splitlines()
            raise AssetError(
                f"`apt-get download {package}` failed ({msg[-1] if msg else 'no output'}); run `apt-get update` as root "
                f"or install {package} with apt-get, then retry"
            )
        for deb in debs:
            x = subprocess.run(["dpkg", "-x", str(deb), str(tmp)], capture_output=True, text=True)
            if x.returncode != 0:
                raise AssetError(f"`dpkg -x {deb.name}` failed: {x.stderr.strip()[:200]}; delete {dest} and retry")
        shutil.rmtree(dl)
        (tmp / ".complete").write_text(package + "\n")
    return dest

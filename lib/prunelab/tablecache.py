"""Shared pieces of the runners' on-disk result caches (:mod:`prunelab.runner`, :mod:`prunelab.generation`).

Cached rows are small CSV files keyed by a SHA-256 of everything that determines them, including the source of
the code that computes them (:func:`code_hash`), so a changed method or metric never reuses stale rows.
"""
from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Iterable

import pandas as pd

from prunelab.paths import REPO_ROOT, atomic_write


def code_hash(patterns: Iterable[str], base: Path | None = None) -> str:
    """SHA-256 (16 hex digits) over the files of ``lib/prunelab`` matching ``patterns`` (names and bytes)."""
    h = hashlib.sha256()
    base = base or REPO_ROOT / "lib" / "prunelab"
    for pattern in patterns:
        for f in sorted(base.glob(pattern)):
            h.update(f.relative_to(base).as_posix().encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


def key(obj) -> str:
    """SHA-256 (24 hex digits) of a JSON-serialisable description of what determines a cache entry."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:24]


def write_csv(df: pd.DataFrame, path: Path, list_columns: Iterable[str] = ("kept_indices",)) -> None:
    """Write ``df`` atomically as CSV, list-valued ``list_columns`` as JSON strings."""
    out = df.copy()
    for c in list_columns:
        if c in out:
            out[c] = out[c].map(json.dumps)
    buf = io.StringIO()
    out.to_csv(buf, index=False)
    with atomic_write(path, "w") as fh:
        fh.write(buf.getvalue())


__all__ = ["code_hash", "key", "write_csv"]

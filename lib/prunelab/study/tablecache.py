"""Shared pieces of the runners' on-disk result caches (:mod:`prunelab.study.runner`, :mod:`prunelab.study.generation`).

Entries are keyed by a SHA-256 of everything that determines them and live under a folder named for the cache
format and the hash of the code that computes them (:func:`version_dir`, e.g. ``v2-1a2b...``), so a changed
method or metric never reuses stale rows, and ``python -m prunelab.study.cache prune`` can drop every folder no
current code reads without opening a file.

One entry is one file: a JSON header line, then a UTF-8 JSON payload::

    {"magic": "prunelab-cache", "version": 1, "bytes": 812, "sha256": "...", "rows": 18, "columns": [...], ...}
    {"constant": {"kept_indices": [3, 17, ...], ...}, "varying": {"question": ["Is there ...", ...], ...}}

The header holds the payload's size and SHA-256, and for tables the row count, the column names and dtypes. A
reader that finds anything else — a file cut anywhere (also at a row boundary), a dropped or added column, a
changed byte, invalid UTF-8, an older format — treats the entry as missing, and the caller recomputes and
overwrites it. Table columns whose value is the same on every row (the image's numbers, POPE's shared
selection: ``kept_indices`` once per image x method x budget, not once per question) are stored once. JSON keeps
floats exact (``repr`` round trip) and strings as they were, so a table read back equals the one written.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from prunelab.paths import REPO_ROOT, atomic_write

MAGIC = "prunelab-cache"
ENTRY_VERSION = 1
#: dtypes restored exactly on read (everything else stays as pandas infers it from the values, as when written).
_CAST = {"int64", "int32", "float64", "float32", "bool", "str", "object"}


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


def version_dir(cache_format: int, code: str) -> str:
    """The folder name of one cache format x code hash: every entry the current code reads lives below it."""
    return f"v{int(cache_format)}-{code}"


# --------------------------------------------------------------------------------------------------------------
# Entries


def _plain(v: Any):
    """JSON for the values a result row may hold besides Python scalars (numpy / torch scalars and arrays)."""
    if hasattr(v, "item") and getattr(v, "ndim", None) == 0:
        return v.item()
    if hasattr(v, "tolist"):
        return v.tolist()
    if isinstance(v, (tuple, set, frozenset)):
        return list(v)
    raise TypeError(f"cannot store a {type(v).__name__} in a cache entry")


def _dumps(v) -> str:
    # ASCII escapes: any Python string round-trips, lone surrogates from a decoder included (UTF-8 cannot hold them)
    return json.dumps(v, default=_plain, ensure_ascii=True, separators=(",", ":"))


def _write(path: Path, payload: str, header: dict) -> None:
    body = payload.encode("utf-8")
    head = {
        "magic": MAGIC,
        "version": ENTRY_VERSION,
        "bytes": len(body),
        "sha256": hashlib.sha256(body).hexdigest(),
        **header,
    }
    with atomic_write(path, "wb") as fh:
        fh.write(json.dumps(head, sort_keys=True).encode() + b"\n" + body)


def _read(path: Path) -> tuple[dict, Any] | None:
    """``(header, payload)`` of an intact entry, else ``None`` (missing, cut, altered, older format)."""
    try:
        data = Path(path).read_bytes()
    except OSError:
        return None
    head_bytes, sep, body = data.partition(b"\n")
    try:
        head = json.loads(head_bytes)
        if (
            not sep
            or not isinstance(head, dict)
            or head.get("magic") != MAGIC
            or head.get("version") != ENTRY_VERSION
            or head.get("bytes") != len(body)
            or head.get("sha256") != hashlib.sha256(body).hexdigest()
        ):
            return None
        return head, json.loads(body.decode("utf-8"))
    except (ValueError, TypeError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return None


def write_entry(path: str | Path, obj) -> None:
    """Store a JSON-serialisable ``obj`` (e.g. one image's statistics) as a checked entry, atomically."""
    _write(Path(path), _dumps(obj), {"kind": "object"})


def read_entry(path: str | Path):
    """The object :func:`write_entry` stored at ``path``, or ``None`` when the entry is missing or not intact."""
    got = _read(Path(path))
    if got is None or got[0].get("kind") != "object":
        return None
    return got[1]


def write_table(df: pd.DataFrame, path: str | Path) -> None:
    """Store ``df`` (a RangeIndex, unique column names) as a checked entry, atomically; a column with one value
    on every row is stored once."""
    n = len(df)
    constant, varying = [], []
    for c in df.columns:
        vals = [_dumps(v) for v in df[c].tolist()]
        if n and all(v == vals[0] for v in vals):
            constant.append(f"{_dumps(str(c))}:{vals[0]}")
        else:
            varying.append(f"{_dumps(str(c))}:[{','.join(vals)}]")
    payload = '{"constant":{' + ",".join(constant) + '},"varying":{' + ",".join(varying) + "}}"
    header = {
        "kind": "table",
        "rows": n,
        "columns": [str(c) for c in df.columns],
        "dtypes": [str(t) for t in df.dtypes],
    }
    _write(Path(path), payload, header)


def read_table(path: str | Path, columns: Iterable[str] | None = None) -> pd.DataFrame | None:
    """The table :func:`write_table` stored at ``path`` (same values, columns and dtypes), or ``None`` when the
    entry is missing or not intact, or lacks any of ``columns``: then the caller recomputes it."""
    got = _read(Path(path))
    if got is None:
        return None
    head, payload = got
    try:
        n, cols, dtypes = int(head["rows"]), list(head["columns"]), list(head["dtypes"])
        constant, varying = payload["constant"], payload["varying"]
        if (
            head.get("kind") != "table"
            or len(set(cols)) != len(cols)
            or len(dtypes) != len(cols)
            or set(constant) & set(varying)
            or set(constant) | set(varying) != set(cols)
            or any(len(varying[c]) != n for c in varying)
            or (columns is not None and not set(columns) <= set(cols))
        ):
            return None
        data = {}
        for c in cols:
            if c in varying:
                data[c] = varying[c]
            else:
                v = constant[c]
                # lists and dicts: one object per row, as when the rows were built
                data[c] = [json.loads(_dumps(v)) for _ in range(n)] if isinstance(v, (list, dict)) else [v] * n
        df = pd.DataFrame(data, columns=cols, index=pd.RangeIndex(n))
        for c, want in zip(cols, dtypes):
            if want in _CAST and str(df[c].dtype) != want:
                df[c] = df[c].astype(want)
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError):
        return None
    return df


__all__ = ["code_hash", "key", "version_dir", "write_entry", "read_entry", "write_table", "read_table"]


def cached_per_item(
    items,
    path_of,
    compute,
    *,
    required: Iterable[str] = (),
    use_cache: bool = True,
    refresh: bool = False,
    batch_size: int = 1,
    desc: str = "image stats",
    disable=None,
) -> dict:
    """``{item.id: entry}`` for every item: read from its checked entry at ``path_of(item)`` when that holds a dict
    with the ``required`` keys, else computed by ``compute(batch) -> [entry per item]`` (``batch_size`` items at a
    time, in order) and written. The image-level pass of both study loops (``run_vision``, ``run_generation``)."""
    from tqdm.auto import tqdm

    need = list(required)
    out: dict = {}
    todo = []
    for it in items:
        st = read_entry(path_of(it)) if use_cache and not refresh else None
        if isinstance(st, dict) and all(k in st for k in need):
            out[it.id] = st
        else:
            todo.append(it)
    with tqdm(total=len(todo), desc=desc, unit="img", disable=disable or not todo) as bar:
        for i in range(0, len(todo), batch_size):
            batch = todo[i : i + batch_size]
            for it, st in zip(batch, compute(batch), strict=True):
                out[it.id] = st
                if use_cache:
                    write_entry(path_of(it), st)
            bar.update(len(batch))
    return out


class RunCache:
    """Where one study loop keeps its checked entries: ``<cache_dir or cache/<name>>/v<format>-<code hash>/``.

    ``cache_dir=False`` turns caching off (nothing read or written); ``refresh=True`` ignores what is there and
    overwrites it. ``code_files`` are the library files (glob patterns under ``lib/prunelab``) whose change must
    invalidate the entries."""

    def __init__(self, cache_dir, name: str, code_files: Iterable[str], cache_format: int, refresh: bool = False):
        from prunelab.paths import cache_dir as default_cache_dir

        self.enabled = cache_dir is not False
        self.refresh = bool(refresh)
        self.code = code_hash(code_files)
        root = Path(cache_dir) if cache_dir not in (None, False, True) else default_cache_dir(name)
        self.root = root / version_dir(cache_format, self.code)

    @property
    def reads(self) -> bool:
        return self.enabled and not self.refresh

    def read(self, path: Path, columns: Iterable[str]) -> pd.DataFrame | None:
        """The table at ``path`` (checked; ``None`` when missing, not intact, off or refreshing)."""
        return read_table(path, columns) if self.reads else None

    def write(self, df: pd.DataFrame, path: Path) -> None:
        if self.enabled:
            write_table(df, path)

    def per_item(self, items, path_of, compute, **kw) -> dict:
        """:func:`cached_per_item` with this cache's on/off and refresh settings."""
        return cached_per_item(items, path_of, compute, use_cache=self.enabled, refresh=self.refresh, **kw)

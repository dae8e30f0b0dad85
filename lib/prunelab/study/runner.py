"""The one experiment loop of the study: image set x methods x budgets -> a tidy table.

``run_vision(image_set, methods, budgets, ...)`` runs every pre-LLM pruning method at every budget on every
image and returns a pandas DataFrame with **one row per image x method x budget** (columns in
:data:`VISION_COLUMNS`):

* ``erank_kept_{vision,projected}``: effective rank (Roy & Vetterli; :func:`prunelab.eval.metrics.erank`, default
  options) of the kept tokens, pre-projector and as the LLM receives them (methods-spec §3.1; the same numbers
  :func:`prunelab.methods.base.prune` attaches);
* ``erank_full_*``: the same for all ``N`` tokens of the image; ``erank_random_*``: mean over ``n_random``
  seeded uniform random subsets of the same size as the kept set (the "what would chance keep" reference);
* ``attention_entropy`` (nats) and ``attention_entropy_norm`` (/ log N) of the image's [CLS] attention
  (§3.2), ``attention_mass_kept`` (share of [CLS] attention on directly kept patches);
* ``kept_indices`` (list, output order, ``-1`` = a token with no single source patch), ``n_kept``,
  ``select_time_s`` (wall time of the method's selection alone), ``method_stats`` (JSON of the method's own
  per-image numbers, e.g. AgilePruner's ``rho``).

Erank statistics. AgilePruner and the erank-guided hybrids need the dataset's input-erank statistics; unless
``erank_stats`` is given they are calibrated on the image set itself (mean/min/max/std of ``erank_full_vision``,
exactly :func:`prunelab.methods.adaptive.calibrate_erank` with its defaults) before any pruning, and stored in
``df.attrs["erank_stats"]``.

Caching and resuming. Per-image image statistics and per-image result rows are written atomically as small
checked entries (:mod:`prunelab.study.tablecache`: row count, columns and SHA-256 in a header; an entry that is not
intact is recomputed) under ``cache_dir`` (default ``<prunelab cache>/runs``), in a folder named for the cache
format and the hash of the code that computes the rows (``v2-<code hash>/``; ``python -m prunelab.study.cache prune``
drops the others) and keyed by a SHA-256 of everything that determines them: encoder fingerprint (tower
weights, preprocessing, projector), image set and id, method names and parameters, budgets, seed,
``n_random`` and erank statistics. Each image's rows are stored once (its image-level numbers once per entry).
An interrupted run resumes at the first image without results.

Generation fields (caption, CHAIR, POPE) are added later by the model adapter: a ``run_generation`` with the same
keys (``image_set, image_id, method, budget``) can be merged onto this table.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from prunelab.device import bars_off, cpu_threads
from prunelab.errors import CapabilityError, PrunelabError, UnknownNameError, check_budget
from prunelab.eval.metrics import attention_entropy, erank
from prunelab.methods import FAMILY_ORDER, available_methods
from prunelab.methods.adaptive import erank_summary
from prunelab.methods.base import Pruner, PruneResult, VisualContext, get_pruner
from prunelab.models.encoders import VisionEncoder
from prunelab.paths import atomic_write
from prunelab.study.params import check_budgets, check_n_images, check_seed
from prunelab.study.plots import method_order
from prunelab.study.shard import check_cache, gather, per_item, sharding, table_reader
from prunelab.study.tablecache import RunCache, key as _key

CACHE_FORMAT = 2  # bump when the meaning of a column or the entry layout changes (2: checked entries, no all-file)

#: The columns that say which method ran at which budget on how many tokens: every row of the vision table and of
#: :mod:`prunelab.study.generation`'s tables.
RUN_COLUMNS = ["method", "family", "budget", "seed", "n_tokens", "n_kept"]
VISION_COLUMNS = [
    "image_set",
    "image_id",
    "complexity",
    *RUN_COLUMNS,
    "erank_kept_vision",
    "erank_kept_projected",
    "erank_full_vision",
    "erank_full_projected",
    "erank_random_vision",
    "erank_random_projected",
    "attention_entropy",
    "attention_entropy_norm",
    "attention_mass_kept",
    "select_time_s",
    "kept_indices",
    "method_stats",
]
IMAGE_COLUMNS = ["erank_full_vision", "erank_full_projected", "attention_entropy", "attention_entropy_norm", "n_tokens"]

# Code whose change must invalidate cached rows.
_CODE_FILES = (
    "study/runner.py",
    "eval/metrics.py",
    "models/vision.py",
    "models/encoders.py",
    "models/adapter.py",
    "models/tower.py",
    "methods/*.py",
    "models/dinov2.py",
    "models/qwen*.py",
)


# --------------------------------------------------------------------------------------------------------------
# Methods


@dataclass
class MethodSpec:
    """A method as both study loops see it: a display ``label`` and a configured :class:`Pruner`, or ``None`` for
    the unpruned model (generation only: label ``"Vanilla"``, family ``"base"``)."""

    label: str
    pruner: Pruner | None

    @property
    def family(self) -> str:
        return "base" if self.pruner is None else self.pruner.family

    def key(self) -> dict[str, Any]:
        """What identifies the method in a cache key (label, name, parameters)."""
        if self.pruner is None:
            return {"label": self.label, "name": "full"}
        return {"label": self.label, "name": self.pruner.name, "params": _jsonable(self.pruner.params())}


def resolve_methods(methods) -> list[MethodSpec]:
    """Normalise ``methods`` into :class:`MethodSpec` (labels unique).

    Accepted items: a registered name (``"DivPrune"``), ``(name, params)`` or ``(label, name, params)`` tuples,
    ``{"name": .., "params": .., "label": ..}`` dicts, or :class:`Pruner` instances. A name with non-default
    parameters gets a label that shows them, unless a label is given.
    """
    if methods is None:
        raise UnknownNameError("methods is None; pass a list of method names, e.g. methods=['FasterVLM', 'DivPrune']")
    if isinstance(methods, (str, Pruner)) or isinstance(methods, dict):
        methods = [methods]
    specs: list[MethodSpec] = []
    for m in methods:
        label = None
        if isinstance(m, Pruner):
            pruner = m
        elif isinstance(m, str):
            pruner = get_pruner(m)
        elif isinstance(m, dict):
            label = m.get("label")
            pruner = get_pruner(m["name"], **dict(m.get("params") or {}))
        elif isinstance(m, (tuple, list)) and len(m) == 2:
            pruner = get_pruner(m[0], **dict(m[1] or {}))
        elif isinstance(m, (tuple, list)) and len(m) == 3:
            label, pruner = m[0], get_pruner(m[1], **dict(m[2] or {}))
        else:
            raise UnknownNameError(
                f"cannot read method {m!r}; pass a name, (name, params), (label, name, params) or a Pruner"
            )
        if label is None:
            default = type(pruner)().params() if _constructible(pruner) else {}
            changed = {k: v for k, v in pruner.params().items() if default.get(k, object()) != v}
            label = pruner.name + (f"({', '.join(f'{k}={v}' for k, v in sorted(changed.items()))})" if changed else "")
        specs.append(MethodSpec(str(label), pruner))
    return check_unique_labels(specs)


def check_unique_labels(specs: list) -> list:
    """``specs`` if no two share a ``label``; else one line naming the repeated labels."""
    labels = [s.label for s in specs]
    dup = sorted({x for x in labels if labels.count(x) > 1})
    if dup:
        raise UnknownNameError(
            f"method label(s) {', '.join(dup)} given twice; drop the duplicate or pass distinct labels"
        )
    return specs


def check_family(refusal, specs) -> None:
    """Refuse up front, in one line naming the method, a method the model family cannot run: ``refusal`` is the
    adapter's (or encoder's) ``refusal(pruner) -> str | None`` (Qwen2.5-VL has one; ``None``: every method runs)."""
    if refusal is None:
        return
    for s in specs:
        why = refusal(s.pruner) if s.pruner is not None else None
        if why:
            raise CapabilityError(f"{s.label} cannot run on this model: {why}")


def _constructible(pruner: Pruner) -> bool:
    try:
        type(pruner)()
        return True
    except Exception:  # a pruner with required arguments has no "default" to compare with
        return False


def _jsonable(obj):
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def vision_methods() -> list[str]:
    """Registered pre-LLM methods that need only the image (text-conditioned ones such as CDPruner need a
    question and run through the model adapter), ordered by family then name."""
    rank = {f: i for i, f in enumerate(FAMILY_ORDER)}
    names = [n for n in available_methods("pre_llm") if get_pruner(n).family != "text"]
    return sorted(names, key=lambda n: (rank.get(get_pruner(n).family, 99), n))


def methods_for(names: Sequence[str], projected: bool) -> list:
    """Method specs for ``names``; without a ``projected`` space, methods whose ``features`` default to
    ``"projected"`` (DivPrune, FPS, AttnDiv...) run on the vision features instead, and their label says so."""
    out = []
    for name in names:
        p = get_pruner(name)
        if not projected and getattr(p, "features", None) == "projected":
            out.append((name, {"features": "vision"}))
        else:
            out.append(name)
    return out


# --------------------------------------------------------------------------------------------------------------
# Per-image quantities


def image_stats(ctx: VisualContext) -> dict[str, float]:
    """Image-level numbers: full-set erank (vision, projected if available) and [CLS] attention entropy."""
    out = {
        "n_tokens": ctx.n_tokens,
        "erank_full_vision": float(erank(ctx.features)),
        "erank_full_projected": float(erank(ctx.space("projected"))) if ctx.has_space("projected") else math.nan,
        "attention_entropy": float(attention_entropy(ctx.cls_attention)),
        "attention_entropy_norm": float(attention_entropy(ctx.cls_attention, normalized=True)),
    }
    return out


def erank_stats_from(values: Iterable[float]) -> dict[str, float]:
    """``{"mean","min","max","std","n"}`` of per-image input eranks — the dictionary
    :func:`prunelab.methods.adaptive.calibrate_erank` returns for the same values."""
    vals = [float(v) for v in values]
    if not vals or not all(math.isfinite(v) for v in vals):
        raise PrunelabError("cannot calibrate erank statistics: no images or a non-finite erank; check the image set")
    return erank_summary(vals)


def _stable_int(*parts) -> int:
    return int.from_bytes(hashlib.sha256("|".join(map(str, parts)).encode()).digest()[:8], "little") >> 1


def random_subset_erank(ctx: VisualContext, size: int, n_random: int, seed: int) -> dict[str, float]:
    """Mean (and std) erank of ``n_random`` uniform random subsets of ``size`` patches, per feature space.

    Draws are seeded by ``(seed, image id, size)`` so every method with the same kept count sees the same subsets.
    """
    n = ctx.n_tokens
    size = max(1, min(int(size), n))
    out = {}
    if n_random <= 0:
        return {"erank_random_vision": math.nan, "erank_random_projected": math.nan}
    g = torch.Generator().manual_seed(_stable_int(seed, ctx.image_id, size))
    idx = torch.stack([torch.randperm(n, generator=g)[:size] for _ in range(n_random)])  # (R, size)
    for space in ("vision", "projected"):
        if not ctx.has_space(space):
            out[f"erank_random_{space}"] = math.nan
            continue
        vals = erank(ctx.space(space)[idx])  # batched over the R draws
        out[f"erank_random_{space}"] = float(vals.mean())
    return out


def _result_stats(ctx: VisualContext, res: PruneResult) -> dict[str, float]:
    # Same definitions as prunelab.methods.base.prune (tests check they agree).
    a = ctx.cls_attention.double()
    pi = res.patch_indices
    out = {
        "n_kept": res.n_kept,
        "attention_mass_kept": float(a[pi].sum() / a.sum()) if pi.numel() else 0.0,
        "erank_kept_vision": math.nan,
        "erank_kept_projected": math.nan,
    }
    if res.tokens is None or res.token_space == "vision":
        out["erank_kept_vision"] = float(erank(res.output_tokens(ctx, "vision")))
    if ctx.has_space("projected"):
        out["erank_kept_projected"] = float(erank(res.output_tokens(ctx, "projected")))
    return out


def scalar_json(stats: dict, skip=("method", "budget", "n_kept")) -> str:
    """The scalar entries of a method's statistics (one-element tensors as numbers) as sorted JSON, ``skip``
    left out: the ``method_stats`` column of both loops."""
    keep = {}
    for k, v in stats.items():
        if k in skip:
            continue
        if isinstance(v, torch.Tensor):
            v = v.item() if v.numel() == 1 else None
        if isinstance(v, (bool, int, float, str)) or v is None:
            keep[k] = v
    return json.dumps(keep, sort_keys=True, default=str)


def prune_image(
    ctx: VisualContext, specs: list[MethodSpec], budgets: Sequence[int], *, seed: int = 0, n_random: int = 8
) -> list[dict[str, Any]]:
    """Rows for one image: every method at every budget (image-level columns not included)."""
    rows = []
    random_cache: dict[int, dict[str, float]] = {}
    for spec in specs:
        for budget in budgets:
            t = check_budget(budget, ctx.n_tokens)
            t0 = time.perf_counter()
            try:
                res = spec.pruner(ctx, t)
            except PrunelabError as err:
                raise type(err)(f"{spec.label} at T={t} on image {ctx.image_id}: {err}") from None
            dt = time.perf_counter() - t0
            row = {"method": spec.label, "family": spec.pruner.family, "budget": t, "select_time_s": dt}
            row.update(_result_stats(ctx, res))
            size = row["n_kept"]
            if size not in random_cache:
                random_cache[size] = random_subset_erank(ctx, size, n_random, seed)
            row.update(random_cache[size])
            row["kept_indices"] = [int(i) for i in res.indices.tolist()]
            row["method_stats"] = scalar_json(res.stats)
            rows.append(row)
    return rows


# --------------------------------------------------------------------------------------------------------------
# Cache files


def _normalize(df: pd.DataFrame) -> pd.DataFrame:
    """Same dtypes whether rows were just computed or read back from CSV."""
    df = df.copy()
    df["image_id"] = df["image_id"].astype(str)
    df["complexity"] = df["complexity"].astype(object).where(df["complexity"].notna(), None)
    for col in ("budget", "seed", "n_tokens", "n_kept"):
        df[col] = df[col].astype("int64")
    return df


# --------------------------------------------------------------------------------------------------------------
# The loop


def _items_of(image_set, n, seed):
    from prunelab.study.data import ImageItem, load_image_set

    if isinstance(image_set, str):
        return image_set, load_image_set(image_set, n=n, seed=seed)
    items = list(image_set)
    if not items or not all(isinstance(it, ImageItem) for it in items):
        raise UnknownNameError(
            "image_set must be a set name such as 'photos' or a non-empty list of prunelab.study.data.ImageItem"
        )
    sources = sorted({it.source for it in items})
    return "+".join(sources), items


def _batches(seq, size):
    for i in range(0, len(seq), size):
        yield seq[i : i + size]


def run_vision(
    image_set,
    methods,
    budgets: Sequence[int],
    seed: int = 0,
    cache_dir: str | Path | None = None,
    *,
    n: int | None = None,
    n_random: int = 8,
    encoder: Callable[[list, list[str]], list[VisualContext]] | None = None,
    device: str = "auto",
    erank_stats: dict[str, float] | None = None,
    batch_size: int = 8,
    keep_in_memory: int = 256,
    progress: bool | None = None,
    refresh: bool = False,
    select_threads: int | None = 1,
    shard=None,
) -> pd.DataFrame:
    """Run ``methods`` x ``budgets`` on every image of ``image_set``; one row per image x method x budget.

    Parameters
    ----------
    image_set: a spec for :func:`prunelab.study.data.load_image_set` (``"photos"``, ``"toyworld:test"``,
        ``"coco:<dir>"``) or a list of :class:`prunelab.study.data.ImageItem`.
    methods: see :func:`resolve_methods`.
    budgets: absolute token budgets ``T`` (e.g. ``[64, 128]``).
    seed: selects the image subset (with ``n``) and seeds the random-subset baseline.
    cache_dir: where result files go (default ``<prunelab cache>/runs``); ``False`` disables caching.
    n: number of images (a nested, seeded subset; ``None`` = all).
    n_random: random subsets per (image, kept size) for ``erank_random_*``.
    encoder: ``callable(images, ids) -> [VisualContext]`` with a ``fingerprint`` attribute; default
        :class:`VisionEncoder` (DINOv2-S/14) on ``device``.
    erank_stats: input-erank statistics for calibrated methods; default: calibrated on this image set.
    batch_size: images encoded per call; keep_in_memory: sets up to this size keep their contexts between the
        calibration pass and the pruning pass (larger sets are re-encoded, which the feature cache makes cheap).
    progress: tqdm bars (default: on a terminal); refresh: ignore cached results.
    select_threads: torch CPU threads while selecting (default 1, see :func:`prunelab.device.cpu_threads`; ``None``
        leaves the setting alone). Selections do not depend on it; ``select_time_s`` does.
    shard: data parallelism over images (:mod:`prunelab.study.shard`): ``None`` follows the torchrun / accelerate
        environment, ``(rank, world)`` overrides it. Each rank prunes its own images; every rank returns all rows.

    ``df.attrs`` holds ``erank_stats``, ``encoder``, ``run_key`` and ``image_set``.
    """
    from tqdm.auto import tqdm

    specs = resolve_methods(methods)
    if not specs:
        raise UnknownNameError("no methods given; pass e.g. methods=['FasterVLM', 'DivPrune']")
    budgets = check_budgets(budgets, None)  # integers >= 1, never truncated; each image's N is checked in prune_image
    seed, n = check_seed(seed), check_n_images(n, "n")
    set_name, items = _items_of(image_set, n, seed)
    shard, device = sharding(shard, device)  # this rank's images and GPU
    encoder = encoder if encoder is not None else VisionEncoder(device=device, batch_size=batch_size)
    check_family(getattr(encoder, "refusal", None), specs)
    enc_fp = getattr(encoder, "fingerprint", None) or f"{type(encoder).__module__}.{type(encoder).__qualname__}"
    cache = RunCache(cache_dir, "runs", _CODE_FILES, CACHE_FORMAT, refresh)
    check_cache(shard, cache)
    code, vroot = cache.code, cache.root
    disable = bars_off(progress)

    # Pass 1: image-level statistics (cached per image), contexts kept for small sets.
    img_dir = vroot / "images" / _key([CACHE_FORMAT, enc_fp, code])
    contexts: dict[str, VisualContext] = {}
    keep = len(items) <= keep_in_memory

    def encode(batch):
        ctxs = encoder([it.image for it in batch], [it.id for it in batch])
        if len(ctxs) != len(batch):
            raise PrunelabError(f"encoder returned {len(ctxs)} contexts for {len(batch)} images; fix the encoder")
        for it in batch:
            if not keep:
                it.release()
        return ctxs

    def ipath(it):
        return img_dir / f"{_key([it.source, it.id])}.json"

    def compute(batch):
        out = []
        for it, ctx in zip(batch, encode(batch)):
            out.append(image_stats(ctx))
            if keep:
                contexts[it.id] = ctx
        return out

    calibrate = erank_stats is None  # the statistics (and so every row's key) cover every rank's images
    per_image = per_item(
        shard, cache, items, ipath, compute, IMAGE_COLUMNS, calibrate, batch_size=batch_size, disable=disable
    )

    stats = (
        dict(erank_stats)
        if erank_stats is not None
        else erank_stats_from(per_image[it.id]["erank_full_vision"] for it in items)
    )

    # Pass 2: pruning rows (cached per image).
    run_key = _key([CACHE_FORMAT, enc_fp, code, [s.key() for s in specs], budgets, seed, n_random, stats])
    # One entry per image, nothing else: a combined copy of the whole run stored every row twice.
    run_dir = vroot / "rows" / run_key
    frames: dict[str, pd.DataFrame] = {}
    todo = []
    for it in shard.mine(items):
        cached = cache.read(run_dir / f"{_key([it.source, it.id])}.json", VISION_COLUMNS)
        if cached is not None:
            frames[it.id] = cached
        else:
            todo.append(it)
    with tqdm(total=len(todo), desc="pruning", unit="img", disable=disable or not todo) as bar:
        for batch in _batches(todo, batch_size):
            missing = [it for it in batch if it.id not in contexts]
            fresh = dict(zip([it.id for it in missing], encode(missing))) if missing else {}
            for it in batch:
                ctx = contexts.pop(it.id, None) or fresh[it.id]
                ctx.erank_stats = stats
                with cpu_threads(select_threads):
                    rows = prune_image(ctx, specs, budgets, seed=seed, n_random=n_random)
                img = per_image[it.id]
                for r in rows:
                    r.update(
                        image_set=set_name,
                        image_id=it.id,
                        complexity=it.complexity,
                        seed=seed,
                        **{k: img[k] for k in IMAGE_COLUMNS},
                    )
                frame = pd.DataFrame(rows)[VISION_COLUMNS]
                cache.write(frame, run_dir / f"{_key([it.source, it.id])}.json")
                frames[it.id] = frame
                bar.update(1)
    rest = {it.id: run_dir / f"{_key([it.source, it.id])}.json" for it in items if it.id not in frames}
    frames.update(gather(shard, rest, table_reader(VISION_COLUMNS), "vision rows"))  # the other ranks' rows
    df_all = pd.concat([frames[it.id] for it in items], ignore_index=True)[VISION_COLUMNS]
    df_all = _normalize(df_all)
    df_all.attrs.update(erank_stats=stats, encoder=enc_fp, run_key=run_key, image_set=set_name)
    return df_all


def method_stats(df: pd.DataFrame) -> pd.DataFrame:
    """Expand the JSON ``method_stats`` column into one column per statistic (``stat_<name>``)."""
    parsed = df["method_stats"].map(lambda s: json.loads(s) if isinstance(s, str) and s else {})
    wide = pd.DataFrame(parsed.tolist(), index=df.index).add_prefix("stat_")
    return pd.concat([df, wide], axis=1)


def glance_table(df: pd.DataFrame, space: str = "vision") -> pd.DataFrame:
    """Per method x budget means over images: kept count, erank of the kept tokens, its ratio to the erank of all
    tokens and of random same-size subsets (1 = chance), [CLS] attention mass kept and selection time (ms).

    Ratios are averaged per image (mean of ``kept / full``), not ratios of means, so every image weighs the same.
    """
    d = df.assign(
        erank_over_full=df[f"erank_kept_{space}"] / df[f"erank_full_{space}"],
        erank_over_random=df[f"erank_kept_{space}"] / df[f"erank_random_{space}"],
        select_ms=1000 * df["select_time_s"],
    )
    cols = {
        "n_kept": "kept",
        f"erank_kept_{space}": "erank kept",
        "erank_over_full": "kept / all",
        "erank_over_random": "kept / random",
        "attention_mass_kept": "attention kept",
        "select_ms": "select ms",
    }
    out = d.groupby(["method", "budget"], sort=False)[list(cols)].mean().rename(columns=cols).reset_index()
    rank = {m: i for i, m in enumerate(method_order(df))}
    return out.sort_values(["budget", "method"], key=lambda c: c.map(rank) if c.name == "method" else c).reset_index(
        drop=True
    )


def pick_images(df: pd.DataFrame, n: int, seed: int = 0) -> list[str]:
    """``n`` image ids of ``df`` for figures: round-robin over the complexity labels (simple, medium, complex,
    unlabelled), each label's ids in a seeded order, so small figures show both kinds of image. Deterministic."""
    import random

    img = df.drop_duplicates("image_id")[["image_id", "complexity"]]
    groups = []
    for label in ("simple", "medium", "complex", None):
        ids = sorted(img.loc[img["complexity"].isna() if label is None else img["complexity"] == label, "image_id"])
        random.Random(f"{seed}:{label}").shuffle(ids)
        if ids:
            groups.append(ids)
    out: list[str] = []
    while len(out) < n and any(groups):
        for g in groups:
            if g and len(out) < n:
                out.append(g.pop(0))
    return out


def save_table(df: pd.DataFrame, folder: str | Path, name: str) -> Path:
    """Write a result table as ``<folder>/<name>.csv`` (atomically; list columns as JSON) and return the path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.csv"
    out = df.copy()
    for c in out.columns:
        if out[c].map(lambda v: isinstance(v, (list, tuple))).any():
            out[c] = out[c].map(json.dumps)
    with atomic_write(path, "w") as fh:
        out.to_csv(fh, index=False)
    return path


__all__ = [
    "pick_images",
    "save_table",
    "VISION_COLUMNS",
    "glance_table",
    "MethodSpec",
    "resolve_methods",
    "methods_for",
    "vision_methods",
    "image_stats",
    "erank_stats_from",
    "random_subset_erank",
    "prune_image",
    "run_vision",
    "method_stats",
]

"""AgilePruner's dataset erank statistics for an lmms-eval run, computed once before launch.

The study calibrates the input-erank statistics on the whole image set before any pruning
(:mod:`prunelab.study.generation`, pass 1). Under ``torchrun`` each lmms-eval rank sees only its stride of the
documents, so calibrating inside the model would give every rank different statistics. Here they are computed
once, over every image of the built task files, with the same per-image value as the study
(:func:`prunelab.study.generation.spec_input_erank`) and the same summary (:func:`prunelab.study.runner.erank_stats_from`),
and written to a JSON file the model reads (``--model_args ...,erank_stats=<file>``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path

import torch
from PIL import Image

from prunelab.errors import AssetError, CapabilityError
from prunelab.methods.base import ErankStatsSpec, Pruner, get_pruner
from prunelab.paths import atomic_write
from prunelab.study.generation import spec_input_erank
from prunelab.study.runner import erank_stats_from

__all__ = ["calibrate", "image_paths", "load_stats", "make_pruner", "save_stats"]

FORMAT = 1


def make_pruner(method: str | None, method_params: dict | None = None) -> Pruner | None:
    """The pruner of ``method`` (``None`` / ``"none"`` / ``"full"`` / ``"vanilla"``: the unpruned model)."""
    if method is None or str(method).lower() in ("none", "full", "vanilla"):
        return None
    return get_pruner(str(method), **(method_params or {}))


def image_paths(data_dir: str | Path) -> list[Path]:
    """Every distinct image named by the task files (``*.json``: lists of documents with an ``image`` path,
    relative to the file) under ``data_dir``, in sorted order."""
    folder = Path(data_dir)
    files = sorted(folder.glob("*.json"))
    if not files:
        raise AssetError(f"no task files (*.json) in {folder}; run python -m prunelab.lmms.tasks build {folder}")
    seen: dict[str, Path] = {}
    for f in files:
        docs = json.loads(f.read_text())
        if not isinstance(docs, list) or not all(isinstance(d, dict) and "image" in d for d in docs):
            continue  # not a task file (e.g. the stats file itself)
        for d in docs:
            p = (f.parent / d["image"]).resolve()
            seen.setdefault(str(p), p)
    if not seen:
        raise AssetError(f"the task files in {folder} name no images; rebuild them with python -m prunelab.lmms.tasks")
    return [seen[k] for k in sorted(seen)]


@torch.no_grad()
def calibrate(gm, pruner: Pruner, images: Iterable[str | Path]) -> dict:
    """``{"spec": ..., "stats": {"mean","min","max","std","n"}, "model": fingerprint, "images": n}`` of ``pruner``'s
    erank spec over ``images`` with the model ``gm`` (a :class:`~prunelab.models.loader.GenerationModel`)."""
    spec = pruner.erank_stats_spec()
    if spec is None:
        raise CapabilityError(f"{pruner.name} reads no erank statistics; run it without erank_stats")
    vals = []
    for p in images:
        with Image.open(p) as im:
            pv = gm.pixels(im.convert("RGB"))
        enc, _ = gm.adapter.encode_timed(pv, ())
        vals.append(spec_input_erank(gm.adapter.context(enc, 0), spec))
    return {"format": FORMAT, "spec": asdict(spec), "stats": erank_stats_from(vals), "model": gm.fingerprint}


def save_stats(path: str | Path, stats: dict) -> Path:
    with atomic_write(path, "w") as fh:
        json.dump(stats, fh, indent=1, sort_keys=True)
    return Path(path)


def load_stats(path: str | Path, pruner: Pruner, fingerprint: str | None = None) -> dict:
    """The ``{"mean", "min", ...}`` statistics in ``path`` after checking they were computed with ``pruner``'s erank
    options (and, when given, the same model weights)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise AssetError(
            f"cannot read erank statistics {path} ({err}); run python -m prunelab.lmms calibrate"
        ) from None
    spec = pruner.erank_stats_spec()
    if spec is None:
        raise CapabilityError(f"{pruner.name} reads no erank statistics; drop erank_stats from the model args")
    if data.get("format") != FORMAT or ErankStatsSpec(**data.get("spec", {})) != spec:
        raise CapabilityError(
            f"erank statistics {path} were computed with {data.get('spec')}, {pruner.name} reads {asdict(spec)}; "
            "run python -m prunelab.lmms calibrate with the same method and parameters"
        )
    if fingerprint is not None and data.get("model") != fingerprint:
        raise CapabilityError(
            f"erank statistics {path} were computed with another model (fingerprint {data.get('model')}); "
            "run python -m prunelab.lmms calibrate with this pretrained model"
        )
    return dict(data["stats"])

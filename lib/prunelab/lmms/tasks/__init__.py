"""Local lmms-eval tasks on the toy world: POPE and CHAIR documents built from a split, read offline.

``python -m prunelab.lmms.tasks build OUT --n 10`` renders the first ``n`` scenes of the split to ``OUT/images``,
writes ``OUT/pope_toy.json`` (each scene's balanced POPE questions, :func:`prunelab.toyworld.text.pope_questions`,
the ones the study asks) and ``OUT/chair_toy.json`` (one description request per scene with its exact categories),
and copies the task YAMLs beside them; then ``lmms-eval --include_path OUT --tasks prunelab_pope_toy,prunelab_chair_toy``
runs with ``HF_DATASETS_OFFLINE=1`` (``dataset_path: json``; lmms-eval resolves ``data_files`` against the YAML's
folder). Scoring: :mod:`prunelab.lmms.tasks.scoring`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from prunelab.errors import UnknownNameError
from prunelab.paths import atomic_write
from prunelab.toyworld import DESCRIBE_PROMPT, SPLIT_SIZES, get_scene, pope_questions, render
from prunelab.toyworld.text import POPE_SETTINGS

__all__ = ["TASK_YAMLS", "build"]

HERE = Path(__file__).resolve().parent
TASK_YAMLS = ("prunelab_pope_toy.yaml", "prunelab_chair_toy.yaml")


def _write_json(path: Path, obj) -> None:
    with atomic_write(path, "w") as fh:
        json.dump(obj, fh, indent=1)


def build(out: str | Path, n: int = 10, split: str = "test", setting: str = "adversarial", start: int = 0) -> dict:
    """Write the task folder (see the module docstring); returns ``{"pope": n_questions, "chair": n_images}``."""
    if split not in SPLIT_SIZES:
        raise UnknownNameError(f"unknown toy-world split {split!r}; use one of {', '.join(SPLIT_SIZES)}")
    if setting not in POPE_SETTINGS:
        raise UnknownNameError(f"unknown POPE setting {setting!r}; use one of {', '.join(POPE_SETTINGS)}")
    if not 0 < int(n) <= SPLIT_SIZES[split] - int(start):
        raise UnknownNameError(f"n={n} scenes from {start} do not fit the {split} split ({SPLIT_SIZES[split]} scenes)")
    out = Path(out).resolve()
    (out / "images").mkdir(parents=True, exist_ok=True)
    pope, chair = [], []
    for i in range(int(start), int(start) + int(n)):
        scene = get_scene(split, i)
        img = out / "images" / f"{scene.id}.png"
        render(scene).save(img)  # PNG: lossless, so every reader sees the pixels the scene renders
        for k, q in enumerate(pope_questions(scene, setting)):
            pope.append(
                {
                    "question_id": f"{scene.id}/{setting}-{k}",
                    "image_id": scene.id,
                    "image": str(img),
                    "question": q["question"],
                    "answer": q["answer"],
                    "object": q["object"],
                    "setting": setting,
                }
            )
        chair.append({"image_id": scene.id, "image": str(img), "prompt": DESCRIBE_PROMPT, "objects": scene.categories})
    _write_json(out / "pope_toy.json", pope)
    _write_json(out / "chair_toy.json", chair)
    for name in TASK_YAMLS:
        shutil.copyfile(HERE / name, out / name)
    return {"pope": len(pope), "chair": len(chair)}

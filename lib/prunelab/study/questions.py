"""What the study asks of an image: its ground truth (CHAIR) and its POPE questions, for any image set.

Split out of :mod:`prunelab.study.generation` (which re-exports both): the loop asks, this module answers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from prunelab.errors import AssetError, UnknownNameError
from prunelab.eval import groundtruth as G, pope as P
from prunelab.toyworld import text as tt

__all__ = ["Question", "ground_truth_for", "pope_questions_for"]


def ground_truth_for(items, set_name: str):
    """The ground truth of the selected images, keyed by ``ImageItem.id``: toy world (exact scene categories,
    :func:`prunelab.eval.groundtruth.toyworld_ground_truth`), photos (:func:`~prunelab.eval.groundtruth.photos_ground_truth`)
    or COCO (:class:`~prunelab.eval.groundtruth.CocoGroundTruth` from ``instances_val2014.json`` +
    ``captions_val2014.json`` found in ``<dir>/../annotations``, ``<dir>/..`` or ``<dir>``)."""
    kind = set_name.split(":", 1)[0]
    if kind == "toyworld" and all("scene" in it.meta for it in items):
        return G.toyworld_ground_truth(labels={it.id: list(it.meta["scene"].categories) for it in items})
    if kind == "photos":
        gt = G.photos_ground_truth()
        return G.MappingGroundTruth({it.id: set(gt.objects(it.id)) for it in items}, name="photos")
    if kind == "coco":
        folder = Path(set_name.split(":", 1)[1]).expanduser()
        for ann in (folder.parent / "annotations", folder.parent, folder):
            if (ann / "instances_val2014.json").is_file() and (ann / "captions_val2014.json").is_file():
                ids = [it.meta.get("coco_id") for it in items]
                if any(i is None for i in ids):
                    raise AssetError(
                        f"some files in {folder} are not named like COCO_val2014_<id>.jpg; CHAIR needs the COCO ids"
                    )
                gt = G.CocoGroundTruth.from_dir(ann, image_ids=ids)
                return G.MappingGroundTruth(
                    {it.id: set(gt.objects(it.meta["coco_id"])) for it in items}, name="coco2014", source=str(ann)
                )
        raise AssetError(
            f"no COCO annotations (instances_val2014.json, captions_val2014.json) next to {folder}; put them "
            f"in {folder.parent / 'annotations'}"
        )
    if all(it.labels for it in items):
        return G.MappingGroundTruth({it.id: set(it.labels) for it in items}, name=set_name)
    raise AssetError(f"no ground truth known for image set {set_name!r}; use toyworld:<split>, photos or coco:<dir>")


@dataclass(frozen=True)
class Question:
    setting: str
    question_id: str
    question: str
    object: str
    label: str  # "yes" | "no"


def pope_questions_for(
    items, set_name: str, settings: Sequence[str] = ("random", "popular", "adversarial"), seed: int = 0
) -> dict[str, list[Question]]:
    """POPE questions per image id. Toy world: each scene's own balanced questions per setting
    (:func:`prunelab.toyworld.text.pope_questions`, the ones ToyLLaVA's evaluation uses). Otherwise
    :func:`prunelab.eval.pope.build_pope` on the selected images with >= 3 objects (others get no question)."""
    for s in settings:
        if s not in P.SETTINGS:
            raise UnknownNameError(f"unknown POPE setting {s!r}; use some of {', '.join(P.SETTINGS)}")
    out: dict[str, list[Question]] = {it.id: [] for it in items}
    if set_name.startswith("toyworld") and all("scene" in it.meta for it in items):
        for it in items:
            for s in settings:
                for k, q in enumerate(tt.pope_questions(it.meta["scene"], s)):
                    out[it.id].append(Question(s, f"{s}-{k}", q["question"], q["object"], q["answer"]))
        return out
    gt = ground_truth_for(items, set_name)
    eligible = [it.id for it in items if len(gt.objects(it.id)) >= 3]
    if not eligible:
        raise P.PopeError(
            f"no selected image of {set_name!r} has >= 3 ground-truth objects; use more images (n) or toyworld"
        )
    for s, qs in P.build_pope(gt, settings=settings, image_ids=eligible, seed=seed).items():
        for q in qs:
            out[q.image_id].append(Question(s, f"{s}-{q.question_id}", q.text, q.object, q.label))
    return out

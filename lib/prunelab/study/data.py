"""Image sets behind one interface: ``load_image_set(spec, n=None, seed=0) -> list[ImageItem]``.

Specs
-----
* ``"photos"``: the offline real photographs shipped with the study (:mod:`prunelab.study.photos`: ``list_photos()``,
  ``load_photo(name)``, ``photo_labels()``).
* ``"toyworld:<split>"``: scenes of the emoji-COCO toy world (:mod:`prunelab.toyworld.splits`: ``split_ids``,
  ``complexity_of``, ``get_scene``), e.g. ``toyworld:test``; labels = the scene's categories (exact ground truth),
  ``meta["scene"]`` = the :class:`~prunelab.toyworld.scenes.Scene`.
* ``"coco:<dir>"``: a user-provided COCO ``val2014`` image folder (GPU runs); every ``*.jpg`` in it, sorted.

Selection is the same for every set: items sorted by id; with ``n`` given, the ``n`` first items of a
``seed``-shuffled order, returned sorted by id again. Subsets are nested (for one seed, the ``n=10`` items are
among the ``n=20`` items), so a quick run is a prefix of a bigger one.

Images load lazily (``item.image``), so listing 40k COCO files costs nothing; the modules behind the photo and
toy-world sets are imported only when such a set is asked for.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prunelab.errors import AssetError, ImageError, UnknownNameError
from prunelab.study import photos
from prunelab.toyworld import scenes, splits

IMAGE_SETS = ("photos", "toyworld:<split>", "coco:<val2014 dir>")
COMPLEXITY = ("simple", "medium", "complex")
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


@dataclass
class ImageItem:
    """One image of a set.

    id: stable identifier within the set (file stem, scene id...).
    source: the set spec it came from (``"photos"``, ``"toyworld:test"``, ``"coco:/data/val2014"``).
    labels: object category names present in the image (COCO names; empty when unknown).
    complexity: ``"simple"``, ``"complex"`` (toy-world val/train also ``"medium"``) or ``None`` when unknown.
    meta: anything else the set knows (file path, counts, boxes, caption...).
    """

    id: str
    source: str
    labels: list[str] = field(default_factory=list)
    complexity: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    loader: Callable[[], Any] | None = field(default=None, repr=False, compare=False)
    _image: Any = field(default=None, repr=False, compare=False)

    @property
    def image(self):
        """The RGB ``PIL.Image`` (loaded on first access, then kept)."""
        if self._image is None:
            if self.loader is None:
                raise ImageError(f"image {self.id!r} of {self.source!r} has no loader; build items with load_image_set")
            img = self.loader()
            self._image = img.convert("RGB") if getattr(img, "mode", "RGB") != "RGB" else img
        return self._image

    def release(self) -> None:
        """Drop the decoded image (it is reloaded on next access)."""
        self._image = None


def select(items: list[ImageItem], n: int | None, seed: int) -> list[ImageItem]:
    """Sort by id; keep a nested, seeded subset of ``n`` items (see module docstring)."""
    items = sorted(items, key=lambda it: it.id)
    if n is None:
        return items
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise UnknownNameError(f"n must be a positive integer or None, got {n!r}; pass e.g. n=8")
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    keep = sorted(order[: min(n, len(items))])
    return [items[i] for i in keep]


def load_image_set(spec: str, n: int | None = None, seed: int = 0) -> list[ImageItem]:
    """The items of image set ``spec`` (see module docstring), optionally a seeded subset of ``n``."""
    if not isinstance(spec, str) or not spec:
        raise UnknownNameError(
            f"image set must be a string such as 'photos', got {spec!r}; known: {', '.join(IMAGE_SETS)}"
        )
    kind, _, arg = spec.partition(":")
    if kind == "photos" and not arg:
        items = _photos()
    elif kind == "toyworld":
        items = _toyworld(arg or "test", spec)
    elif kind == "coco":
        items = _coco(arg, spec)
    else:
        raise UnknownNameError(f"unknown image set {spec!r}; known: {', '.join(IMAGE_SETS)}")
    if not items:
        raise AssetError(f"image set {spec!r} is empty; check that its assets are installed (make assets)")
    chosen = select(items, n, seed)
    return _finish_toyworld(chosen) if kind == "toyworld" else chosen


# --------------------------------------------------------------------------------------------------------------


def _complexity(value) -> str | None:
    if value is None:
        return None
    v = str(value).lower()
    return v if v in COMPLEXITY else None


def _photos() -> list[ImageItem]:
    manifest = photos.photo_manifest()
    labels = photos.photo_labels()
    items = []
    for name in photos.list_photos():
        info = manifest.get(name)
        items.append(
            ImageItem(
                id=str(name),
                source="photos",
                labels=list(labels.get(name, [])),
                complexity=_complexity(getattr(info, "complexity", None)),
                meta={"note": getattr(info, "note", ""), "source_file": getattr(info, "source", "")},
                loader=(lambda nm=name: photos.load_photo(nm)),
            )
        )
    return items


def _toyworld(split: str, spec: str) -> list[ImageItem]:
    items = []
    for index, sid in enumerate(splits.split_ids(split)):
        items.append(
            ImageItem(
                id=str(sid),
                source=spec,
                complexity=_complexity(splits.complexity_of(split, index)),
                meta={"split": split, "index": index},
                loader=(lambda i=index: _render_toy(split, i)),
            )
        )
    return items


def _render_toy(split: str, index: int):
    return scenes.render(splits.get_scene(split, index))


def _finish_toyworld(items: list[ImageItem]) -> list[ImageItem]:
    """Attach ground truth (categories, counts, the scene itself) to the selected toy-world items only: scene
    generation is cheap but not free, and a split has hundreds of scenes."""
    for it in items:
        scene = splits.get_scene(it.meta["split"], it.meta["index"])
        it.labels = list(scene.categories)
        it.meta.update(scene=scene, counts=scene.counts, context=scene.context)
    return items


def _coco(folder: str, spec: str) -> list[ImageItem]:
    if not folder:
        raise UnknownNameError("coco image set needs a folder: pass 'coco:/path/to/val2014'")
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise AssetError(f"COCO image folder {root} does not exist; download val2014 and pass 'coco:/path/to/val2014'")
    files = sorted(p for p in root.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise AssetError(
            f"COCO image folder {root} holds no .jpg/.png images; point 'coco:<dir>' at the val2014 folder"
        )

    def _open(path: Path):
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as im:
                return im.convert("RGB")
        except (OSError, UnidentifiedImageError) as err:
            raise ImageError(f"cannot read image {path} ({err}); delete or replace the file") from None

    items = []
    for p in files:
        image_id = None
        tail = p.stem.rsplit("_", 1)[-1]  # COCO_val2014_000000391895 -> 391895
        if tail.isdigit():
            image_id = int(tail)
        items.append(
            ImageItem(id=p.stem, source=spec, meta={"path": str(p), "coco_id": image_id}, loader=(lambda q=p: _open(q)))
        )
    return items


__all__ = ["ImageItem", "IMAGE_SETS", "load_image_set", "select"]

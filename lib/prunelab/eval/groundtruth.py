"""Ground-truth object sets per image, behind one interface (CHAIR, POPE).

A ground truth maps an image id to the set of COCO categories (canonical CHAIR names, i.e. COCO 2014 category names)
present in the image. Sources:

* :class:`MappingGroundTruth` — any ``{image_id: iterable_of_categories}``; exact labels (toy world, photos).
* :class:`CocoGroundTruth` — COCO 2014 from user-provided ``instances_*.json`` + ``captions_*.json``: the union of
  (a) instance category names and (b) every COCO object word found in the image's reference captions by the same
  :class:`~prunelab.eval.mentions.CaptionParser` used for generated captions (``LisaAnne/Hallucination`` /
  ``shikiw/OPERA`` ``chair.py``: ``get_annotations_from_segments`` + ``get_annotations_from_captions``).
* :func:`toyworld_ground_truth`, :func:`photos_ground_truth` — lazy adapters for the project's toy world and offline
  photos; they import nothing at module import time.

The COCO protocol helper :func:`coco_protocol_ids` makes the OPERA/PAI image choice reproducible: sort the
``val2014`` listing, shuffle with ``random.Random(seed)`` (the same Mersenne-Twister sequence as OPERA's
``random.seed(seed); random.shuffle(...)``), take the first ``n``; :func:`save_protocol_ids` stores them with the
results.
"""

from __future__ import annotations

import csv
import hashlib
import json
import random
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

from prunelab.errors import AssetError, PrunelabError
from prunelab.eval.mentions import CaptionParser, SynonymTable
from prunelab.paths import atomic_write, data_dir


class AnnotationError(PrunelabError, ValueError):
    """A malformed or unusable annotation file / label mapping."""


class MissingGroundTruthError(PrunelabError, LookupError):
    """An image id for which the ground truth has no entry."""

    def __str__(self) -> str:  # LookupError would repr() the message
        return str(self.args[0]) if self.args else ""


def _canonical_categories(categories=None) -> tuple[str, ...]:
    if categories is not None:
        return tuple(categories)
    return SynonymTable.load().categories


class GroundTruth:
    """Interface: ``objects(image_id) -> frozenset[str]`` of canonical categories; ``image_ids()``; ``describe()``."""

    name = "ground truth"

    def objects(self, image_id) -> frozenset[str]:
        raise NotImplementedError

    def image_ids(self) -> list:
        raise NotImplementedError

    def __contains__(self, image_id) -> bool:
        try:
            self.objects(image_id)
        except MissingGroundTruthError:
            return False
        return True

    def as_dict(self) -> dict:
        return {i: self.objects(i) for i in self.image_ids()}

    def describe(self) -> dict:
        return {"name": self.name, "n_images": len(self.image_ids())}


class MappingGroundTruth(GroundTruth):
    """Ground truth from ``{image_id: iterable of category names}``; names must be canonical COCO categories.

    Lookups tolerate the int/str id mismatch that JSON round-trips create (``"42"`` finds ``42`` and vice versa).
    """

    def __init__(
        self,
        mapping: Mapping,
        *,
        name: str = "mapping",
        categories: Iterable[str] | None = None,
        source: str | None = None,
    ):
        if not isinstance(mapping, Mapping):
            raise AnnotationError(
                f"ground truth must be a mapping image_id -> categories, got {type(mapping).__name__}; pass a dict"
            )
        cats = set(_canonical_categories(categories))
        data: dict = {}
        for image_id, objs in mapping.items():
            if isinstance(objs, str) or not isinstance(objs, Iterable):
                raise AnnotationError(
                    f"ground truth for image {image_id!r} must be a collection of category names, got {type(objs).__name__}; wrap it in a set"
                )
            objs = frozenset(objs)
            unknown = sorted(o for o in objs if o not in cats)
            if unknown:
                raise AnnotationError(
                    f"image {image_id!r}: {unknown} are not COCO category names; use canonical names such as 'couch', 'tv', 'dining table' (see data/chair/synonyms.txt)"
                )
            data[image_id] = objs
        self._data = data
        self.name = name
        self.source = source

    def objects(self, image_id) -> frozenset[str]:
        try:
            return self._data[image_id]
        except (KeyError, TypeError):
            pass
        alt = None
        if isinstance(image_id, str) and image_id.strip().isdigit():
            alt = int(image_id)
        elif isinstance(image_id, int):
            alt = str(image_id)
        if alt is not None and alt in self._data:
            return self._data[alt]
        raise MissingGroundTruthError(
            f"image {image_id!r} has no ground truth in {self.name} ({len(self._data)} images); check the image id or add its annotations"
        )

    def image_ids(self) -> list:
        return list(self._data)

    def describe(self) -> dict:
        d = super().describe()
        if self.source:
            d["source"] = self.source
        return d


def as_ground_truth(obj, *, categories=None, name: str = "mapping") -> GroundTruth:
    """Return ``obj`` if it is a :class:`GroundTruth`, else wrap a plain mapping in :class:`MappingGroundTruth`."""
    if isinstance(obj, GroundTruth):
        return obj
    return MappingGroundTruth(obj, name=name, categories=categories)


# ----------------------------------------------------------------------------------------------------------------
# COCO 2014
# ----------------------------------------------------------------------------------------------------------------
def _load_json(path: Path, kind: str) -> dict:
    try:
        with open(path, encoding="utf-8") as fh:
            obj = json.load(fh)
    except FileNotFoundError as err:
        raise AnnotationError(
            f"COCO {kind} file {path} not found; download the COCO 2014 annotations and pass their folder"
        ) from err
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        msg = " ".join(str(err).split())[:120]
        raise AnnotationError(f"COCO {kind} file {path} is not valid JSON ({msg}); re-download it") from err
    if not isinstance(obj, dict) or not isinstance(obj.get("annotations"), list):
        raise AnnotationError(f"COCO {kind} file {path} has no 'annotations' list; pass an official {kind}_*2014.json")
    return obj


def _annotations(path: Path, obj: dict, field: str, kind: str, wanted: set | None, into: dict):
    """``(index, image_id, value of field)`` of each annotation of a wanted image; every wanted image listed under
    ``images`` gets an (empty) entry in ``into`` first, so images without annotations still count."""
    for img in obj.get("images", []) or []:
        iid = img.get("id") if isinstance(img, dict) else None
        if iid is not None and (wanted is None or iid in wanted):
            into.setdefault(iid, set())
    for k, ann in enumerate(obj["annotations"]):
        try:
            iid, value = ann["image_id"], ann[field]
        except (KeyError, TypeError) as err:
            raise AnnotationError(
                f"{path}: annotation #{k} lacks 'image_id'/'{field}'; the file is not a COCO {kind} file"
            ) from err
        if wanted is None or iid in wanted:
            yield k, iid, value


class CocoGroundTruth(MappingGroundTruth):
    """COCO ground truth: instance categories ∪ objects parsed from the reference captions (per image).

    Also keeps, per image, which part came from instances (``from_instances``) and which from captions
    (``from_captions``). Images listed in an ``images`` array without any instance annotation have an empty
    instance part; that is a known image, not a missing one.
    """

    name = "coco2014"

    def __init__(self, from_instances: Mapping, from_captions: Mapping, *, sources: list[str], categories):
        union = {
            i: set(from_instances.get(i, ())) | set(from_captions.get(i, ()))
            for i in set(from_instances) | set(from_captions)
        }
        super().__init__(union, name="coco2014", categories=categories, source="; ".join(sources))
        self.from_instances = {k: frozenset(v) for k, v in from_instances.items()}
        self.from_captions = {k: frozenset(v) for k, v in from_captions.items()}
        self.sources = sources

    @classmethod
    def from_files(
        cls,
        instances: Iterable[str | Path],
        captions: Iterable[str | Path],
        *,
        image_ids=None,
        parser=None,
        progress: bool = False,
    ) -> CocoGroundTruth:
        """Build from lists of ``instances_*.json`` and ``captions_*.json`` files.

        ``image_ids`` restricts the result (and the caption parsing, the slow part) to those images; since a
        caption only contributes to its own image this gives exactly the reference's sets for them.
        """
        parser = parser or CaptionParser()
        vocab = parser.vocab
        wanted = None if image_ids is None else {int(i) for i in image_ids}
        inst: dict[int, set] = {}
        caps: dict[int, set] = {}
        sources = []
        for path in map(Path, instances):
            obj = _load_json(path, "instances")
            sources.append(str(path))
            cats = obj.get("categories")
            if not isinstance(cats, list) or not cats:
                raise AnnotationError(
                    f"COCO instances file {path} has no 'categories' list; pass an official instances_*2014.json"
                )
            id_to_cat = {}
            for c in cats:
                try:
                    name = c["name"]
                    id_to_cat[c["id"]] = vocab[name]
                except KeyError as err:
                    raise AnnotationError(
                        f"{path}: category {c!r} has no id/name or an unknown name {err}; use the official COCO category list"
                    ) from err
            for k, iid, cid in _annotations(path, obj, "category_id", "instances", wanted, inst):
                if cid not in id_to_cat:
                    raise AnnotationError(
                        f"{path}: annotation #{k} has unknown category_id {cid!r}; the file's 'categories' list is incomplete"
                    )
                inst.setdefault(iid, set()).add(id_to_cat[cid])
        todo = []
        for path in map(Path, captions):
            obj = _load_json(path, "captions")
            sources.append(str(path))
            for k, iid, text in _annotations(path, obj, "caption", "captions", wanted, caps):
                if not isinstance(text, str):
                    raise AnnotationError(
                        f"{path}: caption #{k} of image {iid} is {type(text).__name__}, not text; re-download the file"
                    )
                todo.append((iid, text))
        if progress:
            from tqdm.auto import tqdm

            todo = tqdm(todo, desc="GT captions", unit="caption")
        for iid, text in todo:
            caps.setdefault(iid, set()).update(parser.objects(text))
        return cls(inst, caps, sources=sources, categories=parser.categories)

    @classmethod
    def from_dir(cls, annotation_dir: str | Path, *, splits: Iterable[str] = ("val2014",), **kwargs) -> CocoGroundTruth:
        """Build from ``<dir>/instances_<split>.json`` and ``<dir>/captions_<split>.json``.

        The reference loads ``train2014`` and ``val2014`` together; COCO 2014 image ids are unique across the two
        splits, so for val images ``splits=("val2014",)`` yields the same sets without reading ~0.5 GB of train
        annotations. Pass ``splits=("train2014", "val2014")`` to mirror the reference literally.
        """
        d = Path(annotation_dir)
        splits = list(splits)
        return cls.from_files(
            [d / f"instances_{s}.json" for s in splits], [d / f"captions_{s}.json" for s in splits], **kwargs
        )

    def describe(self) -> dict:
        d = super().describe()
        d["files"] = self.sources
        return d


# ----------------------------------------------------------------------------------------------------------------
# Project sources (lazy)
# ----------------------------------------------------------------------------------------------------------------
def toyworld_ground_truth(
    labels: Mapping | None = None,
    *,
    scenes: Iterable | None = None,
    split: str = "test",
    limit: int | None = None,
    **kwargs,
) -> MappingGroundTruth:
    """Toy-world ground truth: the exact object categories of each scene.

    Give ``labels`` (``{image_id: [category, ...]}``) or ``scenes`` (objects with ``.id`` and ``.categories``, i.e.
    :class:`prunelab.toyworld.Scene`); otherwise ``prunelab.toyworld.load_split(split, limit=limit, **kwargs)`` is
    imported and iterated at this point (never at module import).
    """
    if labels is None:
        if scenes is None:
            try:
                from prunelab.toyworld import load_split
            except ImportError as err:
                raise AssetError(
                    "prunelab.toyworld.load_split is not available; pass labels={image_id: [categories]} or scenes="
                ) from err
            scenes = load_split(split, limit=limit, **kwargs)
        labels = {}
        for sc in scenes:
            try:
                labels[sc.id] = list(sc.categories)
            except AttributeError as err:
                raise AnnotationError(
                    f"toy-world scene {sc!r:.60} has no .id/.categories; pass prunelab.toyworld Scene objects"
                ) from err
    return MappingGroundTruth({k: set(v) for k, v in labels.items()}, name="toyworld")


_PHOTO_ID_COLUMNS = ("image_id", "id", "name", "file", "filename", "path")


def photos_ground_truth(manifest: str | Path | None = None) -> MappingGroundTruth:
    """Offline-photo ground truth from ``data/photos/manifest.csv`` (``coco_objects``: ``;``-separated names).

    The image id is the first present column of ``image_id, id, name, file, filename, path``. An empty
    ``coco_objects`` cell means "no COCO object visible" (a labelled empty set).
    """
    path = Path(manifest) if manifest is not None else data_dir() / "photos" / "manifest.csv"
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
            header = rows[0].keys() if rows else []
    except FileNotFoundError as err:
        raise AssetError(
            f"photo manifest {path} not found; run `python -m prunelab.assets.setup_assets` or pass manifest="
        ) from err
    if not rows:
        raise AnnotationError(f"photo manifest {path} is empty; regenerate it with prunelab.study.photos")
    if "coco_objects" not in header:
        raise AnnotationError(
            f"photo manifest {path} has no 'coco_objects' column; regenerate it with prunelab.study.photos"
        )
    id_col = next((c for c in _PHOTO_ID_COLUMNS if c in header), None)
    if id_col is None:
        raise AnnotationError(
            f"photo manifest {path} has no id column (one of {_PHOTO_ID_COLUMNS}); regenerate it with prunelab.study.photos"
        )
    mapping = {}
    for k, r in enumerate(rows):
        iid = (r.get(id_col) or "").strip()
        if not iid:
            raise AnnotationError(f"photo manifest {path} row {k + 2} has an empty {id_col!r}; fix the manifest")
        if iid in mapping:
            raise AnnotationError(f"photo manifest {path} lists {iid!r} twice; fix the manifest")
        cell = r.get("coco_objects") or ""
        mapping[iid] = {p.strip() for p in cell.split(";") if p.strip()}
    return MappingGroundTruth(mapping, name="photos", source=str(path))


# ----------------------------------------------------------------------------------------------------------------
# COCO protocol (OPERA/PAI image choice, made reproducible)
# ----------------------------------------------------------------------------------------------------------------
_COCO_NAME = re.compile(r"(\d+)\.jpg$")


def coco_image_id(file_name: str) -> int:
    """``COCO_val2014_000000123456.jpg`` -> ``123456``."""
    m = _COCO_NAME.search(file_name)
    if not m:
        raise AnnotationError(
            f"{file_name!r} is not a COCO image file name (…_<digits>.jpg); point at the val2014 image folder"
        )
    return int(m.group(1))


def coco_protocol_ids(listing: str | Path | Iterable[str], n: int = 500, seed: int = 42) -> list[int]:
    """OPERA's CHAIR image choice, reproducibly: sorted listing -> ``Random(seed).shuffle`` -> first ``n`` ids.

    ``listing`` is the ``val2014`` folder or an iterable of its file names. Every entry must be a COCO ``.jpg``
    name (OPERA shuffles the raw listing, so extra files would change the sequence). Seeds: OPERA 42, PAI 927.
    """
    if isinstance(listing, (str, Path)):
        p = Path(listing)
        if not p.is_dir():
            raise AnnotationError(f"{p} is not a folder; pass the COCO val2014 image folder or a list of file names")
        names = [q.name for q in p.iterdir()]
    else:
        names = [str(x) for x in listing]
    names = sorted(names)
    for nm in names:
        coco_image_id(nm)
    if n > len(names):
        raise AnnotationError(f"asked for {n} images but the listing has {len(names)}; pass n <= {len(names)}")
    random.Random(seed).shuffle(names)
    return [coco_image_id(nm) for nm in names[:n]]


def listing_sha256(names: Iterable[str]) -> str:
    return hashlib.sha256("\n".join(sorted(names)).encode()).hexdigest()


def save_protocol_ids(
    path: str | Path, ids: list[int], *, seed: int, n: int, listing: Iterable[str] | None = None, note: str = ""
) -> Path:
    """Store the chosen image ids (with seed, n and a hash of the sorted listing) atomically as JSON."""
    payload = {"protocol": "coco-val2014-sorted-shuffle", "seed": seed, "n": n, "image_ids": list(map(int, ids))}
    if listing is not None:
        payload["listing_sha256"] = listing_sha256(listing)
    if note:
        payload["note"] = note
    with atomic_write(path, "w") as fh:
        json.dump(payload, fh, indent=1)
    return Path(path)


def load_protocol_ids(path: str | Path) -> list[int]:
    try:
        obj = json.loads(Path(path).read_text())
        return [int(i) for i in obj["image_ids"]]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise AnnotationError(f"{path} is not a protocol id file written by save_protocol_ids; regenerate it") from err

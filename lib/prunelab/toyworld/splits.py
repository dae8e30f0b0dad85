"""Fixed, seeded train / val / test splits of the toy world and the committed test-split manifest.

Scenes are never stored: scene ``i`` of split ``s`` is regenerated from ``(s, i, seed)``. The test split's ids,
ground-truth summary and checksums are committed under ``data/toyworld/`` so that results computed on
different machines can be checked to be about the same images:

* ``test_ids.csv``: id, index, complexity, context, number of objects, categories with counts.
* ``test_checksum.txt``: ``records_sha256`` (the scene records as canonical JSON: layout, boxes, counts,
  backgrounds; they depend on this code, NumPy's generators and the glyph extents, i.e. the font and Pillow's
  resize), ``images_sha256`` (the rendered pixels: raw RGB bytes of each 336x336 image, in id order) and the
  font / library versions that produced them. Pixels are hashed rather than PNG files because PNG bytes also
  depend on the zlib build, which says nothing about the images.

Complexity schedule: the test split alternates simple (even index) and complex (odd index), so every prefix
is balanced; val cycles simple / medium / complex; train draws 30% simple, 30% medium, 40% complex.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Iterator
from pathlib import Path

from prunelab.errors import AssetError, UnknownNameError
from prunelab.paths import atomic_write, data_dir
from prunelab.toyworld.font import font_sha256
from prunelab.toyworld.scenes import Scene, make_scene, render_array, scene_rng

SPLIT_SIZES = {"train": 6000, "val": 300, "test": 400}
DEFAULT_SEED = 0
TRAIN_MIX = (("simple", 0.3), ("medium", 0.3), ("complex", 0.4))


def _check(split: str) -> None:
    if split not in SPLIT_SIZES:
        raise UnknownNameError(f"unknown toy-world split {split!r}; choose one of {', '.join(SPLIT_SIZES)}")


def complexity_of(split: str, index: int, seed: int = DEFAULT_SEED) -> str:
    """The complexity level of scene ``index`` of ``split`` (see the module docstring)."""
    _check(split)
    if split == "test":
        return "simple" if index % 2 == 0 else "complex"
    if split == "val":
        return ("simple", "medium", "complex")[index % 3]
    u = scene_rng(split, index, seed, "complexity").random()
    acc = 0.0
    for level, p in TRAIN_MIX:
        acc += p
        if u < acc:
            return level
    return TRAIN_MIX[-1][0]


def get_scene(split: str, index: int, seed: int = DEFAULT_SEED) -> Scene:
    """Scene ``index`` of ``split`` (``0 <= index < SPLIT_SIZES[split]``)."""
    _check(split)
    if not 0 <= int(index) < SPLIT_SIZES[split]:
        raise UnknownNameError(
            f"index {index} is outside the {split} split (0..{SPLIT_SIZES[split] - 1}); pick a valid index"
        )
    return make_scene(split, int(index), seed, complexity_of(split, int(index), seed))


def load_split(name: str, seed: int = DEFAULT_SEED, limit: int | None = None, start: int = 0) -> Iterator[Scene]:
    """Iterate lazily over the scenes of split ``name`` (optionally ``start`` .. ``start + limit``)."""
    _check(name)
    stop = SPLIT_SIZES[name] if limit is None else min(SPLIT_SIZES[name], start + int(limit))
    for i in range(int(start), stop):
        yield get_scene(name, i, seed)


def split_ids(name: str) -> list[str]:
    _check(name)
    return [f"{name}-{i:05d}" for i in range(SPLIT_SIZES[name])]


def _record_bytes(scene: Scene) -> bytes:
    return json.dumps(scene.to_record(), sort_keys=True, separators=(",", ":")).encode()


def checksums(scenes, progress: bool = False) -> dict[str, str]:
    """``records_sha256`` and ``images_sha256`` over ``scenes`` in order."""
    rec, img = hashlib.sha256(), hashlib.sha256()
    it = scenes
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(scenes, desc="toy-world test split", unit="scene")
    for s in it:
        rec.update(_record_bytes(s))
        img.update(render_array(s).tobytes())
    return {"records_sha256": rec.hexdigest(), "images_sha256": img.hexdigest()}


def _versions() -> dict[str, str]:
    import numpy
    import PIL

    return {"font_sha256": font_sha256(), "pillow": PIL.__version__, "numpy": numpy.__version__}


def manifest_dir() -> Path:
    return data_dir() / "toyworld"


def write_test_manifest(directory: Path | None = None, seed: int = DEFAULT_SEED) -> dict[str, str]:
    """Write ``test_ids.csv`` and ``test_checksum.txt`` for the test split; return the checksum fields."""
    d = Path(directory) if directory is not None else manifest_dir()
    scenes = list(load_split("test", seed))
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["id", "index", "complexity", "context", "n_objects", "counts"])
    for s in scenes:
        counts = ";".join(f"{c}:{n}" for c, n in s.counts.items())
        w.writerow([s.id, s.index, s.complexity, s.context, len(s.objects), counts])
    sums = {
        "split": "test",
        "seed": str(seed),
        "n_scenes": str(len(scenes)),
        **checksums(scenes, progress=True),
        **_versions(),
    }
    with atomic_write(d / "test_ids.csv", "w") as fh:
        fh.write(buf.getvalue())
    with atomic_write(d / "test_checksum.txt", "w") as fh:
        fh.write("# prunelab toy-world test split; regenerate with prunelab.toyworld.splits.write_test_manifest()\n")
        for k, v in sums.items():
            fh.write(f"{k} {v}\n")
    return sums


def read_manifest(directory: Path | None = None) -> dict[str, str]:
    d = Path(directory) if directory is not None else manifest_dir()
    path = d / "test_checksum.txt"
    if not path.is_file():
        raise AssetError(
            f"{path} is missing; restore it from git or run prunelab.toyworld.splits.write_test_manifest()"
        )
    out = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith("#"):
            k, _, v = line.partition(" ")
            out[k] = v.strip()
    return out


def verify_test_split(directory: Path | None = None, images: bool = True, strict: bool = True) -> dict:
    """Regenerate the test split and compare it with the committed manifest.

    Returns ``{"records_ok", "images_ok", "expected", "actual"}``. With ``strict`` a mismatch raises
    :class:`AssetError` naming what differs and the likely cause (records: code or NumPy changed the scenes;
    images only: another emoji font or Pillow version draws them differently).
    """
    want = read_manifest(directory)
    seed = int(want.get("seed", DEFAULT_SEED))
    scenes = list(load_split("test", seed))
    if images:
        got = checksums(scenes)
    else:
        rec = hashlib.sha256()
        for s in scenes:
            rec.update(_record_bytes(s))
        got = {"records_sha256": rec.hexdigest()}
    got.update(_versions())
    ids_path = (Path(directory) if directory is not None else manifest_dir()) / "test_ids.csv"
    ids_ok = ids_path.is_file() and [r["id"] for r in csv.DictReader(ids_path.open())] == [s.id for s in scenes]
    res = {
        "records_ok": got["records_sha256"] == want.get("records_sha256") and ids_ok,
        "images_ok": (got["images_sha256"] == want.get("images_sha256")) if images else None,
        "expected": want,
        "actual": got,
    }
    if strict and not res["records_ok"]:
        raise AssetError(
            f"toy-world test scenes differ from {ids_path.parent}/test_checksum.txt (numpy {got['numpy']} vs "
            f"{want.get('numpy')}, Pillow {got['pillow']} vs {want.get('pillow')}, font "
            f"{'same' if got['font_sha256'] == want.get('font_sha256') else 'different'}); results are not comparable: "
            "use the committed code, fonts-noto-color-emoji 2.042 and the recorded versions, or rerun write_test_manifest() deliberately"
        )
    if strict and images and not res["images_ok"]:
        cause = (
            "another emoji font"
            if got["font_sha256"] != want.get("font_sha256")
            else f"Pillow {got['pillow']} vs {want.get('pillow')}"
        )
        raise AssetError(
            f"toy-world test images differ from the committed checksum although the scene records match ({cause}); "
            f"install fonts-noto-color-emoji 2.042 and Pillow {want.get('pillow')} to compare pixels exactly"
        )
    return res

"""The offline real-photo set: manifest integrity, loading, labels and error messages."""

from __future__ import annotations

import csv
import hashlib

import numpy as np
import pytest

from prunelab.errors import AssetError, UnknownNameError
from prunelab.study import photos


def _opencv_doc_or_skip():
    try:
        return photos.ensure_opencv_doc()
    except AssetError as err:
        pytest.skip(f"Debian opencv-doc unavailable: {err}")


def test_manifest_columns_and_values():
    with open(photos.manifest_path(), newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        rows = list(reader)
        assert reader.fieldnames == ["name", "source", "complexity", "coco_objects", "note", "sha256"]
    names = [r["name"] for r in rows]
    assert 20 <= len(rows) <= 40 and len(set(names)) == len(names)
    coco = set(photos.COCO_CATEGORIES)
    for r in rows:
        assert r["complexity"] in photos.COMPLEXITIES, r["name"]
        assert r["source"].split(":", 1)[0] in photos.SOURCES, r["name"]
        assert r["note"].strip(), r["name"]
        assert len(r["sha256"]) == 64
        for obj in filter(None, r["coco_objects"].split(";")):
            assert obj in coco, (r["name"], obj)
    # both complexity classes and a fair number of COCO-labelled photos (offline-assets.md §3: about 20)
    assert {r["complexity"] for r in rows} == {"simple", "complex"}
    assert sum(bool(r["coco_objects"]) for r in rows) >= 20


def test_coco_categories_are_the_80_official_names():
    assert len(photos.COCO_CATEGORIES) == 80 == len(set(photos.COCO_CATEGORIES))
    assert photos.COCO_CATEGORIES[0] == "person" and photos.COCO_CATEGORIES[-1] == "toothbrush"
    root = photos.opencv_doc_dir() / photos.OPENCV_EXAMPLES / "data" / "dnn" / "object_detection_classes_yolov3.txt"
    if root.is_file():  # the 80 names OpenCV ships, in the same order
        assert tuple(root.read_text().split("\n")[:80]) == photos.COCO_CATEGORIES


def test_list_photos_filters():
    allp = photos.list_photos()
    simple, complex_ = photos.list_photos("simple"), photos.list_photos("complex")
    assert sorted(simple + complex_) == sorted(allp) and not set(simple) & set(complex_)
    assert photos.list_photos(source="matplotlib") == ["grace_hopper"]
    assert {"astronaut", "chelsea", "coffee", "rocket", "motorcycle_left", "camera", "coins"} <= set(
        photos.list_photos(source="scikit-image")
    )
    with pytest.raises(UnknownNameError):
        photos.list_photos("medium")


def test_labels_known_answers():
    labels = photos.photo_labels()
    assert labels["coffee"] == ["cup", "spoon"]
    assert labels["chelsea"] == ["cat"]
    assert labels["rocket"] == []
    assert photos.photo_labels("messi5") == ["person", "sports ball"]
    assert photos.photo_info("chelsea").complexity == "simple"


def test_unknown_name_lists_known_ones():
    with pytest.raises(UnknownNameError) as exc:
        photos.load_photo("lena")
    msg = str(exc.value)
    assert "\n" not in msg and "'lena'" in msg and "astronaut" in msg and "grace_hopper" in msg


def test_bundled_photos_load_as_rgb_and_match_pinned_files():
    for name in photos.list_photos(source="scikit-image") + photos.list_photos(source="matplotlib"):
        path = photos.photo_path(name)
        assert hashlib.sha256(path.read_bytes()).hexdigest() == photos.photo_info(name).sha256, name
    img = photos.load_photo("astronaut")
    assert img.mode == "RGB" and img.size == (512, 512)


def test_greyscale_photo_loads_as_rgb_with_equal_channels():
    img = photos.load_photo("camera")  # stored as mode "L"
    a = np.asarray(img)
    assert img.mode == "RGB" and a.shape == (512, 512, 3)
    assert np.array_equal(a[..., 0], a[..., 1]) and np.array_equal(a[..., 1], a[..., 2])
    from PIL import Image

    assert np.array_equal(a[..., 0], np.asarray(Image.open(photos.photo_path("camera"))))


def test_opencv_doc_photos_load():
    _opencv_doc_or_skip()
    before = photos.ensure_opencv_doc()  # idempotent: same folder, no refetch
    assert before == photos.opencv_doc_dir()
    for name in photos.list_photos(source="opencv-doc"):
        path = photos.photo_path(name)
        assert hashlib.sha256(path.read_bytes()).hexdigest() == photos.photo_info(name).sha256, name
    dog = photos.load_photo("chicky_512")  # an RGBA file
    assert dog.mode == "RGB" and dog.size == (512, 512)


def test_missing_opencv_doc_says_how_to_fetch(tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNELAB_CACHE", str(tmp_path))
    with pytest.raises(AssetError) as exc:
        photos.photo_path("messi5", fetch=False)
    msg = str(exc.value)
    assert "\n" not in msg and "opencv-doc" in msg and "setup_assets" in msg and "apt-get" in msg


def test_failed_fetch_is_one_line_error(tmp_path, monkeypatch):
    from prunelab.assets import debian

    monkeypatch.setenv("PRUNELAB_CACHE", str(tmp_path))

    def boom(package, dest=None):
        raise AssetError(f"`apt-get download {package}` failed (no network); run `apt-get update` as root")

    monkeypatch.setattr(debian, "fetch_deb", boom)
    with pytest.raises(AssetError) as exc:
        photos.load_photo("messi5")
    msg = str(exc.value)
    assert "\n" not in msg and "apt-get download opencv-doc" in msg
    assert not (tmp_path / "debian" / "opencv-doc").exists()


def test_changed_file_warns(monkeypatch):
    info = photos.photo_info("coffee")
    fake = photos.Photo(info.name, info.source, info.complexity, info.coco_objects, info.note, "0" * 64)
    manifest = dict(photos.photo_manifest())
    manifest["coffee"] = fake
    monkeypatch.setattr(photos, "photo_manifest", lambda: manifest)
    with pytest.warns(UserWarning, match="labels may not match"):
        photos.load_photo("coffee")

"""prunelab.study.data: one interface over the image sets (selection rule, lazy loading, errors)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, strategies as st
from PIL import Image

from prunelab.errors import AssetError, ImageError, PrunelabError, UnknownNameError
from prunelab.study.data import ImageItem, load_image_set, select


def _items(k):
    return [ImageItem(id=f"im{i:03d}", source="t") for i in range(k)]


def test_select_all_sorted():
    items = list(reversed(_items(5)))
    assert [it.id for it in select(items, None, 0)] == [f"im{i:03d}" for i in range(5)]


@given(k=st.integers(1, 40), n1=st.integers(1, 40), n2=st.integers(1, 40), seed=st.integers(0, 10))
def test_select_nested_sorted_deterministic(k, n1, n2, seed):
    items = _items(k)
    a, b = sorted((n1, n2))
    small = [it.id for it in select(items, a, seed)]
    big = [it.id for it in select(items, b, seed)]
    assert len(small) == min(a, k) and len(big) == min(b, k)
    assert small == sorted(small) and len(set(small)) == len(small)
    assert set(small) <= set(big)  # nested subsets: a quick run is part of a bigger one
    assert small == [it.id for it in select(list(reversed(items)), a, seed)]  # input order does not matter


def test_select_seed_changes_subset():
    items = _items(30)
    assert [it.id for it in select(items, 5, 0)] != [it.id for it in select(items, 5, 1)]


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, "3"])
def test_select_bad_n(bad):
    with pytest.raises(UnknownNameError):
        select(_items(3), bad, 0)


@pytest.mark.parametrize("spec", ["", "imagenet", "photos:x", 3])
def test_unknown_spec(spec):
    with pytest.raises(UnknownNameError) as e:
        load_image_set(spec)
    assert "\n" not in str(e.value)


def _write_images(folder, names, size=(40, 30)):
    rng = np.random.default_rng(0)
    for nm in names:
        Image.fromarray((rng.random((size[1], size[0], 3)) * 255).astype("uint8")).save(folder / nm)


def test_coco_folder(tmp_path):
    names = ["COCO_val2014_000000000042.jpg", "COCO_val2014_000000000007.jpg", "COCO_val2014_000000391895.png"]
    _write_images(tmp_path, names)
    (tmp_path / "notes.txt").write_text("not an image")
    items = load_image_set(f"coco:{tmp_path}")
    assert [it.id for it in items] == sorted(p.rsplit(".", 1)[0] for p in names)
    assert [it.meta["coco_id"] for it in items] == [7, 42, 391895]
    assert all(it.source == f"coco:{tmp_path}" for it in items)
    assert items[0]._image is None  # lazy
    im = items[0].image
    assert im.mode == "RGB" and im.size == (40, 30)
    items[0].release()
    assert items[0]._image is None
    two = load_image_set(f"coco:{tmp_path}", n=2, seed=3)
    assert len(two) == 2 and {it.id for it in two} <= {it.id for it in items}


def test_coco_errors(tmp_path):
    with pytest.raises(UnknownNameError):
        load_image_set("coco:")
    with pytest.raises(AssetError, match="does not exist"):
        load_image_set(f"coco:{tmp_path / 'missing'}")
    with pytest.raises(AssetError, match="no .jpg"):
        load_image_set(f"coco:{tmp_path}")


def test_corrupt_image_is_one_line_error(tmp_path):
    (tmp_path / "COCO_val2014_000000000001.jpg").write_bytes(b"not a jpeg at all")
    (item,) = load_image_set(f"coco:{tmp_path}")
    with pytest.raises(ImageError) as e:
        _ = item.image
    assert "\n" not in str(e.value) and "replace" in str(e.value)


def test_item_without_loader():
    with pytest.raises(ImageError):
        _ = ImageItem(id="x", source="t").image


def test_photos_set():
    try:
        items = load_image_set("photos")
    except PrunelabError as err:  # the photo assets (opencv-doc) are not unpacked on this machine
        pytest.skip(f"photos unavailable: {err}")
    from prunelab.study import photos

    assert [it.id for it in items] == sorted(photos.list_photos())
    assert {it.complexity for it in items} <= {"simple", "complex"}
    by_id = {it.id: it for it in items}
    assert by_id["chelsea"].labels == ["cat"] and by_id["chelsea"].complexity == "simple"
    sub = load_image_set("photos", n=4, seed=0)
    assert len(sub) == 4 and {it.id for it in sub} <= set(by_id)
    assert sub[0].image.mode == "RGB"


def test_toyworld_set():
    try:
        from prunelab.toyworld import splits
    except ImportError:
        pytest.skip("prunelab.toyworld.splits is not available yet")
    try:
        items = load_image_set("toyworld:test", n=3, seed=0)
    except PrunelabError as err:
        pytest.skip(f"toy-world assets unavailable: {err}")
    assert len(items) == 3 and [it.id for it in items] == sorted(it.id for it in items)
    assert all(it.source == "toyworld:test" and it.id in splits.split_ids("test") for it in items)
    for it in items:
        scene = splits.get_scene("test", it.meta["index"])
        assert it.labels == scene.categories and it.complexity == scene.complexity
    try:
        im = items[0].image
    except PrunelabError as err:  # rendering needs the emoji font
        pytest.skip(f"emoji font unavailable: {err}")
    assert im.size == (336, 336) and im.mode == "RGB"


def test_toyworld_unknown_split():
    try:
        from prunelab.toyworld import splits  # noqa: F401
    except ImportError:
        pytest.skip("prunelab.toyworld.splits is not available yet")
    with pytest.raises(UnknownNameError):
        load_image_set("toyworld:nope")

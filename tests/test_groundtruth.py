"""Ground-truth sources: COCO (synthetic instances/captions fixtures), plain mappings, photos manifest, toy world,
and the reproducible COCO image-choice protocol."""

from __future__ import annotations

import json
import random

import pytest

from prunelab.errors import AssetError
from prunelab.eval.groundtruth import (
    AnnotationError,
    CocoGroundTruth,
    MappingGroundTruth,
    MissingGroundTruthError,
    as_ground_truth,
    coco_image_id,
    coco_protocol_ids,
    load_protocol_ids,
    photos_ground_truth,
    save_protocol_ids,
    toyworld_ground_truth,
)

# Real COCO 2014 category ids for the names used here.
CATEGORIES = [
    {"id": 1, "name": "person"},
    {"id": 18, "name": "dog"},
    {"id": 19, "name": "horse"},
    {"id": 62, "name": "chair"},
    {"id": 63, "name": "couch"},
    {"id": 75, "name": "remote"},
]


@pytest.fixture(scope="module")
def parser(chair_parser):
    return chair_parser


@pytest.fixture
def coco_dir(tmp_path):
    images = [{"id": i, "file_name": f"COCO_val2014_{i:012d}.jpg"} for i in (1, 2, 3)]
    instances = {
        "images": images,
        "categories": CATEGORIES,
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 18},
            {"id": 11, "image_id": 1, "category_id": 63},
            {"id": 12, "image_id": 1, "category_id": 18},  # second dog: sets deduplicate
            {"id": 13, "image_id": 2, "category_id": 1},
        ],
    }  # image 3 has no instance annotation
    captions = {
        "images": images,
        "annotations": [
            {"id": 20, "image_id": 1, "caption": "A puppy sleeping on a sofa next to a remote."},
            {"id": 21, "image_id": 1, "caption": "A dog on a couch."},
            {"id": 22, "image_id": 2, "caption": "A man riding a horse."},
            {"id": 23, "image_id": 3, "caption": "An empty room with a chair."},
            {"id": 24, "image_id": 3, "caption": "A room with nothing in it."},
        ],
    }
    (tmp_path / "instances_val2014.json").write_text(json.dumps(instances))
    (tmp_path / "captions_val2014.json").write_text(json.dumps(captions))
    return tmp_path


def test_coco_union_of_instances_and_captions(coco_dir, parser):
    gt = CocoGroundTruth.from_dir(coco_dir, parser=parser)
    assert gt.objects(1) == {"dog", "couch", "remote"}
    assert gt.objects(2) == {"person", "horse"}
    assert gt.objects(3) == {"chair"}
    assert gt.from_instances[3] == frozenset() and gt.from_captions[3] == {"chair"}
    assert gt.from_instances[1] == {"dog", "couch"}
    assert sorted(gt.image_ids()) == [1, 2, 3]
    assert gt.objects("2") == gt.objects(2)  # JSON string ids tolerated
    with pytest.raises(MissingGroundTruthError) as e:
        gt.objects(4)
    assert "\n" not in str(e.value) and "4" in str(e.value)
    assert gt.describe()["n_images"] == 3


def test_coco_restricted_ids_give_same_sets(coco_dir, parser):
    full = CocoGroundTruth.from_dir(coco_dir, parser=parser)
    sub = CocoGroundTruth.from_dir(coco_dir, parser=parser, image_ids=[2, 3])
    assert sorted(sub.image_ids()) == [2, 3]
    assert all(sub.objects(i) == full.objects(i) for i in (2, 3))


def test_coco_ground_truth_drives_chair(coco_dir, parser):
    from prunelab.eval.chair import evaluate_chair

    gt = CocoGroundTruth.from_dir(coco_dir, parser=parser)
    res = evaluate_chair({1: "A dog on a couch with a cat.", 3: "A chair."}, gt, parser=parser)
    # mentions: dog, couch, cat | chair -> 1 hallucinated of 4; recall (2 + 1) / (3 + 1)
    assert res.chair_i == pytest.approx(1 / 4) and res.chair_s == pytest.approx(1 / 2)
    assert res.recall == pytest.approx(3 / 4)
    assert res.config["ground_truth"]["name"] == "coco2014"


@pytest.mark.parametrize(
    "mutate,match",
    [
        (lambda d: "{not json", "not valid JSON"),
        (lambda d: json.dumps({"images": []}), "no 'annotations' list"),
        (lambda d: json.dumps({**d, "categories": []}), "no 'categories' list"),
        (lambda d: json.dumps({**d, "annotations": [{"image_id": 1}]}), "lacks 'image_id'/'category_id'"),
        (lambda d: json.dumps({**d, "annotations": [{"image_id": 1, "category_id": 999}]}), "unknown category_id"),
        (lambda d: json.dumps({**d, "categories": [{"id": 1, "name": "sofa-bed"}]}), "unknown name"),
    ],
)
def test_malformed_instances(coco_dir, parser, mutate, match):
    p = coco_dir / "instances_val2014.json"
    p.write_text(mutate(json.loads(p.read_text())))
    with pytest.raises(AnnotationError, match=match) as e:
        CocoGroundTruth.from_dir(coco_dir, parser=parser)
    assert "\n" not in str(e.value)


def test_malformed_captions_and_missing_files(coco_dir, parser):
    p = coco_dir / "captions_val2014.json"
    d = json.loads(p.read_text())
    d["annotations"][0] = {"image_id": 1, "caption": None}
    p.write_text(json.dumps(d))
    with pytest.raises(AnnotationError, match="not text"):
        CocoGroundTruth.from_dir(coco_dir, parser=parser)
    with pytest.raises(AnnotationError, match="not found"):
        CocoGroundTruth.from_dir(coco_dir / "nope", parser=parser)


def test_mapping_ground_truth_validation():
    gt = as_ground_truth({"a": ["dog", "cat"], "b": set()})
    assert isinstance(gt, MappingGroundTruth) and gt.objects("a") == {"dog", "cat"} and gt.objects("b") == set()
    assert "a" in gt and "z" not in gt
    with pytest.raises(AnnotationError, match="not COCO category names"):
        MappingGroundTruth({"a": ["doggo"]})
    with pytest.raises(AnnotationError, match="collection"):
        MappingGroundTruth({"a": "dog"})
    with pytest.raises(AnnotationError, match="mapping"):
        MappingGroundTruth([("a", {"dog"})])


def test_photos_manifest(tmp_path):
    m = tmp_path / "manifest.csv"
    m.write_text(
        "image_id,source,complexity,coco_objects\n"
        "fruit,opencv,simple,apple;banana; orange\n"
        "street,opencv,complex,car;person;traffic light\n"
        "sky,opencv,simple,\n"
    )
    gt = photos_ground_truth(m)
    assert gt.objects("fruit") == {"apple", "banana", "orange"}
    assert gt.objects("street") == {"car", "person", "traffic light"}
    assert gt.objects("sky") == set()
    m.write_text("image_id,coco_objects\nx,unicorn\n")
    with pytest.raises(AnnotationError, match="unicorn"):
        photos_ground_truth(m)
    m.write_text("image_id,objects\nx,dog\n")
    with pytest.raises(AnnotationError, match="coco_objects"):
        photos_ground_truth(m)
    m.write_text("image_id,coco_objects\nx,dog\nx,cat\n")
    with pytest.raises(AnnotationError, match="twice"):
        photos_ground_truth(m)
    with pytest.raises(AssetError, match="not found"):
        photos_ground_truth(tmp_path / "none.csv")


def test_toyworld_labels_and_lazy_adapter():
    gt = toyworld_ground_truth({0: ["dog", "frisbee"], 1: ["person"]})
    assert gt.objects(0) == {"dog", "frisbee"} and gt.name == "toyworld"
    import importlib.util

    if importlib.util.find_spec("prunelab.toyworld") is None:
        with pytest.raises(AssetError, match="toyworld"):
            toyworld_ground_truth()
        return
    from prunelab.toyworld import load_split

    scenes = list(load_split("test", limit=3))
    gt = toyworld_ground_truth(split="test", limit=3)
    assert sorted(gt.image_ids()) == sorted(s.id for s in scenes)
    assert all(gt.objects(s.id) == set(s.categories) for s in scenes)
    with pytest.raises(AnnotationError, match="no .id/.categories"):
        toyworld_ground_truth(scenes=[object()])


def test_photos_manifest_in_repo():
    from prunelab.paths import data_dir

    if not (data_dir() / "photos" / "manifest.csv").exists():
        pytest.skip("data/photos/manifest.csv not written yet")
    gt = photos_ground_truth()
    assert len(gt.image_ids()) > 0 and all(isinstance(gt.objects(i), frozenset) for i in gt.image_ids())


def test_groundtruth_module_imports_no_source_modules():
    import subprocess
    import sys

    code = (
        "import sys, prunelab.eval.groundtruth, prunelab.eval.chair, prunelab.eval.pope; "
        "print(any(m.startswith(('prunelab.toyworld', 'prunelab.study.photos', 'nltk')) for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"


# ---------------------------------------------------------------------------------------------------------------
# COCO protocol
# ---------------------------------------------------------------------------------------------------------------
def _listing(n=50):
    return [f"COCO_val2014_{i * 7919 % 581929:012d}.jpg" for i in range(1, n + 1)]


def test_protocol_sorted_then_seeded_shuffle():
    names = _listing()
    expected = sorted(names)
    random.seed(42)
    random.shuffle(expected)  # OPERA's call sequence, on the sorted listing
    want = [coco_image_id(n) for n in expected[:10]]
    shuffled_input = list(reversed(names))
    assert coco_protocol_ids(names, n=10, seed=42) == want
    assert coco_protocol_ids(shuffled_input, n=10, seed=42) == want  # listing order does not matter
    assert coco_protocol_ids(names, n=10, seed=927) != want
    assert len(set(coco_protocol_ids(names, n=50))) == 50


def test_protocol_dir_and_save(tmp_path):
    d = tmp_path / "val2014"
    d.mkdir()
    names = _listing(12)
    for n in names:
        (d / n).write_bytes(b"")
    ids = coco_protocol_ids(d, n=5, seed=42)
    assert ids == coco_protocol_ids(names, n=5, seed=42)
    out = save_protocol_ids(tmp_path / "ids.json", ids, seed=42, n=5, listing=names)
    assert load_protocol_ids(out) == ids
    assert json.loads(out.read_text())["seed"] == 42
    (d / "notes.txt").write_text("x")
    with pytest.raises(AnnotationError, match="not a COCO image file name"):
        coco_protocol_ids(d, n=5)
    with pytest.raises(AnnotationError, match="asked for"):
        coco_protocol_ids(names, n=100)
    (tmp_path / "bad.json").write_text("[]")
    with pytest.raises(AnnotationError):
        load_protocol_ids(tmp_path / "bad.json")


def test_coco_image_id():
    assert coco_image_id("COCO_val2014_000000123456.jpg") == 123456
    with pytest.raises(AnnotationError):
        coco_image_id("image.png")

"""prunelab.study.runner: the experiment loop (row content, known values, caching, resume, errors)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from prunelab.errors import BudgetError, CapabilityError, UnknownNameError
from prunelab.eval.metrics import attention_entropy, erank
from prunelab.methods import get_pruner, prune
from prunelab.methods.adaptive import calibrate_erank
from prunelab.methods.testing import make_context
from prunelab.models.encoders import PixelPatchEncoder
from prunelab.study.data import ImageItem
from prunelab.study.runner import (
    VISION_COLUMNS,
    erank_stats_from,
    image_stats,
    method_stats,
    methods_for,
    prune_image,
    random_subset_erank,
    resolve_methods,
    run_vision,
    vision_methods,
)


def _items(k=3, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(k):
        a = (rng.random((60, 80, 3)) * 255).astype("uint8")
        a[10:30, 20:50] = [250, 20, 20]  # a salient block so attention is not uniform
        out.append(
            ImageItem(
                id=f"img{i}",
                source="unit",
                complexity="simple" if i % 2 else "complex",
                loader=(lambda a=a: Image.fromarray(a)),
            )
        )
    return out


class CountingEncoder(PixelPatchEncoder):
    """The pixel encoder, counting how many images it encodes (to check caching and resume)."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.calls = 0

    def __call__(self, images, ids):
        self.calls += len(images)
        return super().__call__(images, ids)


ENC = dict(grid=8, patch=6, pool=2)
METHODS = ["FasterVLM", "DivPrune", "AgilePruner"]


def test_rows_shape_and_columns(tmp_path):
    df = run_vision(_items(3), METHODS, [8, 16], encoder=PixelPatchEncoder(**ENC), cache_dir=tmp_path, progress=False)
    assert list(df.columns) == VISION_COLUMNS
    assert len(df) == 3 * 3 * 2
    assert set(df["method"]) == set(METHODS) and set(df["budget"]) == {8, 16}
    assert (df["n_tokens"] == 64).all()
    assert (df["n_kept"] == df["budget"]).all()  # these three keep exactly T
    for kept, t in zip(df["kept_indices"], df["budget"]):
        assert len(kept) == t and len(set(kept)) == t and all(0 <= i < 64 for i in kept)
    assert df.attrs["erank_stats"]["n"] == 3
    assert ((df["attention_mass_kept"] > 0) & (df["attention_mass_kept"] <= 1 + 1e-9)).all()
    assert (df["select_time_s"] >= 0).all()


def test_values_match_library_definitions(tmp_path):
    """Every number equals what prune()/erank/attention_entropy give for the same context."""
    items = _items(2)
    enc = PixelPatchEncoder(**ENC)
    df = run_vision(items, METHODS, [8], encoder=enc, cache_dir=tmp_path, progress=False)
    ctxs = enc([it.image for it in items], [it.id for it in items])
    stats = calibrate_erank(ctxs)
    assert df.attrs["erank_stats"] == pytest.approx(stats)
    for ctx in ctxs:
        ctx.erank_stats = stats
        for m in METHODS:
            row = df[(df.image_id == ctx.image_id) & (df.method == m)].iloc[0]
            res = prune(ctx, m, 8)
            assert row["kept_indices"] == res.indices.tolist()
            assert row["erank_kept_vision"] == pytest.approx(res.stats["erank_kept_vision"], rel=1e-12)
            assert row["erank_kept_projected"] == pytest.approx(res.stats["erank_kept_projected"], rel=1e-12)
            assert row["attention_mass_kept"] == pytest.approx(res.stats["attention_mass_kept"], rel=1e-12)
            assert row["erank_full_vision"] == pytest.approx(float(erank(ctx.features)), rel=1e-12)
            assert row["attention_entropy"] == pytest.approx(float(attention_entropy(ctx.cls_attention)), rel=1e-12)


def test_fastervlm_keeps_top_attention_mass(tmp_path):
    """FasterVLM keeps the T highest-attention patches, so no method keeps more attention mass at equal T."""
    df = run_vision(_items(3), METHODS, [8], encoder=PixelPatchEncoder(**ENC), cache_dir=tmp_path, progress=False)
    piv = df.pivot(index="image_id", columns="method", values="attention_mass_kept")
    assert (piv["FasterVLM"] >= piv["DivPrune"] - 1e-12).all()
    assert (piv["FasterVLM"] >= piv["AgilePruner"] - 1e-12).all()


def test_erank_stats_from_matches_calibrate():
    ctxs = [make_context(n=25, c=8, seed=s) for s in range(4)]
    vals = [image_stats(c)["erank_full_vision"] for c in ctxs]
    assert erank_stats_from(vals) == pytest.approx(calibrate_erank(ctxs))


def test_image_stats_known_values():
    # Orthogonal equal-norm rows: erank = number of rows; uniform attention: entropy = log N, normalised 1.
    ctx = make_context(n=4, c=4, seed=0, d=None)
    ctx.features = torch.eye(4)
    ctx.cls_attention = torch.full((4,), 0.25)
    st = image_stats(ctx)
    assert st["erank_full_vision"] == pytest.approx(4.0)
    assert np.isnan(st["erank_full_projected"])
    assert st["attention_entropy"] == pytest.approx(np.log(4))
    assert st["attention_entropy_norm"] == pytest.approx(1.0)


def test_random_subset_erank_known_and_deterministic():
    ctx = make_context(n=9, c=9, seed=0, d=None, image_id="eye")
    ctx.features = torch.eye(9)  # any subset of k orthonormal rows has erank k
    r = random_subset_erank(ctx, 4, n_random=5, seed=0)
    assert r["erank_random_vision"] == pytest.approx(4.0)
    ctx2 = make_context(n=36, c=16, seed=1)
    a = random_subset_erank(ctx2, 10, 6, seed=3)
    b = random_subset_erank(ctx2, 10, 6, seed=3)
    c = random_subset_erank(ctx2, 10, 6, seed=4)
    assert a == b and a != c
    full = random_subset_erank(ctx2, 36, 3, seed=0)  # a "subset" of all tokens is the full set
    assert full["erank_random_vision"] == pytest.approx(float(erank(ctx2.features)))


def test_prune_image_random_shared_across_methods():
    ctx = make_context(n=36, c=16, seed=2, erank_stats={"mean": 10.0, "min": 8.0, "max": 12.0})
    rows = prune_image(ctx, resolve_methods(["FasterVLM", "DivPrune"]), [6], seed=0, n_random=4)
    assert rows[0]["erank_random_vision"] == rows[1]["erank_random_vision"]  # same size, same draws
    assert json.loads(rows[0]["method_stats"]) == {} or isinstance(json.loads(rows[0]["method_stats"]), dict)


def test_cache_hit_and_resume(tmp_path):
    items = _items(3)
    enc = CountingEncoder(**ENC)
    df1 = run_vision(items, METHODS, [8], encoder=enc, cache_dir=tmp_path, progress=False)
    first = enc.calls
    assert first == 3  # small sets keep their contexts between the two passes
    df2 = run_vision(_items(3), METHODS, [8], encoder=enc, cache_dir=tmp_path, progress=False)
    assert enc.calls == first  # everything read back from disk
    pd.testing.assert_frame_equal(df1, df2)
    # Resume: drop one image's rows; only that image is encoded again.
    (run_dir,) = tmp_path.glob("v*/rows/*")
    per_image = sorted(run_dir.glob("*.json"))
    assert len(per_image) == 3  # one entry per image, nothing else
    per_image[0].unlink()
    df3 = run_vision(_items(3), METHODS, [8], encoder=enc, cache_dir=tmp_path, progress=False)
    assert enc.calls == first + 1
    timing = [c for c in df1.columns if c.endswith("_time_s")]  # re-measured for the re-run image
    assert timing
    pd.testing.assert_frame_equal(df1.drop(columns=timing), df3.drop(columns=timing))
    # A different budget is a different run.
    run_vision(_items(3), METHODS, [4], encoder=enc, cache_dir=tmp_path, progress=False)
    assert enc.calls == first + 1 + 3


def test_no_cache_and_refresh(tmp_path):
    enc = CountingEncoder(**ENC)
    run_vision(_items(2), ["FasterVLM"], [8], encoder=enc, cache_dir=False, progress=False)
    run_vision(_items(2), ["FasterVLM"], [8], encoder=enc, cache_dir=False, progress=False)
    assert enc.calls == 4
    run_vision(_items(2), ["FasterVLM"], [8], encoder=enc, cache_dir=tmp_path, progress=False)
    run_vision(_items(2), ["FasterVLM"], [8], encoder=enc, cache_dir=tmp_path, progress=False, refresh=True)
    assert enc.calls == 8


def test_large_set_reencodes_instead_of_keeping(tmp_path):
    enc = CountingEncoder(**ENC)
    run_vision(
        _items(3), ["FasterVLM"], [8], encoder=enc, cache_dir=tmp_path, progress=False, keep_in_memory=1, batch_size=2
    )
    assert enc.calls == 6  # calibration pass + pruning pass


def test_given_erank_stats_are_used(tmp_path):
    stats = {"mean": 5.0, "min": 1.0, "max": 9.0, "std": 1.0, "n": 100}
    df = run_vision(
        _items(2),
        ["AgilePruner"],
        [8],
        encoder=PixelPatchEncoder(**ENC),
        cache_dir=tmp_path,
        erank_stats=stats,
        progress=False,
    )
    assert df.attrs["erank_stats"] == stats
    rho = method_stats(df)["stat_erank_avg"]
    assert (rho == 5.0).all()


def test_method_labels_and_params():
    specs = resolve_methods(
        [
            "FasterVLM",
            ("AgilePruner", {"tau_max": 0.2}),
            ("mine", "DivPrune", {"features": "vision"}),
            get_pruner("FPS"),
        ]
    )
    assert [s.label for s in specs] == ["FasterVLM", "AgilePruner(tau_max=0.2)", "mine", "FPS"]
    with pytest.raises(UnknownNameError):
        resolve_methods(["FasterVLM", "FasterVLM"])
    with pytest.raises(UnknownNameError):
        resolve_methods([42])
    with pytest.raises(UnknownNameError):
        resolve_methods(["NoSuchMethod"])


def test_methods_for_without_projector():
    specs = resolve_methods(methods_for(["DivPrune", "FasterVLM"], projected=False))
    assert specs[0].pruner.features == "vision" and specs[0].label == "DivPrune(features=vision)"
    assert resolve_methods(methods_for(["DivPrune"], projected=True))[0].label == "DivPrune"


def test_vision_methods_exclude_text_conditioned():
    names = vision_methods()
    assert "FasterVLM" in names and "DivPrune" in names
    assert all(get_pruner(n).family != "text" and get_pruner(n).stage == "pre_llm" for n in names)


def test_errors_are_one_line(tmp_path):
    with pytest.raises(BudgetError) as e:
        run_vision(
            _items(1), ["FasterVLM"], [1000], encoder=PixelPatchEncoder(**ENC), cache_dir=tmp_path, progress=False
        )
    assert "\n" not in str(e.value)
    with pytest.raises(CapabilityError) as e:  # PruMerge needs keys/queries the pixel encoder does not give
        run_vision(_items(1), ["PruMerge"], [8], encoder=PixelPatchEncoder(**ENC), cache_dir=tmp_path, progress=False)
    assert "PruMerge" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(UnknownNameError):
        run_vision(_items(1), [], [8], encoder=PixelPatchEncoder(**ENC), cache_dir=tmp_path, progress=False)
    with pytest.raises(UnknownNameError):
        run_vision([], ["FasterVLM"], [8], encoder=PixelPatchEncoder(**ENC), cache_dir=tmp_path, progress=False)


@pytest.mark.slow
def test_dinov2_encoder_on_two_photos(tmp_path):
    """The default encoder on real photos (needs the converted DINOv2 tower and the photo assets)."""
    from prunelab.errors import PrunelabError
    from prunelab.models.encoders import VisionEncoder

    try:
        from prunelab.study.data import load_image_set

        items = load_image_set("photos", n=2, seed=0)
        _ = items[0].image
        enc = VisionEncoder(batch_size=2)
        _ = enc.tower
    except PrunelabError as err:
        pytest.skip(f"assets unavailable: {err}")
    df = run_vision(
        items, ["FasterVLM", "VisionZip", "PruMerge+"], [64], encoder=enc, cache_dir=tmp_path, progress=False
    )
    assert (df["n_tokens"] == 576).all()
    assert df["erank_full_vision"].between(1, 384).all()
    assert (df["erank_kept_vision"] <= df["erank_full_vision"] + 1e-6).all()


def test_glance_table_means_per_method_and_budget():
    from prunelab.study.runner import glance_table

    df = pd.DataFrame(
        {
            "method": ["A", "A", "B", "B"],
            "family": ["attention", "attention", "diversity", "diversity"],
            "budget": [4, 4, 4, 4],
            "image_id": ["x", "y", "x", "y"],
            "n_kept": [4, 4, 4, 4],
            "erank_kept_vision": [2.0, 3.0, 4.0, 3.0],
            "erank_full_vision": [4.0, 6.0, 4.0, 6.0],
            "erank_random_vision": [2.0, 2.0, 2.0, 3.0],
            "attention_mass_kept": [0.5, 0.7, 0.2, 0.4],
            "select_time_s": [0.001, 0.003, 0.01, 0.02],
        }
    )
    t = glance_table(df).set_index("method")
    assert list(t.index) == ["A", "B"]
    assert t.loc["A", "kept / all"] == pytest.approx(0.5) and t.loc["B", "kept / all"] == pytest.approx(0.75)
    assert t.loc["B", "kept / random"] == pytest.approx(1.5) and t.loc["A", "select ms"] == pytest.approx(2.0)
    assert t.loc["A", "attention kept"] == pytest.approx(0.6)


def test_pick_images_alternates_labels_and_is_deterministic(tmp_path):
    from prunelab.study.runner import pick_images, save_table

    df = pd.DataFrame(
        {"image_id": list("abcdef"), "complexity": ["simple"] * 4 + ["complex"] * 2, "kept_indices": [[1, 2]] * 6}
    )
    got = pick_images(df, 4, seed=1)
    assert got == pick_images(df, 4, seed=1) and len(set(got)) == 4
    labels = df.set_index("image_id").loc[got, "complexity"].tolist()
    assert labels[:2] == ["simple", "complex"] and labels.count("complex") == 2
    assert len(pick_images(df, 10)) == 6
    p = save_table(df, tmp_path / "res", "t")
    back = pd.read_csv(p)
    assert back["kept_indices"].iloc[0] == "[1, 2]" and len(back) == 6


def test_cpu_threads_restores_the_setting():
    from prunelab.device import cpu_threads

    before = torch.get_num_threads()
    with cpu_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    try:
        with cpu_threads(1):
            raise RuntimeError("x")
    except RuntimeError:
        pass
    assert torch.get_num_threads() == before

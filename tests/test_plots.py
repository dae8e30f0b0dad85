"""Plot helpers: labels, kept masks, overlay pixels, figure shapes (the study's one theme)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from prunelab.study import plots  # noqa: E402


def test_short_label():
    assert plots.short_label("DivPrune(features=vision)") == "DivPrune (vision)"
    assert plots.short_label("AgilePruner(tau_max=0.2,fill=relax)") == "AgilePruner (0.2, relax)"
    assert plots.short_label("FasterVLM") == "FasterVLM"


def test_family_colours_are_the_colour_blind_palette_in_family_order():
    import seaborn as sns

    from prunelab.methods import FAMILY_ORDER

    pal = plots.family_palette()
    assert list(pal) == list(FAMILY_ORDER)
    cb = sns.color_palette("colorblind", 10)
    assert pal["attention"] == cb[0] and pal["base"] == cb[6] and pal["in_llm"] == cb[7]
    fams = {"FasterVLM": "attention", "PruMerge+": "attention", "FastV": "in_llm"}
    mp = plots.method_palette(list(fams), fams)
    assert mp["FasterVLM"] == sns.light_palette(cb[0], n_colors=4, reverse=True)[0]
    assert mp["FastV"] == sns.light_palette(cb[7], n_colors=3, reverse=True)[0]


def test_kept_mask_and_overlay_pixels():
    m = plots.kept_mask([0, 5, -1], grid=(2, 3))
    assert m.tolist() == [[True, False, False], [False, False, True]]
    with pytest.raises(ValueError, match="outside"):
        plots.kept_mask([6], grid=(2, 3))
    img = np.full((60, 90, 3), 0.2, dtype=np.float32)[:60, :60]
    out = plots.overlay_array(img, [0], grid=(2, 2), dim=0.3, grey=0.8, grid_alpha=0.0, edge=None)
    assert np.allclose(out[5, 5], 0.2)  # kept patch untouched
    assert np.allclose(out[45, 45], 0.3 * 0.2 + 0.7 * 0.8)  # pruned patch blended towards grey


def _table():
    rng = np.random.default_rng(0)
    rows = []
    for iid, cx in (("a", "simple"), ("b", "complex")):
        for m, fam in (("FasterVLM", "attention"), ("DivPrune(features=vision)", "diversity")):
            for b in (4, 8):
                rows.append(
                    {
                        "image_id": iid,
                        "complexity": cx,
                        "method": m,
                        "family": fam,
                        "budget": b,
                        "n_tokens": 16,
                        "kept_indices": list(range(b)),
                        "erank_kept_vision": rng.uniform(2, 4),
                        "erank_random_vision": rng.uniform(2, 4),
                        "erank_full_vision": 9.0,
                        "attention_entropy_norm": 0.5 if cx == "simple" else 0.9,
                        "attention_entropy": 1.0,
                        "erank_full_projected": np.nan,
                    }
                )
    return pd.DataFrame(rows)


def test_figures_have_one_panel_per_budget_and_method_rows():
    plots.set_theme()
    df = _table()
    assert plots.method_order(df) == ["FasterVLM", "DivPrune(features=vision)"]
    fig = plots.erank_points(df)
    axes = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in axes] == ["T = 4", "T = 8"]
    assert [t.get_text() for t in axes[0].get_yticklabels()] == ["FasterVLM", "DivPrune (vision)"]
    img = Image.new("RGB", (32, 32), (200, 10, 10))
    grid = plots.overlay_grid(df, {"a": img, "b": img}, budget=4, grid=(4, 4))
    assert len(grid.axes) == 2 * 3  # 2 images x (original + 2 methods)
    with pytest.raises(ValueError, match="no rows at budget"):
        plots.overlay_grid(df, {"a": img}, budget=99)
    assert len(plots.entropy_strip(df).axes[0].patches) == 2

"""prunelab.study.widgets.tau_explorer: one precomputed view per image x τ x budget, switched by front-end links (so the
static book page works), the right view content, and one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from prunelab.study import widgets

TAUS = {"FasterVLM": 0.0, "AgilePruner(tau_max=0.05)": 0.05, "AgilePruner": 0.1}


def _vision(ids=("a", "b"), budgets=(4, 8)):
    rows = []
    for iid in ids:
        for m, t in TAUS.items():
            for b in budgets:
                rows.append(
                    {
                        "image_id": iid,
                        "method": m,
                        "budget": b,
                        "kept_indices": list(range(b)),
                        "erank_kept_vision": 3.0 + 10 * t + b,
                        "attention_mass_kept": 0.5,
                        "method_stats": json.dumps(
                            {"n_removed_by_threshold": int(100 * t), "n_filled": 2} if t else {}
                        ),
                    }
                )
    return pd.DataFrame(rows)


def _images(ids=("a", "b")):
    return {
        i: Image.fromarray((np.random.default_rng(k).random((48, 48, 3)) * 255).astype(np.uint8))
        for k, i in enumerate(ids)
    }


def test_structure_and_links():
    import ipywidgets as w

    box = widgets.tau_explorer(_vision(), _images(), TAUS, grid=(4, 4), size=64)
    d_img, s_tau, s_bud = box.children[0].children
    assert isinstance(s_tau, w.SelectionSlider) and isinstance(s_bud, w.SelectionSlider)
    assert list(s_tau.options) == ["0", "0.05", "0.1"] and list(s_bud.options) == ["4", "8"]
    top = box.children[1]
    assert (
        len(top.children) == 2 and len(top.children[0].children) == 3 and len(top.children[0].children[0].children) == 2
    )
    links = box._prunelab_links
    assert len(links) == 2 * 3 + 2 + 1  # one per budget stack, one per τ stack, one for the image stack
    sources = {(lk.source[0].description, lk.source[1]) for lk in links}
    assert sources == {("image", "index"), ("τ_max", "index"), ("budget T", "index")}


def test_views_show_the_selected_tau_and_budget():
    pope = pd.DataFrame(
        {"image_id": ["a"] * 4, "method": ["AgilePruner"] * 4, "budget": [8] * 4, "correct": [True, True, True, False]}
    )
    box = widgets.tau_explorer(_vision(), _images(), TAUS, pope=pope, grid=(4, 4), size=64)
    top = box.children[1]
    view = top.children[0].children[2].children[1]  # image a, τ = 0.1, T = 8
    text = view.children[1].value
    assert "τ_max = 0.1" in text and "T = 8" in text and "erank kept 12.0" in text and "removed by τ 10" in text
    assert "filled 2" in text and "POPE 75%" in text
    zero = top.children[1].children[0].children[0].children[1].value  # image b, τ = 0, T = 4
    assert "FasterVLM" in zero and "POPE" not in zero
    assert bytes(view.children[0].value)[:2] == b"\xff\xd8"  # a JPEG


def test_errors():
    with pytest.raises(ValueError, match="max_views"):
        widgets.tau_explorer(_vision(), _images(), TAUS, max_views=5)
    with pytest.raises(ValueError, match="no rows for AgilePruner\\(tau_max=0.3\\)"):
        widgets.tau_explorer(_vision(), _images(), {**TAUS, "AgilePruner(tau_max=0.3)": 0.3})


def test_overlay_explorer_pages_follow_image_method_budget():
    rows = [
        {
            "image_id": iid,
            "method": m,
            "family": fam,
            "budget": b,
            "kept_indices": list(range(b)),
            "n_kept": b,
            "erank_kept_vision": float(b),
            "erank_random_vision": float(b) + 1,
            "attention_mass_kept": 0.25,
        }
        for iid in ("a", "b")
        for m, fam in (("FasterVLM", "attention"), ("DivPrune", "diversity"))
        for b in (4, 8)
    ]
    box = widgets.overlay_explorer(pd.DataFrame(rows), _images(), grid=(4, 4), size=48)
    d_img, d_met, d_bud = box.children[0].children
    assert list(d_img.options) == ["a", "b"] and list(d_bud.options) == ["4", "8"]
    top = box.children[1]
    assert len(top.children) == 2 and all(len(mid.children) == 2 for mid in top.children)
    assert len(box._prunelab_links) == 2 * 2 + 2 + 1
    m = list(d_met.options).index("DivPrune")
    caption = top.children[1].children[m].children[1].children[1].value  # image b, DivPrune, T = 8
    assert "<b>DivPrune</b>, T = 8" in caption and "erank 8.0 (random 9.0)" in caption and "25%" in caption

"""Interactive explorers that also work in the static book.

A static Jupyter Book page has no kernel, so a Python callback behind a dropdown never runs there. These
explorers therefore precompute every view into image widgets and switch between them with *front-end links*
(``ipywidgets.jslink``) from the dropdowns to nested :class:`ipywidgets.Stack` widgets: the switching happens in
the browser, from the widget state that papermill saves into the executed notebook and JB1 embeds in the page.
The same widget works unchanged in JupyterLab. Keep the option set small: every combination is one embedded
JPEG (about 10-20 kB at 224 px).
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from prunelab.study.plots import method_order, overlay_png


def _caption(row) -> str:
    er = row["erank_kept_vision"]
    rnd = row["erank_random_vision"]
    parts = [f"<b>{row['method']}</b>, T = {int(row['budget'])}", f"kept {int(row['n_kept'])}"]
    if pd.notna(er):
        parts.append(f"erank {er:.1f}" + (f" (random {rnd:.1f})" if pd.notna(rnd) else ""))
    parts.append(f"attention kept {100 * row['attention_mass_kept']:.0f}%")
    return " · ".join(parts)


def linked_views(controls, image_ids: Sequence, middles: Sequence, budgets: Sequence[int], view):
    """Nested ``Stack`` widgets (image > middle choice > budget) whose shown page follows three controls through
    ``jslink``, so the choice works in the rendered book without a kernel. ``controls`` is ``(image, middle,
    budget)``; ``view(image_id, middle, budget)`` makes one page."""
    import ipywidgets as w

    d_img, d_mid, d_bud = controls
    links, outer = [], []
    for iid in image_ids:
        per_mid = []
        for m in middles:
            inner = w.Stack([view(iid, m, b) for b in budgets], selected_index=0)
            links.append(w.jslink((d_bud, "index"), (inner, "selected_index")))
            per_mid.append(inner)
        mid = w.Stack(per_mid, selected_index=0)
        links.append(w.jslink((d_mid, "index"), (mid, "selected_index")))
        outer.append(mid)
    top = w.Stack(outer, selected_index=0)
    links.append(w.jslink((d_img, "index"), (top, "selected_index")))
    box = w.VBox([w.HBox([d_img, d_mid, d_bud]), top])
    box._prunelab_links = links  # keep the Link widgets alive with the view
    return box


def _explorer_index(df, image_ids, budgets, middles: Sequence, what: str, middle_name: str, max_views: int):
    """``(image ids, budgets, df indexed by image x method x budget)`` of an explorer over ``middles`` (its
    methods or taus), the defaults being every image and budget of ``df``; ``ValueError`` over ``max_views``."""
    image_ids = list(image_ids) if image_ids is not None else list(dict.fromkeys(df["image_id"]))
    budgets = [int(b) for b in (budgets if budgets is not None else sorted(df["budget"].unique()))]
    n_views = len(image_ids) * len(middles) * len(budgets)
    if n_views > max_views:
        raise ValueError(
            f"the explorer would embed {n_views} {what} (> max_views={max_views}); pass fewer "
            f"image_ids/{middle_name}/budgets"
        )
    return image_ids, budgets, df.set_index(["image_id", "method", "budget"]).sort_index()


def overlay_explorer(
    df: pd.DataFrame,
    images: dict,
    *,
    image_ids: Sequence[str] | None = None,
    methods: Sequence[str] | None = None,
    budgets: Sequence[int] | None = None,
    grid=(24, 24),
    size: int = 224,
    max_views: int = 400,
):
    """Image x method x budget explorer of kept-token overlays.

    ``df`` is a :func:`prunelab.study.runner.run_vision` table, ``images`` maps ``image_id`` to a PIL image. Three
    dropdowns select the image, method and budget; the overlay and a caption (kept count, erank of the kept
    tokens vs random subsets, attention mass kept) update in the browser, with or without a kernel.
    Raises ``ValueError`` if more than ``max_views`` combinations would be embedded.
    """
    import ipywidgets as w

    methods = list(methods) if methods is not None else method_order(df)
    image_ids, budgets, index = _explorer_index(df, image_ids, budgets, methods, "overlays", "methods", max_views)

    d_img = w.Dropdown(options=image_ids, value=image_ids[0], description="image")
    d_met = w.Dropdown(options=methods, value=methods[0], description="method")
    d_bud = w.Dropdown(options=[str(b) for b in budgets], value=str(budgets[0]), description="budget T")

    def view(iid, m, b):
        key = (iid, m, b)
        if key not in index.index:
            return w.HTML(f"<i>no result for {iid} / {m} / T={b}</i>")
        row = index.loc[key]
        row = row.iloc[0] if isinstance(row, pd.DataFrame) else row
        row = row.copy()
        row["method"], row["budget"] = m, b
        pic = w.Image(
            value=overlay_png(images[iid], row["kept_indices"], grid, size=size), format="jpeg", width=size, height=size
        )
        return w.VBox([pic, w.HTML(_caption(row))])

    return linked_views((d_img, d_met, d_bud), image_ids, methods, budgets, view)


def _tau_caption(row, tau: float, accuracy: float | None, caption_html: str | None) -> str:
    import json

    stats = json.loads(row["method_stats"]) if isinstance(row.get("method_stats"), str) and row["method_stats"] else {}
    name = "FasterVLM (τ_max = 0: no token removed)" if tau == 0 else f"AgilePruner, τ_max = {tau:g}"
    parts = [f"<b>{name}</b>, T = {int(row['budget'])}"]
    if pd.notna(row.get("erank_kept_vision")):
        parts.append(f"erank kept {row['erank_kept_vision']:.1f}")
    parts.append(f"attention kept {100 * row['attention_mass_kept']:.0f}%")
    if stats.get("n_removed_by_threshold") is not None:
        parts.append(f"removed by τ {int(stats['n_removed_by_threshold'])}")
    if stats.get("n_filled"):
        parts.append(f"filled {int(stats['n_filled'])}")
    if accuracy is not None and pd.notna(accuracy):
        parts.append(f"POPE {accuracy:.0f}% on this image")
    out = " · ".join(parts)
    if caption_html:
        out += f"<br/><span style='font-size:90%'>{caption_html}</span>"
    return out


def tau_explorer(
    vision: pd.DataFrame,
    images: dict,
    taus: dict,
    *,
    image_ids: Sequence[str] | None = None,
    budgets: Sequence[int] | None = None,
    pope: pd.DataFrame | None = None,
    describe: pd.DataFrame | None = None,
    parser=None,
    grid=(24, 24),
    size: int = 224,
    max_views: int = 400,
):
    """AgilePruner's threshold and the budget as two sliders (plus an image dropdown): the kept-token overlay, the
    erank and [CLS] attention of the kept tokens, how many tokens the threshold removed and the fill rule added,
    and, when given, the image's POPE accuracy (``pope``) and the highlighted description (``describe``; CHAIR
    colours, :func:`prunelab.study.scoring.highlight_caption`) at that τ and budget.

    ``vision``: a :func:`prunelab.study.runner.run_vision` table holding the sweep's methods; ``taus``: ``{method label:
    tau_max}`` (e.g. from :func:`prunelab.study.adaptive_study.tau_grid`; τ = 0 is FasterVLM). Like
    :func:`overlay_explorer`, every view is precomputed and the sliders switch nested ``Stack`` widgets through
    ``jslink`` in the browser, so the widget also works on the static book page. ``ValueError`` beyond
    ``max_views`` views or when a τ has no rows.
    """
    import ipywidgets as w

    order = sorted(taus.items(), key=lambda kv: kv[1])
    missing = [m for m, _ in order if not (vision["method"] == m).any()]
    if missing:
        raise ValueError(f"no rows for {', '.join(missing)} in the vision table; run the sweep's methods first")
    image_ids, budgets, index = _explorer_index(vision, image_ids, budgets, order, "views", "taus", max_views)
    acc = None
    if pope is not None and len(pope):
        acc = pope.groupby(["image_id", "method", "budget"])["correct"].mean().mul(100)
    caps = None
    if describe is not None and len(describe):
        caps = describe.set_index(["image_id", "method", "budget"]).sort_index()

    d_img = w.Dropdown(options=image_ids, value=image_ids[0], description="image")
    s_tau = w.SelectionSlider(
        options=[f"{t:g}" for _, t in order], value=f"{order[0][1]:g}", description="τ_max", continuous_update=True
    )
    s_bud = w.SelectionSlider(
        options=[str(b) for b in budgets], value=str(budgets[0]), description="budget T", continuous_update=True
    )

    def view(iid, m, tau, b):
        key = (iid, m, b)
        if key not in index.index:
            return w.HTML(f"<i>no result for {iid} / τ_max={tau:g} / T={b}</i>")
        row = index.loc[key]
        row = (row.iloc[0] if isinstance(row, pd.DataFrame) else row).copy()
        row["budget"] = b
        cap = None
        if caps is not None and key in caps.index:
            from prunelab.study.scoring import highlight_caption

            c = caps.loc[key]
            c = c.iloc[0] if isinstance(c, pd.DataFrame) else c
            cap = highlight_caption(str(c["caption"]), c["gt_objects"], parser=parser)
        a = float(acc[key]) if acc is not None and key in acc.index else None
        pic = w.Image(
            value=overlay_png(images[iid], row["kept_indices"], grid, size=size), format="jpeg", width=size, height=size
        )
        return w.VBox([pic, w.HTML(_tau_caption(row, tau, a, cap))])

    return linked_views((d_img, s_tau, s_bud), image_ids, order, budgets, lambda iid, m_tau, b: view(iid, *m_tau, b))


__all__ = ["linked_views", "overlay_explorer", "tau_explorer"]

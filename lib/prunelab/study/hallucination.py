"""Chapter 2 (diversity <-> hallucination): the paper's CHAIR table, per-image correlations, figures, examples and
the verdict rules, on top of a :func:`prunelab.study.generation.run_generation` describe table.

The claim (AgilePruner, ICLR 2026, arXiv 2603.01236; project page ``cvsp-lab/AgilePruner``, figure
``hallucination_chair.png``; numbers in ``data/paper_results.csv``, table ``chair``): on CHAIR, diversity-based
pruning (DivPrune, FPSPruner) gives higher object recall but more hallucination (higher CHAIR_s and CHAIR_i) than
attention-based pruning (FasterVLM, PruMerge+), and the diversity these methods keep is tied to hallucination.

* :func:`paper_chair` / :func:`chair_layout` — the paper's numbers and the paper's table layout (method rows,
  budget x metric columns);
* :func:`per_image_correlations` / :func:`correlation_summary` — for each image and budget, the Spearman rank
  correlation *across methods* between a property of the kept tokens (erank, [CLS] attention mass) and the
  caption's hallucinated mentions; the image is held fixed, so image difficulty cannot drive it; averaged over
  images with a seeded bootstrap CI (:func:`prunelab.study.analysis.summarize`);
* :func:`finding2_claims` — the verdict rules as :class:`prunelab.study.verdict.Claim` objects with computed checks;
* figures (:func:`tradeoff_figure`, :func:`chair_bars`, :func:`correlation_figure`), highlighted example captions
  (:func:`examples_html`) and an image x method x budget caption explorer that works on the static page
  (:func:`caption_explorer`, the ``jslink`` + ``Stack`` pattern of :mod:`prunelab.study.widgets`).
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from prunelab.errors import UnknownNameError
from prunelab.methods import base_label, paper_name
from prunelab.study.analysis import summarize
from prunelab.study.generation import VANILLA
from prunelab.study.plots import (
    _families as fam_of,
    figure_legend,
    image_dots,
    method_order,
    method_palette,
    overlay_png,
)
from prunelab.study.scoring import highlight_caption, paired_chair
from prunelab.study.verdict import Claim, check, checks_from_summary, paper_metric, paper_results, paper_value
from prunelab.study.widgets import linked_views

#: Our labels for the rows of the paper's CHAIR table, in its order (PruMerge+ at the paper's fixed budgets is
#: ``PruMerge+fixed`` here); names map through :func:`prunelab.methods.paper_name`.
PAPER_CHAIR_LABELS = ("Vanilla", "FasterVLM", "PruMerge+fixed", "VisPruner", "DivPrune", "FPS", "AgilePruner")
METRICS = ("CHAIR_s", "CHAIR_i", "Recall", "Len")
PAPER_BUDGETS = (64, 128)
PAPER_MODEL = "llava-1.5-7b"


# --------------------------------------------------------------------------------------------------------------
# Tables


def paper_chair(methods: Sequence[str] | None = None, budgets: Sequence[int] = PAPER_BUDGETS) -> pd.DataFrame:
    """The paper's CHAIR numbers (LLaVA-1.5-7B, 500 COCO val2014 images) for our method labels: columns
    ``method`` (our label), ``paper_method``, ``budget`` (576 for Vanilla), ``CHAIR_s``, ``CHAIR_i``, ``Recall``,
    ``Len``. Methods the paper does not report are left out."""
    res = paper_results()
    res = res[(res["table"] == "chair") & (res["model"] == PAPER_MODEL)]
    labels = list(methods) if methods is not None else list(PAPER_CHAIR_LABELS)
    rows = []
    for lab in labels:
        pn = paper_name(lab)
        if pn is None:
            continue
        for b in [576] if pn == "Vanilla" else budgets:
            sel = res[(res["method"] == pn) & (res["visual_tokens"] == b)]
            if sel.empty:
                continue
            vals = sel.set_index("metric")["value"]
            rows.append(
                {
                    "method": lab,
                    "paper_method": pn,
                    "budget": int(b),
                    **{m: float(vals.get(m, math.nan)) for m in METRICS},
                }
            )
    return pd.DataFrame(rows, columns=["method", "paper_method", "budget", *METRICS])


def chair_layout(table: pd.DataFrame, metrics: Sequence[str] = METRICS) -> pd.DataFrame:
    """The paper's layout: one row per method (in ``table``'s order), columns ``(T = budget, metric)``; the unpruned
    row (budget N) gets its own column block ``N (all)``."""
    t = table.copy()
    t["T"] = t["budget"].map(lambda b: f"T = {int(b)}")
    if (t["method"] == VANILLA).any():
        t.loc[t["method"] == VANILLA, "T"] = t.loc[t["method"] == VANILLA, "budget"].map(lambda b: f"all {int(b)}")
    order = list(dict.fromkeys(t["method"]))
    blocks = list(dict.fromkeys(t.sort_values("budget", kind="stable")["T"]))
    wide = t.pivot_table(index="method", columns="T", values=list(metrics), aggfunc="first")
    wide = wide.swaplevel(0, 1, axis=1)
    cols = [(b, m) for b in blocks for m in metrics if (b, m) in wide.columns]
    return wide.reindex(index=order, columns=pd.MultiIndex.from_tuples(cols, names=["", ""]))


def per_image_correlations(
    df: pd.DataFrame,
    x: str,
    y: str = "n_hallucinated",
    *,
    by: Sequence[str] = ("budget",),
    exclude: Sequence[str] = (VANILLA,),
) -> pd.DataFrame:
    """Per image (and group of ``by``), the Spearman correlation across methods between ``x`` and ``y`` (Pearson
    correlation of average ranks). ``NaN`` when ``x`` or ``y`` does not vary across the image's methods (e.g.
    no method hallucinated on it). Columns ``by + [image_id, x, y, rho, n_methods]``."""
    for c in (x, y):
        if c not in df:
            raise UnknownNameError(f"column {c!r} is not in the table; choose one of {', '.join(map(str, df.columns))}")
    d = df[~df["method"].isin(exclude)]
    rows = []
    for key, g in d.groupby(list(by) + ["image_id"], sort=False):
        g = g[[x, y]].astype(float).dropna()
        rho = math.nan
        if len(g) >= 2 and g[x].nunique() > 1 and g[y].nunique() > 1:
            rho = float(np.corrcoef(g[x].rank().to_numpy(), g[y].rank().to_numpy())[0, 1])
        rows.append({**dict(zip(list(by) + ["image_id"], key)), "x": x, "y": y, "rho": rho, "n_methods": len(g)})
    return pd.DataFrame(rows, columns=list(by) + ["image_id", "x", "y", "rho", "n_methods"])


def correlation_summary(
    df: pd.DataFrame,
    xs: Sequence[str] = ("erank_kept_projected", "attention_mass_kept"),
    y: str = "n_hallucinated",
    *,
    by: Sequence[str] = ("budget",),
    n_boot: int = 2000,
    ci: float = 0.95,
    seed: int = 0,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(per_image, summary)``: :func:`per_image_correlations` for every ``x`` in ``xs``, and their mean per
    ``by`` x ``x`` with a seeded bootstrap CI over images (``mean, ci_low, ci_high, n`` = images where ρ is
    defined)."""
    per = pd.concat([per_image_correlations(df, x, y, by=by) for x in xs], ignore_index=True)
    summ = summarize(per, "rho", list(by) + ["x"], n_boot=n_boot, ci=ci, seed=seed)
    summ.insert(len(by) + 1, "y", y)
    return per, summ


# --------------------------------------------------------------------------------------------------------------
# Verdict


def _families(df: pd.DataFrame) -> dict[str, list[str]]:
    fam = df.drop_duplicates("method").set_index("method")["family"]
    return {f: [m for m in fam.index if fam[m] == f] for f in fam.unique()}


def _paper_pairs(metric: str, left: Sequence[str], right: Sequence[str]) -> str:
    parts = []
    for b in PAPER_BUDGETS:
        lv = ", ".join(f"{m} {paper_value('chair', m, metric, visual_tokens=b):.1f}" for m in left)
        rv = ", ".join(f"{m} {paper_value('chair', m, metric, visual_tokens=b):.1f}" for m in right)
        parts.append(f"T={b}: {lv} vs {rv}")
    return "; ".join(parts)


def _pair_checks(
    df: pd.DataFrame,
    left: Sequence[str],
    right: Sequence[str],
    metric: str,
    op: str,
    *,
    n_boot: int,
    ci: float,
    seed: int,
) -> list:
    out = []
    for a in left:
        for b in right:
            for r in paired_chair(df, a, b, metric, n_boot=n_boot, ci=ci, seed=seed).itertuples(index=False):
                pe = paper_chair_value(a, metric, r.budget) - paper_chair_value(b, metric, r.budget)
                out.append(
                    check(
                        f"{a} − {b}, T={int(r.budget)}",
                        r.diff,
                        op,
                        0.0,
                        ci=(r.ci_low, r.ci_high),
                        n=r.n,
                        paper_effect=pe,
                    )
                )
    return out


def paper_chair_value(label: str, metric: str, budget: int) -> float:
    """The paper's CHAIR ``metric`` for one of our labels at ``budget`` (NaN where the paper has no such row). Only
    the labels of :data:`PAPER_CHAIR_LABELS` map (parameters dropped): our adaptive-count PruMerge+ is not the
    paper's fixed-budget row."""
    return paper_metric("chair", label, metric, budget, only=PAPER_CHAIR_LABELS, model=PAPER_MODEL)


def finding2_claims(
    df: pd.DataFrame, *, n_boot: int = 2000, ci: float = 0.95, seed: int = 0, erank_column: str = "erank_kept_projected"
) -> list:
    """The verdict rules of finding 2 as :class:`prunelab.study.verdict.Claim` objects (outcomes computed from checks).

    Families come from the table (``family`` column): *diversity* (DivPrune, FPS) vs *attention* (FasterVLM,
    PruMerge+). Every comparison is paired on the same images with a seeded bootstrap CI at level ``ci``, and a
    check passes only if the whole interval lies on the claimed side of 0 (:func:`prunelab.study.verdict.check`).
    """
    fam = _families(df)
    div, att = fam.get("diversity", []), fam.get("attention", [])
    agile = [m for m in df["method"].unique() if base_label(m) == "AgilePruner"]
    pct = f"{100 * ci:.0f}%"
    paper_div, paper_att = ["DivPrune", "FPSPruner"], ["FasterVLM", "PruMerge+"]
    claims = []
    every = "For every diversity method D and attention method A of this run and every budget T"
    for metric, claim, scope in (
        (
            "CHAIR_s",
            "Diversity-based pruning gives more captions with a hallucinated object (CHAIR_s) than "
            "attention-based pruning",
            every,
        ),
        (
            "CHAIR_i",
            "Diversity-based pruning gives a larger share of hallucinated object mentions (CHAIR_i) than "
            "attention-based pruning",
            every,
        ),
        ("Recall", "Diversity-based pruning recalls more of the objects present (Recall)", "For every D, A and T"),
    ):
        claims.append(
            Claim(
                claim=claim,
                paper=_paper_pairs(metric, paper_div, paper_att),
                rule=(
                    f"{scope}: {metric}(D) − {metric}(A) > 0 on the same images, {pct} paired-bootstrap CI entirely "
                    "above 0."
                ),
                checks=_pair_checks(df, div, att, metric, ">", n_boot=n_boot, ci=ci, seed=seed),
                fmt="{:+.1f}",
            )
        )
    _, summ = correlation_summary(df, xs=(erank_column,), n_boot=n_boot, ci=ci, seed=seed)
    claims.append(
        Claim(
            claim="The diversity the kept tokens carry is tied to hallucination",
            paper="direction: methods keeping more diverse tokens hallucinate more (CHAIR table with the erank analysis)",
            rule=(
                f"Per image and budget, Spearman ρ across the pruning methods between the erank of the kept tokens "
                f"({erank_column}) and the caption's hallucinated mentions; mean over images > 0 with its {pct} "
                "bootstrap CI entirely above 0, at every budget."
            ),
            checks=checks_from_summary(summ, "budget", ">", 0.0, template="mean ρ, T={budget:.0f} ({n:.0f} images)"),
            fmt="{:+.2f}",
        )
    )
    if agile and div:
        claims.append(
            Claim(
                claim="AgilePruner hallucinates less than diversity-based pruning (CHAIR_i)",
                paper=_paper_pairs("CHAIR_i", ["AgilePruner"], paper_div),
                rule=(
                    f"For every diversity method D and T: CHAIR_i(AgilePruner) − CHAIR_i(D) < 0 on the same images, "
                    f"{pct} paired-bootstrap CI entirely below 0."
                ),
                checks=_pair_checks(df, agile, div, "CHAIR_i", "<", n_boot=n_boot, ci=ci, seed=seed),
                fmt="{:+.1f}",
            )
        )
    return claims


# --------------------------------------------------------------------------------------------------------------
# Figures


def _palette(df: pd.DataFrame) -> dict:
    return method_palette(method_order(df), fam_of(df))


def tradeoff_figure(table: pd.DataFrame, df: pd.DataFrame, paper: pd.DataFrame | None = None, metric: str = "CHAIR_i"):
    """Recall (x) against ``metric`` (y) per method, one panel per budget (95% bootstrap CIs from
    ``chair_table(..., ci=...)``), plus a panel with the paper's numbers when ``paper`` is given."""
    import matplotlib.pyplot as plt

    pal = _palette(df)
    budgets = sorted(int(b) for b in table.loc[table["method"] != VANILLA, "budget"].unique())
    ncol = len(budgets) + (1 if paper is not None and len(paper) else 0)
    fig, axes = plt.subplots(1, ncol, figsize=(3.6 * ncol, 3.4), squeeze=False)
    van = table[table["method"] == VANILLA]
    for ax, b in zip(axes[0], budgets):
        t = table[table["budget"] == b]
        for r in t.itertuples(index=False):
            r = r._asdict()
            xerr = [[r["Recall"] - r.get("Recall_low", r["Recall"])], [r.get("Recall_high", r["Recall"]) - r["Recall"]]]
            yerr = [[r[metric] - r.get(f"{metric}_low", r[metric])], [r.get(f"{metric}_high", r[metric]) - r[metric]]]
            ax.errorbar(
                r["Recall"],
                r[metric],
                xerr=np.nan_to_num(xerr),
                yerr=np.nan_to_num(yerr),
                fmt="o",
                color=pal.get(r["method"]),
                label=r["method"],
                capsize=2,
                ms=6,
            )
        if len(van):
            ax.scatter(
                van["Recall"], van[metric], marker="*", s=120, color="black", label=f"{VANILLA} (all tokens)", zorder=3
            )
        ax.set(title=f"this run, T = {b}", xlabel="Recall (%)", ylabel=f"{metric} (%)")
    if ncol > len(budgets):
        ax = axes[0][-1]
        for b, marker in zip(PAPER_BUDGETS, ("o", "s")):
            for r in paper[paper["budget"] == b].itertuples(index=False):
                ax.scatter(r.Recall, getattr(r, metric), marker=marker, color=pal.get(r.method, "grey"), s=40)
        pv = paper[paper["method"] == VANILLA]
        if len(pv):
            ax.scatter(pv["Recall"], pv[metric], marker="*", s=120, color="black")
        ax.set(title="paper (LLaVA-1.5-7B, COCO)\n● T=64  ■ T=128", xlabel="Recall (%)", ylabel=f"{metric} (%)")
    return figure_legend(fig, axes[0][0])


def chair_bars(table: pd.DataFrame, df: pd.DataFrame, metrics: Sequence[str] = ("CHAIR_s", "CHAIR_i", "Recall")):
    """Horizontal bars per method for each metric, one colour shade per budget, with 95% CIs."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    t = table[table["method"] != VANILLA]
    methods = list(dict.fromkeys(t["method"]))
    budgets = sorted(t["budget"].unique())
    fig, axes = plt.subplots(
        1,
        len(metrics),
        figsize=(3.3 * len(metrics), 0.3 * len(methods) * len(budgets) + 1.4),
        sharey=True,
        squeeze=False,
    )
    shades = sns.color_palette("Blues", len(budgets) + 1)[1:]
    h = 0.8 / len(budgets)
    y0 = np.arange(len(methods))
    for ax, m in zip(axes[0], metrics):
        for k, b in enumerate(budgets):
            tb = t[t["budget"] == b].set_index("method").reindex(methods)
            err = None
            if f"{m}_low" in tb:
                err = np.nan_to_num([tb[m] - tb[f"{m}_low"], tb[f"{m}_high"] - tb[m]])
            ax.barh(y0 + k * h, tb[m], height=h, color=shades[k], xerr=err, capsize=2, label=f"T = {int(b)}")
        van = table[table["method"] == VANILLA]
        if len(van):
            ax.axvline(float(van[m].iloc[0]), color="black", ls="--", lw=1, label=f"{VANILLA} (all tokens)")
        ax.set(xlabel=f"{m} (%)", title=m)
    axes[0][0].set_yticks(y0 + h * (len(budgets) - 1) / 2, methods)
    axes[0][0].invert_yaxis()
    return figure_legend(fig, axes[0][0], loc="outside lower center", ncol="all")


def correlation_figure(per_image: pd.DataFrame, summary: pd.DataFrame, labels: dict | None = None):
    """Per-image Spearman ρ (dots) and their mean with its CI (black), per kept-token property and budget."""
    import matplotlib.pyplot as plt

    labels = labels or {
        "erank_kept_projected": "erank of kept tokens",
        "erank_kept_vision": "erank of kept tokens (tower)",
        "attention_mass_kept": "[CLS] attention kept",
    }
    xs = list(dict.fromkeys(per_image["x"]))
    fig, axes = plt.subplots(1, len(xs), figsize=(3.6 * len(xs), 3.2), sharey=True, squeeze=False)
    for ax, x in zip(axes[0], xs):
        p = per_image[(per_image["x"] == x) & per_image["rho"].notna()].copy()
        p["T"] = p["budget"].map(lambda b: f"T = {int(b)}")
        order = [f"T = {int(b)}" for b in sorted(per_image["budget"].unique())]
        if len(p):
            image_dots(ax, p, "T", "rho", alpha=0.45, order=order, color="tab:blue")
        s = summary[summary["x"] == x].set_index("budget")
        for k, b in enumerate(sorted(per_image["budget"].unique())):
            if b in s.index and np.isfinite(s.loc[b, "mean"]):
                r = s.loc[b]
                ax.errorbar(
                    k,
                    r["mean"],
                    yerr=[[r["mean"] - r["ci_low"]], [r["ci_high"] - r["mean"]]],
                    fmt="D",
                    color="black",
                    capsize=4,
                    ms=6,
                    zorder=4,
                )
        ax.axhline(0, color="grey", lw=1)
        ax.set(
            title=f"{labels.get(x, x)}\nvs hallucinated mentions",
            xlabel="",
            ylabel="Spearman ρ across methods (per image)",
            ylim=(-1.08, 1.08),
            xticks=range(len(order)),
            xticklabels=order,
        )
    return fig


# --------------------------------------------------------------------------------------------------------------
# Examples and explorer


def _thumb(image, kept=None, n_tokens: int | None = None, size: int = 168) -> str:
    if kept is None:
        import io

        buf = io.BytesIO()
        image.convert("RGB").resize((size, size)).save(buf, format="JPEG", quality=85)
        data = buf.getvalue()
    else:
        side = int(round(math.sqrt(n_tokens))) if n_tokens else 24
        # LLaVA-NeXT's packed run starts with the base tile's raster (n_tokens): the thumbnail shows that tile
        data = overlay_png(image, [int(i) for i in kept if 0 <= int(i) < side * side], grid=(side, side), size=size)
    return f'<img src="data:image/jpeg;base64,{base64.b64encode(data).decode()}" width="{size}" height="{size}"/>'


def _row_html(r, parser, image=None, size: int = 144) -> str:
    cap = highlight_caption(str(r["caption"]), r["gt_objects"], parser=parser)
    stats = (
        f"CHAIR_i {r['n_hallucinated']}/{r['n_mentions']} mentions · recall {r['n_gt_covered']}/{r['n_gt']} · "
        f"{int(r['n_words'])} words"
    )
    if pd.notna(r.get("erank_kept_projected")):
        stats += f" · erank kept {r['erank_kept_projected']:.1f}"
    pic = _thumb(image, r["kept_indices"], r["n_tokens"], size) if image is not None and r["method"] != VANILLA else ""
    return (
        f"<tr><td style='vertical-align:top;white-space:nowrap'><b>{html.escape(str(r['method']))}</b><br/>"
        f"T = {int(r['budget'])}</td><td style='vertical-align:top'>{pic}</td>"
        f"<td style='vertical-align:top;text-align:left'>{cap}<br/><small>{stats}</small></td></tr>"
    )


def examples_html(
    df: pd.DataFrame,
    image_ids: Sequence[str],
    *,
    budget: int,
    methods: Sequence[str] | None = None,
    images: dict | None = None,
    parser=None,
    size: int = 144,
) -> str:
    """HTML: for each image, its ground-truth objects and every method's caption at ``budget`` (plus the unpruned
    caption), hallucinated mentions in red, correct ones in green, with the kept-token overlay when ``images``
    (``image_id -> PIL``) is given."""
    methods = list(methods) if methods is not None else list(dict.fromkeys(df["method"]))
    parts = [
        "<p><span style='background-color:#f4a6a6;font-weight:bold'>hallucinated object</span> · "
        "<span style='background-color:#c7e9c0'>object in the image</span></p>"
    ]
    for iid in image_ids:
        d = df[df["image_id"] == iid]
        if d.empty:
            continue
        gt = ", ".join(d["gt_objects"].iloc[0])
        img = images.get(iid) if images else None
        head = _thumb(img, size=size) if img is not None else ""
        parts.append(
            f"<h4>{html.escape(str(iid))} ({html.escape(str(d['complexity'].iloc[0] or ''))})</h4>"
            f"<p>{head}<br/>objects in the image: <i>{html.escape(gt)}</i></p><table>"
        )
        for m in methods:
            sel = d[(d["method"] == m) & ((d["budget"] == budget) | (d["method"] == VANILLA))]
            for _, r in sel.iterrows():
                parts.append(_row_html(r, parser, img, size))
        parts.append("</table>")
    return "".join(parts)


def caption_explorer(
    df: pd.DataFrame,
    images: dict,
    *,
    image_ids: Sequence[str],
    methods: Sequence[str] | None = None,
    budgets: Sequence[int] | None = None,
    parser=None,
    size: int = 168,
    max_views: int = 300,
):
    """Image x method x budget explorer: kept-token overlay and the highlighted caption with its CHAIR counts.
    Dropdowns switch precomputed views in the browser (``jslink`` to nested ``Stack`` widgets), so it also works
    on the static book page. ``ValueError`` beyond ``max_views`` combinations."""
    import ipywidgets as w

    image_ids = list(image_ids)
    methods = list(methods) if methods is not None else [m for m in dict.fromkeys(df["method"]) if m != VANILLA]
    budgets = [
        int(b) for b in (budgets if budgets is not None else sorted(df.loc[df["method"] != VANILLA, "budget"].unique()))
    ]
    n = len(image_ids) * len(methods) * len(budgets)
    if n > max_views:
        raise ValueError(
            f"the explorer would embed {n} views (> max_views={max_views}); pass fewer images/methods/budgets"
        )
    d_img = w.Dropdown(options=image_ids, value=image_ids[0], description="image")
    d_met = w.Dropdown(options=methods, value=methods[0], description="method")
    d_bud = w.Dropdown(options=[str(b) for b in budgets], value=str(budgets[0]), description="budget T")

    def view(iid, m, b):
        sel = df[(df["image_id"] == iid) & (df["method"] == m) & (df["budget"] == b)]
        if sel.empty:
            return w.HTML(f"<i>no result for {html.escape(str(iid))} / {html.escape(m)} / T={b}</i>")
        return w.HTML("<table>" + _row_html(sel.iloc[0], parser, images.get(iid), size) + "</table>")

    return linked_views((d_img, d_met, d_bud), image_ids, methods, budgets, view)


__all__ = [
    "PAPER_CHAIR_LABELS",
    "paper_chair_value",
    "METRICS",
    "paper_chair",
    "chair_layout",
    "per_image_correlations",
    "correlation_summary",
    "finding2_claims",
    "tradeoff_figure",
    "chair_bars",
    "correlation_figure",
    "examples_html",
    "caption_explorer",
]

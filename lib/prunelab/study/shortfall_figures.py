"""The figures of finding 1 (chapter 01): the erank of each method's kept tokens against all tokens and the
random-subset and erank-greedy references, and what the diversity methods intended against what they achieved."""

from __future__ import annotations

import pandas as pd

from prunelab.methods.base import FAMILY_ORDER
from prunelab.study.plots import ci_points, family_palette, method_palette, short_label
from prunelab.study.shortfall import (
    ATTENTION,
    DIVERSITY,
    GREEDY,
    RANDOM,
    REFERENCES,
    SHORTFALL,
    fixed_budget_methods,
    method_order,
)


def erank_overview(ratios: pd.DataFrame, space: str, height: float = 2.7, aspect: float = 2.0):
    """Erank of the kept tokens per method (mean and 95% CI over images), one panel per image set (rows) and
    budget (columns), with the references as horizontal lines: all tokens (dashed), erank-greedy (solid),
    random subsets of the same size (dotted). Methods with their own kept count are marked with an open symbol."""
    import matplotlib.pyplot as plt

    col = f"erank_kept_{space}"
    methods = [m for m in method_order(ratios) if m not in REFERENCES]
    fam = ratios.drop_duplicates("method").set_index("method")["family"].to_dict()
    pal = method_palette(methods, fam)
    sets = list(dict.fromkeys(ratios["image_set"]))
    budgets = sorted(ratios["budget"].unique())
    fig, axes = plt.subplots(
        len(sets),
        len(budgets),
        figsize=(height * aspect * len(budgets), height * len(sets) + 0.6),
        squeeze=False,
        sharex=True,
    )
    fixed = set(fixed_budget_methods(ratios))
    short = {m: short_label(m) for m in methods}
    for r, s in enumerate(sets):
        for c, b in enumerate(budgets):
            ax = axes[r, c]
            sub = ratios[(ratios["image_set"] == s) & (ratios["budget"] == b)]
            meth = sub[sub["method"].isin(methods)]
            ci_points(
                ax, meth, "method", col, hue="method", order=methods, hue_order=methods, palette=pal, legend=False
            )
            for i, m in enumerate(methods):
                if m not in fixed:
                    ax.plot(i, meth[meth["method"] == m][col].mean(), "o", mfc="white", mec="0.3", ms=6, zorder=5)
            refs = {
                "all tokens": (f"erank_full_{space}", sub, "--"),
                GREEDY: (col, sub[sub["method"] == GREEDY], "-"),
                RANDOM: (col, sub[sub["method"] == RANDOM], ":"),
            }
            for label, (cc, frame, ls) in refs.items():
                if len(frame):
                    ax.axhline(frame[cc].mean(), ls=ls, lw=1.2, color="0.25", label=label)
            ax.set_title(f"{s}, T = {b}")
            ax.set_xlabel("")
            ax.set_ylabel(f"erank ({space})" if c == 0 else "")
            ax.set_xticks(range(len(methods)), [short[m] for m in methods])
            ax.tick_params(axis="x", rotation=65)
            for lab in ax.get_xticklabels():
                lab.set_horizontalalignment("right")
                lab.set_fontsize("small")
    axes[0, -1].legend(fontsize="small", loc="upper right")
    return fig


def intended_vs_achieved(div: pd.DataFrame, height: float = 3.0, annotate: bool = True):
    """Per method (mean over images): minimum pairwise cosine distance of the kept tokens (what max-min methods
    maximise) against erank(kept) / erank(erank-greedy) (what the paper measures, relative to the ceiling); one
    panel per image set and budget; references drawn as black symbols."""
    import matplotlib.pyplot as plt

    d = div.dropna(subset=["ratio_ceiling"])
    sets = list(dict.fromkeys(d["image_set"]))
    budgets = sorted(d["budget"].unique())
    means = (
        d.groupby(["image_set", "budget", "method", "family"], sort=False)[["min_cos_dist", "ratio_ceiling"]]
        .mean()
        .reset_index()
    )
    fams = [f for f in FAMILY_ORDER if f in set(means["family"]) and f not in ("random", "base")]
    short = {m: short_label(m) for m in means["method"].unique()}
    pal = family_palette()
    fig, axes = plt.subplots(
        len(sets),
        len(budgets),
        figsize=(height * 1.45 * len(budgets), height * len(sets) + 0.4),
        squeeze=False,
        sharey=True,
    )
    for r, s in enumerate(sets):
        for c, b in enumerate(budgets):
            ax = axes[r, c]
            sub = means[(means["image_set"] == s) & (means["budget"] == b)]
            meth = sub[~sub["method"].isin(REFERENCES)]
            for f in fams:
                pts = meth[meth["family"] == f]
                ax.scatter(pts["min_cos_dist"], pts["ratio_ceiling"], color=pal[f], s=28, label=f, zorder=3)
            for ref, marker in ((RANDOM, "X"), (GREEDY, "*")):
                pts = sub[sub["method"] == ref]
                ax.scatter(
                    pts["min_cos_dist"], pts["ratio_ceiling"], color="black", marker=marker, s=70, label=ref, zorder=4
                )
            if annotate:
                for _, p in meth[meth["family"].isin([ATTENTION, DIVERSITY])].iterrows():
                    ax.annotate(
                        short[p["method"]],
                        (p["min_cos_dist"], p["ratio_ceiling"]),
                        fontsize=6,
                        xytext=(3, -3),
                        textcoords="offset points",
                    )
            ax.axhline(SHORTFALL, ls=":", lw=1, color="0.4")
            ax.set_title(f"{s}, T = {b}")
            ax.set_xlabel("min pairwise cosine distance (max-min objective)")
            ax.set_ylabel("erank / erank-greedy" if c == 0 else "")
    axes[0, -1].legend(fontsize="x-small", loc="lower right")
    return fig


__all__ = ["erank_overview", "intended_vs_achieved"]

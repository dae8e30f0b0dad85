"""The study's look and its standard figures.

* :func:`set_theme` — one seaborn theme for every notebook (call once at the top).
* :func:`overlay_array` / :func:`overlay` / :func:`overlay_grid` — kept-token overlays in the style of the
  paper's key-findings figure: the image as the tower sees it (square, 336 px), the patch grid drawn, kept
  patches at full brightness, pruned patches dimmed towards grey.
* :func:`erank_long`, :func:`erank_points`, :func:`erank_ratio_bars` — erank of the kept tokens against the
  full set and against random subsets of the same size.
* :func:`entropy_strip`, :func:`entropy_vs_erank` — per-image [CLS] attention entropy.

Methods are ordered and coloured by family (:data:`prunelab.methods.FAMILY_ORDER`, the one order next to the method
registry) everywhere, so a method keeps its colour across figures.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from prunelab.methods import FAMILY_ORDER

KIND_LABELS = {"kept": "kept by the method", "random": "random subset, same size", "full": "all tokens"}


# --------------------------------------------------------------------------------------------------------------
# Theme and palettes


def set_theme(context: str = "notebook", dpi: int = 110) -> None:
    """The study's seaborn/matplotlib theme (white grid, colour-blind palette, compact titles, tight saves)."""
    import matplotlib as mpl
    import seaborn as sns

    sns.set_theme(context=context, style="whitegrid", palette="colorblind", font_scale=0.95)
    mpl.rcParams.update(
        {
            "figure.dpi": dpi,
            "savefig.dpi": 150,
            "savefig.bbox": "tight",
            "axes.titlesize": "medium",
            "axes.titleweight": "bold",
            "axes.spines.top": False,
            "axes.spines.right": False,
            "legend.frameon": False,
            "figure.constrained_layout.use": True,
            "image.interpolation": "nearest",
        }
    )


def method_order(df: pd.DataFrame) -> list[str]:
    """Methods of ``df`` ordered by family, then in the order they first appear."""
    fam = df.drop_duplicates("method").set_index("method")["family"]
    rank = {f: i for i, f in enumerate(FAMILY_ORDER)}
    first = {m: i for i, m in enumerate(df["method"].drop_duplicates())}
    return sorted(fam.index, key=lambda m: (rank.get(fam[m], len(rank)), first[m]))


def family_palette() -> dict[str, tuple]:
    """One colour per family of :data:`~prunelab.methods.FAMILY_ORDER` (the colour-blind palette, in that order)."""
    import seaborn as sns

    return dict(zip(FAMILY_ORDER, sns.color_palette("colorblind", len(FAMILY_ORDER))))


def method_palette(methods: Sequence[str], families: dict[str, str] | None = None) -> dict[str, tuple]:
    """A colour per method: one hue family per method family (shades within a family)."""
    import seaborn as sns

    if families is None:
        return dict(zip(methods, sns.color_palette("colorblind", len(methods))))
    base = family_palette()
    out = {}
    for fam in dict.fromkeys(families[m] for m in methods):
        members = [m for m in methods if families[m] == fam]
        shades = sns.light_palette(base.get(fam, (0.5, 0.5, 0.5)), n_colors=len(members) + 2, reverse=True)[
            : len(members)
        ]
        out.update(zip(members, shades))
    return out


def _families(df: pd.DataFrame) -> dict[str, str]:
    return df.drop_duplicates("method").set_index("method")["family"].to_dict()


# --------------------------------------------------------------------------------------------------------------
# Overlays


def tower_view(image, size: int = 336) -> np.ndarray:
    """``image`` (PIL) as the tower sees it by default: RGB, squashed to ``size`` x ``size``; float array in [0, 1]."""
    from PIL import Image

    im = image.convert("RGB").resize((size, size), resample=Image.Resampling.BICUBIC)
    return np.asarray(im, dtype=np.float32) / 255.0


def kept_mask(kept: Iterable[int], grid: tuple[int, int] = (24, 24)) -> np.ndarray:
    """Boolean ``grid`` mask of kept patches (raster order; ``-1`` placeholders ignored)."""
    rows, cols = grid
    m = np.zeros(rows * cols, dtype=bool)
    idx = np.asarray([int(i) for i in kept if int(i) >= 0], dtype=int)
    if idx.size and (idx.max() >= rows * cols):
        raise ValueError(f"kept index {idx.max()} is outside the {rows}x{cols} grid")
    m[idx] = True
    return m.reshape(rows, cols)


def overlay_array(
    image,
    kept: Iterable[int],
    grid: tuple[int, int] = (24, 24),
    size: int = 336,
    dim: float = 0.3,
    grey: float = 0.85,
    grid_alpha: float = 0.25,
    edge: tuple[float, float, float] | None = (1.0, 0.85, 0.0),
) -> np.ndarray:
    """RGB float array of the overlay: pruned patches blended ``dim : 1-dim`` with ``grey``, grid lines, kept
    patches outlined in ``edge`` where they border a pruned patch (so kept regions read as shapes)."""
    rows, cols = grid
    img = tower_view(image, size) if not isinstance(image, np.ndarray) else image.astype(np.float32)
    s = img.shape[0]
    mask = kept_mask(kept, grid)
    ph, pw = s / rows, s / cols
    ry = np.minimum((np.arange(s) / ph).astype(int), rows - 1)
    rx = np.minimum((np.arange(s) / pw).astype(int), cols - 1)
    pix = mask[ry][:, rx]
    out = np.where(pix[..., None], img, dim * img + (1 - dim) * grey)
    # grid lines
    ys = np.unique(np.round(np.arange(1, rows) * ph).astype(int))
    xs = np.unique(np.round(np.arange(1, cols) * pw).astype(int))
    out[ys, :, :] = (1 - grid_alpha) * out[ys, :, :] + grid_alpha
    out[:, xs, :] = (1 - grid_alpha) * out[:, xs, :] + grid_alpha
    if edge is not None:
        border = np.zeros_like(pix)
        border[1:, :] |= pix[1:, :] & ~pix[:-1, :]
        border[:-1, :] |= pix[:-1, :] & ~pix[1:, :]
        border[:, 1:] |= pix[:, 1:] & ~pix[:, :-1]
        border[:, :-1] |= pix[:, :-1] & ~pix[:, 1:]
        out[border] = edge
    return np.clip(out, 0, 1)


def overlay_png(image, kept, grid=(24, 24), size: int = 224, fmt: str = "jpeg", quality: int = 85, **kw) -> bytes:
    """The overlay encoded as JPEG/PNG bytes (drawn at 336 px, then resized to ``size``) — for widgets."""
    import io

    from PIL import Image

    arr = overlay_array(image, kept, grid, **kw)
    im = Image.fromarray((arr * 255).round().astype(np.uint8)).resize((size, size), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    im.save(buf, format=fmt.upper(), **({"quality": quality} if fmt.lower() in ("jpeg", "jpg") else {}))
    return buf.getvalue()


def overlay(image, kept, grid=(24, 24), ax=None, title: str | None = None, **kw):
    """Draw one overlay on ``ax`` (a new figure if ``None``); returns the axes."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(3, 3))
    ax.imshow(overlay_array(image, kept, grid, **kw))
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)
    for sp in ax.spines.values():
        sp.set_visible(False)
    if title:
        ax.set_title(title)
    return ax


def overlay_grid(
    df: pd.DataFrame,
    images: dict,
    budget: int,
    methods: Sequence[str] | None = None,
    image_ids: Sequence[str] | None = None,
    grid=(24, 24),
    panel: float = 1.9,
    annotate: bool = True,
    original: bool = True,
):
    """Rows = images, columns = (original +) methods at one ``budget``: the paper's key-findings layout.

    ``images`` maps ``image_id`` to a PIL image. Each panel is titled with the method and annotated with the
    erank of the kept tokens (vision space) when ``annotate``.
    """
    import matplotlib.pyplot as plt

    sub = df[df["budget"] == budget]
    if sub.empty:
        raise ValueError(f"no rows at budget {budget}; budgets present: {sorted(df['budget'].unique())}")
    methods = list(methods) if methods is not None else method_order(sub)
    image_ids = list(image_ids) if image_ids is not None else list(dict.fromkeys(sub["image_id"]))
    ncol = len(methods) + int(original)
    fig, axes = plt.subplots(len(image_ids), ncol, figsize=(panel * ncol, panel * len(image_ids) + 0.3), squeeze=False)
    for r, iid in enumerate(image_ids):
        img = images[iid]
        if original:
            ax = axes[r, 0]
            ax.imshow(tower_view(img))
            ax.set_xticks([])
            ax.set_yticks([])
            ax.grid(False)
            ax.set_ylabel(str(iid), fontsize="small")
            if r == 0:
                ax.set_title("image")
        for c, m in enumerate(methods):
            ax = axes[r, c + int(original)]
            row = sub[(sub["image_id"] == iid) & (sub["method"] == m)]
            if row.empty:
                ax.axis("off")
                continue
            row = row.iloc[0]
            overlay(img, row["kept_indices"], grid, ax=ax, title=short_label(m) if r == 0 else None)
            if annotate and np.isfinite(row["erank_kept_vision"]):
                ax.text(
                    0.02,
                    0.02,
                    f"erank {row['erank_kept_vision']:.1f}",
                    transform=ax.transAxes,
                    fontsize="x-small",
                    color="white",
                    bbox=dict(facecolor="black", alpha=0.55, pad=1.5, lw=0),
                )
            if not original and c == 0:
                ax.set_ylabel(str(iid), fontsize="small")
    fig.suptitle(f"Kept tokens at T = {budget} of {int(sub['n_tokens'].iloc[0])} (dimmed: pruned)", fontsize="medium")
    return fig


# --------------------------------------------------------------------------------------------------------------
# Erank


def ci_points(ax, data: pd.DataFrame, x: str, y: str, *, markersize: float = 5, **kw):
    """Means of ``y`` per ``x`` with their seeded 95% bootstrap CI as unconnected points (``sns.pointplot``; ``kw``:
    its hue, order, palette, ...): the one style of the study's mean-with-CI panels."""
    import seaborn as sns

    return sns.pointplot(
        data=data, x=x, y=y, linestyles="none", errorbar=("ci", 95), seed=0, markersize=markersize, ax=ax, **kw
    )


def image_dots(ax, data: pd.DataFrame, x: str, y: str, *, alpha: float, **kw):
    """One jittered dot per row (an image) of ``data`` (``sns.stripplot``, size 4; ``kw``: its order, hue, ...), the
    cloud behind a panel's means."""
    import seaborn as sns

    return sns.stripplot(data=data, x=x, y=y, size=4, jitter=0.25, alpha=alpha, ax=ax, **kw)


def figure_legend(fig, ax, loc: str = "outside right center", ncol: int | str = 1):
    """One small-type legend for the whole figure from the entries of ``ax`` (``loc`` an ``"outside ..."`` place of
    a constrained layout; ``ncol="all"``: every entry in one row). Returns ``fig``."""
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc=loc, ncol=len(labels) if ncol == "all" else ncol, fontsize="small")
    return fig


def erank_long(df: pd.DataFrame, space: str = "vision") -> pd.DataFrame:
    """Long table ``(image_id, method, family, budget, kind, erank)`` with kind in kept / random / full."""
    cols = {f"erank_kept_{space}": "kept", f"erank_random_{space}": "random", f"erank_full_{space}": "full"}
    keep = ["image_id", "method", "family", "budget"] + list(cols)
    out = df[keep].melt(id_vars=keep[:4], var_name="kind", value_name="erank")
    out["kind"] = out["kind"].map(cols)
    return out.dropna(subset=["erank"])


def short_label(method: str) -> str:
    """``"DivPrune(features=vision)"`` -> ``"DivPrune (vision)"``: method labels that fit on an axis."""
    if "(" not in method or not method.endswith(")"):
        return method
    base, _, args = method[:-1].partition("(")
    vals = [a.split("=", 1)[-1] for a in args.split(",")]
    return f"{base} ({', '.join(v.strip() for v in vals)})"


def erank_points(
    df: pd.DataFrame, space: str = "vision", kinds=("kept", "random"), width: float = 4.2, row: float = 0.26
):
    """Mean erank (95% bootstrap CI over images) per method (rows), kept vs random subsets of the same size, one
    panel per budget; the dashed line is the mean erank of all tokens. Returns the figure."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    long = erank_long(df, space)
    long["method"] = long["method"].map(short_label)
    order = [short_label(m) for m in method_order(df)]
    budgets = sorted(df["budget"].unique())
    fig, axes = plt.subplots(
        1, len(budgets), figsize=(width * len(budgets) + 1.5, row * len(order) + 1.2), sharey=True, squeeze=False
    )
    pal = dict(zip(("kept", "random"), sns.color_palette("colorblind", 2)))
    for ax, b in zip(axes[0], budgets):
        sub = long[(long["budget"] == b) & long["kind"].isin(kinds)]
        ci_points(
            ax,
            sub,
            "erank",
            "method",
            markersize=4,
            hue="kind",
            order=order,
            hue_order=list(kinds),
            palette=pal,
            dodge=0.4,
        )
        full = long[(long["budget"] == b) & (long["kind"] == "full")]["erank"]
        if len(full):
            ax.axvline(full.mean(), ls="--", lw=1, color="0.4", label="all tokens (mean)")
        ax.set_title(f"T = {b}")
        ax.set_ylabel("")
        ax.set_xlabel(f"erank ({space} features)")
        handles, labels = ax.get_legend_handles_labels()
        ax.legend(
            handles,
            [KIND_LABELS.get(lbl, lbl) for lbl in labels],
            fontsize="small",
            loc="upper center",
            bbox_to_anchor=(0.5, -0.12 - 0.6 / max(1, len(order))),
            ncol=3,
        )
    for ax in axes[0][:-1]:
        ax.get_legend().remove()
    return fig


def erank_ratio_bars(df: pd.DataFrame, space: str = "vision", width: float = 6.5, row: float = 0.2):
    """Horizontal bars: erank of the kept tokens divided by the erank of random subsets of the same size
    (1 = chance), per method and budget (mean over images, 95% CI). Returns the figure."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    d = df.assign(ratio=df[f"erank_kept_{space}"] / df[f"erank_random_{space}"]).dropna(subset=["ratio"])
    d["method"] = d["method"].map(short_label)
    order = [short_label(m) for m in method_order(df)]
    fig, ax = plt.subplots(figsize=(width, row * len(order) * max(1, d["budget"].nunique()) / 1.5 + 1.0))
    sns.barplot(
        data=d, y="method", x="ratio", hue="budget", order=order, palette="crest", errorbar=("ci", 95), seed=0, ax=ax
    )
    ax.axvline(1.0, color="0.3", lw=1, ls="--")
    ax.set_ylabel("")
    ax.set_xlabel("erank kept / erank of a random subset of the same size")
    ax.legend(title="T", fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return fig


# --------------------------------------------------------------------------------------------------------------
# Entropy


def per_image(df: pd.DataFrame) -> pd.DataFrame:
    """One row per image with its image-level columns (entropy, full erank, complexity)."""
    cols = [
        "image_id",
        "complexity",
        "n_tokens",
        "erank_full_vision",
        "erank_full_projected",
        "attention_entropy",
        "attention_entropy_norm",
    ]
    return df[[c for c in cols if c in df]].drop_duplicates("image_id").reset_index(drop=True)


def _complexity_palette():
    import seaborn as sns

    c = sns.color_palette("colorblind", 4)
    return {"simple": c[2], "complex": c[3], "unknown": (0.6, 0.6, 0.6)}


def entropy_strip(df: pd.DataFrame, normalized: bool = True, height: float = 3.0, width: float | None = None):
    """Per-image [CLS] attention entropy, images sorted by it, coloured by complexity label. Returns the figure."""
    import matplotlib.pyplot as plt

    col = "attention_entropy_norm" if normalized else "attention_entropy"
    img = per_image(df).sort_values(col)
    img["complexity"] = img["complexity"].fillna("unknown")
    pal = _complexity_palette()
    fig, ax = plt.subplots(figsize=(width or max(4.5, 0.22 * len(img)), height))
    ax.bar(range(len(img)), img[col], color=[pal.get(c, pal["unknown"]) for c in img["complexity"]])
    ax.set_xticks(range(len(img)))
    ax.set_xticklabels(img["image_id"], rotation=75, fontsize="x-small", ha="right")
    ax.set_ylabel("attention entropy / log N" if normalized else "attention entropy (nats)")
    lo = img[col].min()
    ax.set_ylim(max(0.0, lo - 0.1 * (img[col].max() - lo + 1e-9)), None)
    from matplotlib.patches import Patch

    present = [c for c in ("simple", "complex", "unknown") if c in set(img["complexity"])]
    ax.legend(handles=[Patch(color=pal[c], label=c) for c in present], fontsize="small", loc="upper left")
    return fig


def entropy_vs_erank(
    df: pd.DataFrame, normalized: bool = True, space: str = "vision", height: float = 3.2, label_points: bool = True
):
    """Scatter of per-image attention entropy against the erank of all tokens, coloured by complexity."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    col = "attention_entropy_norm" if normalized else "attention_entropy"
    img = per_image(df)
    img["complexity"] = img["complexity"].fillna("unknown")
    fig, ax = plt.subplots(figsize=(height * 1.35, height))
    sns.scatterplot(
        data=img, x=col, y=f"erank_full_{space}", hue="complexity", palette=_complexity_palette(), ax=ax, s=40
    )
    if label_points:
        for _, r in img.iterrows():
            ax.annotate(
                str(r["image_id"]),
                (r[col], r[f"erank_full_{space}"]),
                fontsize=6,
                alpha=0.7,
                xytext=(2, 2),
                textcoords="offset points",
            )
    ax.set_xlabel("attention entropy / log N" if normalized else "attention entropy (nats)")
    ax.set_ylabel(f"erank of all tokens ({space})")
    return fig


__all__ = [
    "set_theme",
    "short_label",
    "method_order",
    "family_palette",
    "method_palette",
    "tower_view",
    "kept_mask",
    "overlay_array",
    "overlay_png",
    "overlay",
    "overlay_grid",
    "ci_points",
    "image_dots",
    "figure_legend",
    "erank_long",
    "erank_points",
    "erank_ratio_bars",
    "per_image",
    "entropy_strip",
    "entropy_vs_erank",
]

"""Chapter 3 (simple vs complex images): image complexity, simple/complex splits, per-split accuracy and CHAIR,
the "who wins where" comparisons, figures and the verdict rules.

The claim (AgilePruner, ICLR 2026, arXiv 2603.01236; project page ``cvsp-lab/AgilePruner`` ``docs/index.html``,
key-findings figure; example numbers in ``data/paper_results.csv``, table ``image_complexity_examples``):
attention-based pruning wins on *simple* images, whose evidence is concentrated (low [CLS] attention entropy, low
erank of the patch features); diversity-based pruning wins on *complex* images, whose evidence is dispersed.

* Complexity of an image: the [CLS] attention entropy (methods-spec §3.2, nats and normalised by log N) and the
  erank of its ``N`` patch features (§3.1), both from the model's own tower (:func:`tower_encoder` runs that
  tower inside :func:`prunelab.study.runner.run_vision`); :func:`image_table`, :func:`separation` (how well a measure
  separates labelled simple from complex images: group means, difference and AUC with bootstrap CIs).
* Splits (:func:`assign_split`): the image set's own labels (the toy world's test split is generated simple or
  complex; the photos are labelled by hand), or a median split on erank or entropy for sets without labels
  (COCO).
* Per split: POPE accuracy (:func:`accuracy_table`), CHAIR (:func:`prunelab.study.scoring.chair_table` with
  ``by=(method, budget, split)``) and the family comparisons (:func:`family_gaps`: attention − diversity on each
  split; :func:`family_interactions`: the difference between the two splits), paired on the same images with the
  bootstrap of :mod:`prunelab.study.paired`.
* :func:`finding3_claims` — the verdict rules as :class:`prunelab.study.verdict.Claim` objects with computed checks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from prunelab.errors import UnknownNameError
from prunelab.eval.stats import two_sample
from prunelab.models.encoders import AdapterEncoder
from prunelab.study.paired import compare, interaction as paired_interaction, metric_table
from prunelab.study.plots import (
    _complexity_palette,
    ci_points,
    figure_legend,
    image_dots,
    method_order,
    per_image,
    short_label,
)
from prunelab.study.verdict import Claim, check, checks_from_summary, paper_results

SPLITS = ("simple", "complex")
#: split_by -> the per-image column a median split uses (``label`` uses the image set's own labels).
SPLIT_MEASURES = {"label": None, "erank": "erank_full_vision", "entropy": "attention_entropy"}
MEASURE_LABELS = {
    "attention_entropy": "attention entropy (nats)",
    "attention_entropy_norm": "attention entropy / log N",
    "erank_full_vision": "erank of all patch tokens",
}
ATTENTION, DIVERSITY = "attention", "diversity"


# --------------------------------------------------------------------------------------------------------------
# The model's own tower as a run_vision encoder


def tower_encoder(gm, qk_layers: Sequence[int] = (-2, -1)) -> AdapterEncoder:
    """A :func:`prunelab.study.runner.run_vision` encoder that runs the vision tower of a loaded
    :class:`prunelab.models.loader.GenerationModel`, with the model's own preprocessing and projector, one image at
    a time: the contexts are exactly those :func:`prunelab.study.generation.run_generation` prunes (same pixels, same
    batch size), so with the same erank statistics both loops keep the same tokens (a test checks). Use it so the
    image-level numbers and overlays of a chapter come from the tower whose tokens the language model reads
    (DINOv2-S for ToyLLaVA, CLIP for llava-hf checkpoints)."""
    qk = tuple(int(q) for q in qk_layers)
    return AdapterEncoder(
        gm.adapter,
        lambda batch: gm.pixels(batch[0]),
        batch_size=1,
        qk_layers=qk,
        fingerprint=lambda: f"tower-of:{gm.fingerprint}|qk={qk}",
    )


# --------------------------------------------------------------------------------------------------------------
# Image complexity and splits


def image_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per image: ``image_id``, ``complexity`` (the set's label or None), ``n_tokens``, attention entropy
    (nats and normalised) and the erank of all tokens (``erank_full_vision``, ``erank_full_projected``)."""
    need = {"image_id", "attention_entropy", "erank_full_vision"}
    if not need <= set(df.columns):
        raise UnknownNameError(
            f"the table lacks {', '.join(sorted(need - set(df.columns)))}; pass a run_vision or run_generation table"
        )
    return per_image(df)


def check_split(by: str, items=None) -> str:
    """``by`` if it is a known split rule (:data:`SPLIT_MEASURES`) and, for ``"label"`` with ``items``
    (:class:`prunelab.study.data.ImageItem`), if some item is labelled simple or complex; else a one-line
    :class:`UnknownNameError` (before any model runs)."""
    if by not in SPLIT_MEASURES:
        raise UnknownNameError(f"unknown split {by!r}; use one of {', '.join(SPLIT_MEASURES)}")
    if by == "label" and items is not None and not any(getattr(it, "complexity", None) in SPLITS for it in items):
        raise UnknownNameError(
            "these images carry no simple/complex labels (e.g. COCO); pass split_by='erank' or "
            "split_by='entropy' for a median split"
        )
    return by


def assign_split(img: pd.DataFrame, by: str = "label") -> pd.Series:
    """``image_id -> "simple" | "complex" | None``.

    ``by="label"``: the image set's own ``complexity`` label (images labelled otherwise, e.g. the toy world's
    "medium", get None; :class:`UnknownNameError` if no image is labelled simple or complex). ``by="erank"`` /
    ``"entropy"``: a median split of ``erank_full_vision`` / ``attention_entropy`` over these images: above the
    median = complex, at or below = simple.
    """
    check_split(by)
    ids = img["image_id"].astype(str)
    if by == "label":
        lab = [v if v in SPLITS else None for v in img["complexity"]]
        if all(v is None for v in lab):
            raise UnknownNameError(
                "these images carry no simple/complex labels (e.g. COCO); pass split_by='erank' or "
                "split_by='entropy' for a median split"
            )
        return pd.Series(lab, index=ids, name="split", dtype=object)
    col = SPLIT_MEASURES[by]
    v = img[col].astype(float)
    med = float(v.median())
    return pd.Series(np.where(v > med, "complex", "simple").astype(object), index=ids, name="split")


def add_split(df: pd.DataFrame, split: pd.Series) -> pd.DataFrame:
    """``df`` with a ``split`` column from ``split`` (by ``image_id``); rows of images without a split dropped."""
    out = df.assign(split=df["image_id"].astype(str).map(split))
    return out[out["split"].isin(SPLITS)].reset_index(drop=True)


def separation(
    img: pd.DataFrame, measure: str, *, label: str = "complexity", n_boot: int = 2000, ci: float = 0.95, seed: int = 0
) -> dict:
    """How ``measure`` separates the images labelled simple from those labelled complex: group sizes and means,
    ``diff`` = mean(complex) − mean(simple) and ``auc`` (P(complex > simple), Mann-Whitney), each with a seeded
    stratified bootstrap CI (images resampled within each label; :func:`prunelab.eval.stats.two_sample`)."""
    if measure not in img:
        raise UnknownNameError(f"measure {measure!r} is not a column; use one of {', '.join(MEASURE_LABELS)}")
    s = img.loc[img[label] == "simple", measure].astype(float).dropna().to_numpy()
    c = img.loc[img[label] == "complex", measure].astype(float).dropna().to_numpy()
    out = {
        "measure": measure,
        "n_simple": len(s),
        "n_complex": len(c),
        "mean_simple": float(s.mean()) if len(s) else math.nan,
        "mean_complex": float(c.mean()) if len(c) else math.nan,
    }
    sep = two_sample(s, c, n_boot=n_boot, ci=ci, seed=seed)
    return {**out, **{k: sep[k] for k in ("diff", "auc", "diff_low", "diff_high", "auc_low", "auc_high")}}


def separation_table(
    img: pd.DataFrame,
    measures: Sequence[str] = ("attention_entropy", "attention_entropy_norm", "erank_full_vision"),
    **kw,
) -> pd.DataFrame:
    """:func:`separation` for every measure, one row each."""
    return pd.DataFrame([separation(img, m, **kw) for m in measures if m in img])


def split_agreement(img: pd.DataFrame, label: str = "complexity") -> pd.DataFrame:
    """For the median splits by erank and by entropy: the share of labelled (simple/complex) images they put on
    the side of their label. 1 = the measure alone recovers the labels; 0.5 = chance."""
    lab = img[img[label].isin(SPLITS)]
    rows = []
    for by in ("erank", "entropy"):
        sp = assign_split(lab, by)
        agree = float((sp.to_numpy() == lab[label].to_numpy()).mean()) if len(lab) else math.nan
        rows.append({"split_by": by, "measure": SPLIT_MEASURES[by], "agreement": agree, "n": len(lab)})
    return pd.DataFrame(rows)


def paper_examples() -> pd.DataFrame:
    """The paper's four example images (LLaVA-1.5-7B's CLIP tower): ``example``, ``split``,
    ``attention_entropy`` (nats), ``erank``."""
    res = paper_results()
    res = res[res["table"] == "image_complexity_examples"]
    wide = res.pivot_table(index="method", columns="metric", values="value", sort=False).reset_index()
    wide["split"] = wide["method"].str.split(":").str[0]
    wide["example"] = wide["method"].str.split(":").str[1]
    wide = wide.rename(columns={"attention_entropy_nats": "attention_entropy"})
    return wide[["example", "split", "attention_entropy", "erank"]].reset_index(drop=True)


# --------------------------------------------------------------------------------------------------------------
# Per-split tables and family comparisons


def families(df: pd.DataFrame) -> dict[str, list[str]]:
    """Method labels per family, in table order (``Vanilla``/base rows excluded)."""
    fam = df.drop_duplicates("method").set_index("method")["family"]
    out: dict[str, list[str]] = {}
    for m, f in fam.items():
        if f != "base":
            out.setdefault(f, []).append(m)
    return out


def accuracy_table(
    pope: pd.DataFrame,
    by: Sequence[str] = ("method", "budget", "split"),
    *,
    n_boot: int = 2000,
    ci: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """POPE per group of ``by`` over all three settings: ``Accuracy`` (share of questions answered correctly, an
    unparsed answer counted wrong; seeded bootstrap CI over images), ``F1`` and ``Yes-ratio``
    (:func:`prunelab.eval.pope.pope_metrics`, unparsed answers read as "no"), ``n_images``, ``n_questions``,
    ``n_unparsed``; plus ``family``. Rows in the study's method order."""
    from prunelab.study.scoring import pope_table

    by = list(by)
    acc = metric_table(pope, "Accuracy", by=by, n_boot=n_boot, ci=ci, seed=seed).rename(
        columns={"value": "Accuracy", "ci_low": "Accuracy_low", "ci_high": "Accuracy_high", "n": "n_images"}
    )
    other = pope_table(pope, by=by, on_unparsed="no")[by + ["F1", "Yes-ratio", "n"]].rename(
        columns={"n": "n_questions"}
    )
    unparsed = (
        pope.assign(_u=pope["pred"].isna()).groupby(by, sort=False, dropna=False)["_u"].sum().rename("n_unparsed")
    )
    out = acc.merge(other, on=by, how="left").merge(unparsed.reset_index(), on=by, how="left")
    fam = pope.drop_duplicates("method").set_index("method")["family"]
    out.insert(by.index("method") + 1, "family", out["method"].map(fam))
    rank = {m: i for i, m in enumerate(method_order(pope))}
    sort_cols = [c for c in ("budget", "method", "split") if c in by]
    return out.sort_values(
        sort_cols,
        key=lambda c: (
            c.map(rank)
            if c.name == "method"
            else (c.map({s: i for i, s in enumerate(SPLITS)}) if c.name == "split" else c)
        ),
        kind="stable",
    ).reset_index(drop=True)


def split_layout(table: pd.DataFrame, values: Sequence[str]) -> pd.DataFrame:
    """A per-split table (rows method x budget x split) in a compact layout: one row per method (table order),
    columns ``(T = budget, split, value)``; the unpruned row (budget N) gets its own ``all N`` block."""
    t = table.assign(T=table["budget"].map(lambda b: f"T = {int(b)}"))
    if "method" in t and (t["method"] == "Vanilla").any():
        t.loc[t["method"] == "Vanilla", "T"] = t.loc[t["method"] == "Vanilla", "budget"].map(lambda b: f"all {int(b)}")
    methods = list(dict.fromkeys(t["method"]))
    blocks = list(dict.fromkeys(t.sort_values("budget", kind="stable")["T"]))
    wide = t.pivot_table(index="method", columns=["T", "split"], values=list(values), aggfunc="first")
    wide = wide.reorder_levels([1, 2, 0], axis=1)
    cols = [(b, sp, v) for b in blocks for sp in SPLITS for v in values if (b, sp, v) in wide.columns]
    return wide.reindex(index=methods, columns=pd.MultiIndex.from_tuples(cols, names=["", "", ""]))


def family_gaps(
    df: pd.DataFrame,
    metric: str,
    *,
    a: str = ATTENTION,
    b: str = DIVERSITY,
    n_boot: int = 2000,
    ci: float = 0.95,
    seed: int = 0,
    interaction: bool = False,
) -> pd.DataFrame:
    """Per budget and split: ``metric(family a) − metric(family b)`` on the split's images, each family's methods
    pooled (:func:`prunelab.study.paired.compare`). With ``interaction=True``, per budget:
    ``[metric(a) − metric(b)]_simple − [metric(a) − metric(b)]_complex`` (:func:`prunelab.study.paired.interaction`,
    images resampled within each split). Empty when a family is absent."""
    fam = families(df)
    if not fam.get(a) or not fam.get(b):
        return pd.DataFrame(
            columns=["budget", "a", "b", "diff_simple", "diff_complex", "interaction", "ci_low", "ci_high"]
            if interaction
            else ["budget", "split", "a", "b", "value_a", "value_b", "diff", "ci_low", "ci_high", "n"]
        )
    boot = dict(n_boot=n_boot, ci=ci, seed=seed)
    if interaction:
        out = paired_interaction(df, fam[a], fam[b], metric, group="split", levels=SPLITS, by=("budget",), **boot)
    else:
        out = compare(df, fam[a], fam[b], metric, by=("budget", "split"), **boot)
    out["a"], out["b"], out["metric"] = a, b, metric
    return out


def family_interactions(df: pd.DataFrame, metric: str, **kw) -> pd.DataFrame:
    """:func:`family_gaps` with ``interaction=True``: per budget, the simple-minus-complex change of the gap."""
    return family_gaps(df, metric, interaction=True, **kw)


# --------------------------------------------------------------------------------------------------------------
# Verdict


def _paper_examples_line(col: str, fmt: str) -> str:
    ex = paper_examples()
    parts = []
    for sp in SPLITS:
        e = ex[ex["split"] == sp]
        parts.append(f"{sp}: " + ", ".join(f"{r.example} {fmt.format(getattr(r, col))}" for r in e.itertuples()))
    return "; ".join(parts) + " (LLaVA-1.5's CLIP tower, four example images)"


#: Why the measure claims are setup checks on the toy world (:func:`finding3_claims`).
TOY_LEVELS_REASON = (
    "The toy world generates its simple scenes with 1-2 large objects on a plain or gradient background and its "
    "complex ones with 6-11 small objects, 2-6 distractors and a textured background, so complex scenes spread "
    "attention and features wider by design."
)


def labels_by_construction(split_by: str, *tables: pd.DataFrame | None) -> bool:
    """Whether a ``split_by="label"`` split uses generated labels: every ``image_set`` named in ``tables`` (those
    with that column) is a ``toyworld:`` set. ``False`` for median splits and when no table names its set."""
    if split_by != "label":
        return False
    sets = set()
    for t in tables:
        if t is not None and "image_set" in t:
            sets |= set(t["image_set"].dropna().astype(str))
    return bool(sets) and all(s.startswith("toyworld") for s in sets)


def finding3_claims(
    pope: pd.DataFrame,
    describe: pd.DataFrame | None,
    img: pd.DataFrame,
    *,
    split_by: str = "label",
    constructed_labels: bool | None = None,
    n_boot: int = 2000,
    ci: float = 0.95,
    seed: int = 0,
) -> list:
    """The verdict rules of finding 3 as :class:`prunelab.study.verdict.Claim` objects (outcomes computed).

    ``pope`` / ``describe``: :func:`prunelab.study.generation.run_generation` tables with a ``split`` column
    (:func:`add_split`); ``img``: :func:`image_table` with a ``split`` column. Families from the tables' ``family``
    column: *attention* (FasterVLM, PruMerge+) and *diversity* (DivPrune, FPS), each pooled. A check passes only if
    its whole ``ci`` bootstrap interval lies on the claimed side of 0 (:func:`prunelab.study.verdict.check`). A measure
    that defines the split (``split_by="erank"`` / ``"entropy"``) cannot also test it: that row is "not testable here".

    ``constructed_labels``: whether the simple/complex labels were generated to differ in what the measures see (the
    toy world's levels); then the two measure claims are setup checks (``by_construction``), not counted. ``None``
    infers it: ``split_by="label"`` on tables whose ``image_set`` column names only ``toyworld:`` sets
    (:func:`labels_by_construction`).
    """
    if constructed_labels is None:
        constructed_labels = labels_by_construction(split_by, pope, img)
    pct = f"{100 * ci:.0f}%"
    claims = []
    lab = img.assign(complexity=img["split"])
    for measure, by, words, fmt in (
        ("attention_entropy", "entropy", "more spread-out [CLS] attention (higher entropy)", "{:.2f}"),
        ("erank_full_vision", "erank", "higher erank of their patch features", "{:.0f}"),
    ):
        checks = []
        if split_by != by:
            s = separation(lab, measure, n_boot=n_boot, ci=ci, seed=seed)
            checks.append(
                check(
                    f"mean complex − mean simple ({s['n_complex']} vs {s['n_simple']} images)",
                    s["diff"],
                    ">",
                    0.0,
                    ci=(s["diff_low"], s["diff_high"]),
                    n=s["n_complex"] + s["n_simple"],
                )
            )
        rule = (
            f"Mean {MEASURE_LABELS[measure]} of the complex images minus that of the simple ones > 0, {pct} "
            "stratified bootstrap CI entirely above 0."
        )
        if split_by == by:
            rule += f" Not testable here: the split itself is a median split on this measure (split_by='{by}')."
        claims.append(
            Claim(
                claim=f"Complex images have {words} than simple ones",
                paper=_paper_examples_line("attention_entropy" if by == "entropy" else "erank", fmt),
                rule=rule,
                checks=checks,
                fmt="{:+.2f}",
                by_construction=bool(constructed_labels) and split_by == "label",
                reason=TOY_LEVELS_REASON,
            )
        )

    def gap_checks(tab, split, sign):
        out = []
        for r in tab[tab["split"] == split].itertuples(index=False):
            v, lo, hi = (
                sign * r.diff,
                sign * (r.ci_high if sign < 0 else r.ci_low),
                sign * (r.ci_low if sign < 0 else r.ci_high),
            )
            out.append(check(f"T={int(r.budget)}, {split} ({int(r.n)} images)", v, ">", 0.0, ci=(lo, hi), n=r.n))
        return out

    def gap_claim(claim, paper, rule, gaps, split, sign):
        # a family gap on one split, signed so that "> 0" is the claimed direction
        return Claim(claim=claim, paper=paper, rule=rule, checks=gap_checks(gaps, split, sign), fmt="{:+.1f}")

    g_acc = family_gaps(pope, "Accuracy", n_boot=n_boot, ci=ci, seed=seed)
    claims.append(
        gap_claim(
            "On simple images, attention-based pruning answers POPE more accurately than diversity-based pruning",
            "direction: attention-based pruning wins on simple images (concentrated evidence)",
            (
                f"Per budget, POPE accuracy of the attention family (its methods pooled) minus that of the diversity "
                f"family on the simple images, paired on the same images: > 0 with its {pct} bootstrap CI above 0."
            ),
            g_acc,
            "simple",
            +1,
        )
    )
    claims.append(
        gap_claim(
            "On complex images, diversity-based pruning answers POPE more accurately than attention-based pruning",
            "direction: diversity-based pruning wins on complex images (dispersed evidence)",
            (
                f"Per budget, POPE accuracy of the diversity family minus that of the attention family on the complex "
                f"images, paired: > 0 with its {pct} bootstrap CI above 0."
            ),
            g_acc,
            "complex",
            -1,
        )
    )
    inter = family_interactions(pope, "Accuracy", n_boot=n_boot, ci=ci, seed=seed)
    claims.append(
        Claim(
            claim="Attention's advantage over diversity is larger on simple than on complex images (POPE)",
            paper="direction: the better family flips from attention (simple) to diversity (complex)",
            rule=(
                f"Per budget, [accuracy(attention) − accuracy(diversity)] on simple images minus the same on complex "
                f"images > 0, {pct} stratified bootstrap CI above 0 (the weakest reading of the finding: the gap moves "
                "in the claimed direction even if it does not change sign)."
            ),
            checks=checks_from_summary(
                inter, "budget", ">", 0.0, value="interaction", n=("n_simple", "n_complex"), template="T={budget:.0f}"
            ),
            fmt="{:+.1f}",
        )
    )
    if describe is not None and len(describe):
        g_rec = family_gaps(describe, "Recall", n_boot=n_boot, ci=ci, seed=seed)
        claims.append(
            gap_claim(
                "On complex images, diversity-based pruning lets the model name more of the objects (CHAIR Recall)",
                "implied by the finding (dispersed evidence is kept); the paper's CHAIR table pools all images",
                f"Per budget, Recall(diversity) − Recall(attention) on the complex images > 0, {pct} paired-bootstrap CI above 0.",
                g_rec,
                "complex",
                -1,
            )
        )
        g_hal = family_gaps(describe, "CHAIR_i", n_boot=n_boot, ci=ci, seed=seed)
        claims.append(
            gap_claim(
                "On simple images, attention-based pruning hallucinates less (CHAIR_i)",
                "implied by the finding (diverse tokens of a simple image are background); the paper's CHAIR table pools all images",
                f"Per budget, CHAIR_i(diversity) − CHAIR_i(attention) on the simple images > 0, {pct} paired-bootstrap CI above 0.",
                g_hal,
                "simple",
                -1,
            )
        )
    return claims


# --------------------------------------------------------------------------------------------------------------
# Figures


def measures_figure(img: pd.DataFrame, paper: pd.DataFrame | None = None, label: str = "complexity"):
    """Attention entropy (nats) and erank of all tokens per image, by label (strip + mean with 95% CI); with
    ``paper``, the paper's four example images as a third panel (a different tower: compare directions, not
    values)."""
    import matplotlib.pyplot as plt

    d = img.assign(**{label: img[label].fillna("unknown")})
    order = [s for s in (*SPLITS, "medium", "unknown") if s in set(d[label])]
    pal = _complexity_palette()
    ncol = 2 + int(paper is not None and len(paper) > 0)
    fig, axes = plt.subplots(1, ncol, figsize=(3.1 * ncol, 3.0), squeeze=False)
    for ax, col in zip(axes[0], ("attention_entropy", "erank_full_vision")):
        image_dots(ax, d, label, col, alpha=0.6, order=order, hue=label, palette=pal, legend=False)
        ci_points(ax, d, label, col, order=order, color="black", markers="D")
        ax.set(xlabel="", ylabel=MEASURE_LABELS[col], title=f"this run: {MEASURE_LABELS[col].split(' (')[0]}")
    if ncol == 3:
        ax = axes[0][2]
        for r in paper.itertuples():
            ax.scatter(r.attention_entropy, r.erank, color=pal.get(r.split, "grey"), s=40)
            ax.annotate(
                r.example, (r.attention_entropy, r.erank), fontsize=7, xytext=(3, 2), textcoords="offset points"
            )
        ax.set(xlabel="attention entropy (nats)", ylabel="erank", title="paper (CLIP, 4 examples)")
        ax.margins(0.25)
    return fig


def gap_figure(gaps: pd.DataFrame, labels: dict | None = None):
    """ "Who wins where": per metric (panels), attention − diversity on simple and complex images (x), one line per
    budget with 95% CIs; above 0 = attention better for Accuracy/Recall, hallucinates *more* for CHAIR_i."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    labels = labels or {"Accuracy": "POPE accuracy", "CHAIR_i": "CHAIR$_i$", "Recall": "Recall", "CHAIR_s": "CHAIR$_s$"}
    metrics = list(dict.fromkeys(gaps["metric"]))
    budgets = sorted(gaps["budget"].unique())
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.0 * len(metrics) + 0.6, 3.0), squeeze=False)
    shades = sns.color_palette("crest", len(budgets))
    for ax, m in zip(axes[0], metrics):
        g = gaps[gaps["metric"] == m]
        for k, (b, col) in enumerate(zip(budgets, shades)):
            t = g[g["budget"] == b].set_index("split").reindex(list(SPLITS))
            x = np.arange(len(SPLITS)) + (k - (len(budgets) - 1) / 2) * 0.08
            err = np.nan_to_num(np.array([t["diff"] - t["ci_low"], t["ci_high"] - t["diff"]], dtype=float))
            ax.errorbar(x, t["diff"], yerr=err, fmt="-o", color=col, capsize=3, label=f"T = {int(b)}", ms=5)
        ax.axhline(0, color="0.4", lw=1)
        ax.set_xticks(range(len(SPLITS)), SPLITS)
        ax.set(title=labels.get(m, m), ylabel="attention − diversity (pp)")
        ax.set_xlim(-0.5, len(SPLITS) - 0.5)
    return figure_legend(fig, axes[0][0])


def accuracy_figure(acc: pd.DataFrame):
    """POPE accuracy per method (rows) on simple and complex images (colours), one panel per budget, with 95% CIs
    over images; the dashed line is the unpruned model when present."""
    import matplotlib.pyplot as plt

    from prunelab.study.generation import VANILLA

    pal = _complexity_palette()
    van = acc[acc["method"] == VANILLA]
    t = acc[acc["method"] != VANILLA]
    methods = list(dict.fromkeys(t["method"]))
    budgets = sorted(t["budget"].unique())
    fig, axes = plt.subplots(
        1,
        len(budgets),
        figsize=(3.6 * len(budgets) + 1.2, 0.42 * len(methods) + 1.3),
        sharey=True,
        sharex=True,
        squeeze=False,
    )
    y0 = np.arange(len(methods))
    for ax, b in zip(axes[0], budgets):
        for k, sp in enumerate(SPLITS):
            s = t[(t["budget"] == b) & (t["split"] == sp)].set_index("method").reindex(methods)
            err = np.nan_to_num(
                np.array([s["Accuracy"] - s["Accuracy_low"], s["Accuracy_high"] - s["Accuracy"]], dtype=float)
            )
            ax.errorbar(
                s["Accuracy"], y0 + (k - 0.5) * 0.25, xerr=err, fmt="o", color=pal[sp], capsize=2, ms=5, label=sp
            )
            v = van[van["split"] == sp]
            if len(v):
                ax.axvline(float(v["Accuracy"].iloc[0]), color=pal[sp], ls="--", lw=1, label=f"{sp}, all tokens")
        ax.set(title=f"T = {int(b)}", xlabel="POPE accuracy (%)")
    axes[0][0].set_yticks(y0, [short_label(m) for m in methods])
    axes[0][0].invert_yaxis()
    return figure_legend(fig, axes[0][0])


__all__ = [
    "SPLITS",
    "TOY_LEVELS_REASON",
    "labels_by_construction",
    "SPLIT_MEASURES",
    "tower_encoder",
    "image_table",
    "check_split",
    "assign_split",
    "split_layout",
    "add_split",
    "separation",
    "separation_table",
    "split_agreement",
    "paper_examples",
    "families",
    "accuracy_table",
    "family_gaps",
    "family_interactions",
    "finding3_claims",
    "measures_figure",
    "gap_figure",
    "accuracy_figure",
]

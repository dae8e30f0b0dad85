"""Attention-family pre-LLM pruners: FasterVLM, PruMerge, PruMerge+ and a fixed-budget PruMerge+.

* FasterVLM keeps the ``T`` patches the [CLS] token attends to most (methods-spec §2.1).
* PruMerge / PruMerge+ score patches with the *last* vision layer's [CLS] attention recomputed from its raw
  q/k projections as one concatenated head, choose how many to keep with an IQR outlier rule, and fold the
  information of the other patches into the kept ones (methods-spec §2.2).

All functions here are pure functions of a :class:`~prunelab.methods.base.VisualContext` and work for any
ViT-style tower (CLIP in LLaVA, DINOv2 in the toy model): nothing depends on the width, the number of heads or
``N`` beyond what the context carries.
"""

from __future__ import annotations

import numpy as np
import torch

from prunelab.errors import CapabilityError
from prunelab.methods.base import Pruner, PruneResult, VisualContext, register


def attention_ranking(scores: torch.Tensor) -> torch.Tensor:
    """Indices sorted by descending score; exact ties go to the lower index (stable), so results never
    depend on the backend's ``topk`` tie-breaking."""
    return torch.sort(scores.double(), descending=True, stable=True).indices


def topk_by_attention(scores: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k`` highest-scoring indices in descending-score order (stable ties)."""
    return attention_ranking(scores)[:k]


@register("FasterVLM")
class FasterVLM(Pruner):
    """Keep the ``T`` patches with the largest [CLS] attention, in raster order.

    Source: FasterVLM ("[CLS] attention is all you need", arXiv 2412.01818), ``Theia-4869/FasterVLM``
    ``llava/model/llava_arch.py::encode_images`` (top-k of the head-mean [CLS]->patch attention of vision layer
    -2, boolean mask, rows kept in raster order) and ``clip_encoder.py::feature_select``. The score is
    ``ctx.cls_attention`` (= ``attentions[-2][:, :, 0, 1:].mean(1)``). No parameters besides ``T``.

    [RECONSTRUCTION] exact score ties (absent with real attention) go to the lower patch index; the original
    leaves them to ``torch.topk``.
    """

    family = "attention"
    requires = ("attention",)
    order = "raster"
    source = "arXiv 2412.01818; Theia-4869/FasterVLM llava/model/llava_arch.py::encode_images"
    paper_name = "FasterVLM"

    def __init__(self):
        super().__init__()

    def select(self, ctx: VisualContext, budget: int) -> PruneResult:
        keep = torch.sort(topk_by_attention(ctx.cls_attention, budget)).values
        return PruneResult(
            indices=keep,
            order="raster",
            stats={
                "attention_mass_top": float(ctx.cls_attention.double()[keep].sum() / ctx.cls_attention.double().sum())
            },
        )


# --------------------------------------------------------------------------------------------- PruMerge helpers


def concat_heads(x: torch.Tensor) -> torch.Tensor:
    """``(H, L, d_head)`` per-head projections -> ``(L, H*d_head)``, i.e. the raw ``q_proj``/``k_proj``
    output that PruMerge's forward hooks capture (heads laid out contiguously, as the tower reshapes them)."""
    if x.ndim == 2:
        return x
    if x.ndim != 3:
        raise CapabilityError(f"q/k tensors must be (H, N+1, d_head), got shape {tuple(x.shape)}; rebuild the context")
    h, length, d = x.shape
    return x.permute(1, 0, 2).reshape(length, h * d)


def prumerge_cls_attention(ctx: VisualContext, layer: int = -1, scale: float | None = None) -> torch.Tensor:
    """PruMerge's score ``a'``: softmax(q_CLS · Kᵀ · C^-1/2) over all ``N+1`` keys of vision layer ``layer``,
    all heads concatenated into one head; the CLS column is then dropped (the row is *not* renormalised).

    ``C`` defaults to the concatenated q/k width ``H*d_head`` (1024 for CLIP ViT-L, where it equals the feature
    width the original code uses). Computed in float64. Returns ``(N,)``.
    """
    q = concat_heads(ctx.require_qk(layer, "queries")).double()
    k = concat_heads(ctx.require_qk(layer, "keys")).double()
    n = ctx.n_tokens
    if q.shape[0] != n + 1 or k.shape[0] != n + 1:
        raise CapabilityError(
            f"layer {layer} q/k have {q.shape[0]} rows but the context has {n} patches + CLS; rebuild the context"
        )
    s = q.shape[1] ** -0.5 if scale is None else float(scale)
    logits = (k @ q[0]) * s
    return torch.softmax(logits, dim=0)[1:]


def iqr_outlier_count(scores: torch.Tensor) -> int:
    """Number of scores strictly above ``Q3 + 1.5·IQR`` (numpy linear percentiles on float32, as
    ``LLaVA-PruMerge clip_encoder.py::outlier_dectection``)."""
    a = scores.detach().to(torch.float32).cpu().numpy().ravel()
    q1, q3 = np.percentile(a, 25), np.percentile(a, 75)
    return int((a > q3 + 1.5 * (q3 - q1)).sum())


def _normalized_keys(ctx: VisualContext, layer: int) -> torch.Tensor:
    k = concat_heads(ctx.require_qk(layer, "keys")).float()[1:]  # patch rows, CLS dropped
    return k / k.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def merge_neighbours(
    x: torch.Tensor, keys_norm: torch.Tensor, scores: torch.Tensor, kept: torch.Tensor, n_neighbours: int = 32
) -> torch.Tensor:
    """PruMerge's merge, vectorised: for each kept token ``i``, its ``n_neighbours`` most key-similar *other*
    patches ``j`` (kept or not) contribute ``a'_j · x_j``, added to ``x_i`` (unnormalised weights).

    Equivalent to the original per-token loop (``merge_neighbours_loop``) up to float summation order and the
    tie order of exactly equal similarities. ``n_neighbours`` is capped at ``N-1``.
    """
    n = x.shape[0]
    k = min(int(n_neighbours), n - 1)
    if kept.numel() == 0:
        return x.new_zeros((0, x.shape[1]))
    if k <= 0:
        return x[kept].clone()
    sim = keys_norm[kept] @ keys_norm.T  # (k_kept, N)
    sim[torch.arange(kept.numel()), kept] = float("-inf")  # a token is never its own neighbour
    nb = torch.topk(sim, k, dim=1).indices  # (k_kept, k)
    w = scores.to(x.dtype)[nb].unsqueeze(-1)
    return x[kept] + (x[nb] * w).sum(dim=1)


def merge_neighbours_loop(
    x: torch.Tensor, keys_norm: torch.Tensor, scores: torch.Tensor, kept: torch.Tensor, n_neighbours: int = 32
) -> torch.Tensor:
    """Straightforward per-token formulation of :func:`merge_neighbours`, following the structure of
    ``token_prune_merge_advanced(_plus)``: for kept token number ``i`` the candidate list is the other kept
    tokens (before ``i``, then after ``i``) followed by the non-kept tokens. Test oracle only (slow)."""
    n = x.shape[0]
    kept_l = [int(i) for i in kept]
    kept_set = set(kept_l)
    rest_non = [j for j in range(n) if j not in kept_set]
    k = min(int(n_neighbours), n - 1)
    out = torch.zeros((len(kept_l), x.shape[1]), dtype=x.dtype)
    for r, i in enumerate(kept_l):
        rest = kept_l[:r] + kept_l[r + 1 :] + rest_non
        if k <= 0:
            out[r] = x[i]
            continue
        sims = keys_norm[rest] @ keys_norm[i]
        top = torch.topk(sims, k).indices
        chosen = torch.tensor(rest)[top]
        out[r] = x[i] + (x[chosen] * scores.to(x.dtype)[chosen].unsqueeze(-1)).sum(dim=0)
    return out


def prumerge_spatial_samples(n: int, ratio: float, exclude: torch.Tensor) -> torch.Tensor:
    """PruMerge+'s uniform raster samples: positions ``0, s, 2s, … < N-1`` with ``s = int(int(1/ratio)/3)``
    that are not already kept (``token_prune_merge_advanced_plus``, inference branch; the original's hard-coded
    575 is ``N-1``). ``s`` is floored at 1 [RECONSTRUCTION] (the original errors when the step is 0)."""
    step = max(1, int(int(1.0 / ratio) / 3))
    seq = torch.arange(0, n - 1, step)
    ex = set(int(i) for i in exclude)
    return torch.tensor([int(i) for i in seq if int(i) not in ex], dtype=torch.long)


def _finish_prumerge(
    ctx: VisualContext,
    a: torch.Tensor,
    kept: torch.Tensor,
    layer: int,
    n_neighbours: int,
    extra_token: bool,
    stats: dict,
) -> PruneResult:
    x = ctx.features.float()
    merged = merge_neighbours(x, _normalized_keys(ctx, layer), a, kept, n_neighbours)
    indices = kept.clone()
    if extra_token:
        mask = torch.ones(ctx.n_tokens, dtype=torch.bool)
        mask[kept] = False
        extra = (x[mask] * a.to(x.dtype)[mask].unsqueeze(-1)).sum(dim=0, keepdim=True)
        merged = torch.cat([merged, extra], dim=0)
        indices = torch.cat([indices, torch.tensor([-1])])
    stats.update(n_output=int(merged.shape[0]), extra_token=bool(extra_token))
    return PruneResult(indices=indices, tokens=merged, token_space="vision", order="attention", stats=stats)


def _merge_settings(pruner: Pruner, layer: int, n_neighbours: int) -> None:
    """The tower layer whose [CLS] attention and keys the PruMerge family reads, and how many key-nearest
    neighbours each kept token merges (methods-spec §2.2)."""
    if n_neighbours < 0:
        raise ValueError(f"n_neighbours must be >= 0, got {n_neighbours}")
    pruner.layer = int(layer)
    pruner.n_neighbours = int(n_neighbours)


class _PruMergeBase(Pruner):
    family = "attention"
    requires = ("keys[-1]", "queries[-1]")
    adaptive = True  # the output count comes from the IQR rule, not from T
    order = "attention"
    _plus = False

    def __init__(self, layer: int = -1, n_neighbours: int = 32, min_keep: int = 1):
        super().__init__()
        if min_keep < 0:
            raise ValueError(f"min_keep must be >= 0, got {min_keep}")
        _merge_settings(self, layer, n_neighbours)
        self.min_keep = int(min_keep)

    def select(self, ctx: VisualContext, budget: int) -> PruneResult:
        n = ctx.n_tokens
        a = prumerge_cls_attention(ctx, self.layer)
        n_out = iqr_outlier_count(a)
        count = max(n_out, self.min_keep)
        ratio = count / n
        # The original's float round-trip int(N*ratio) can lose one token for some N (never for N=576); kept
        # for fidelity, but never below min_keep.
        k = max(int(n * ratio), min(self.min_keep, n))
        kept = topk_by_attention(a, k)
        stats = {"adaptive_ratio": ratio, "n_outliers": n_out, "n_attention": int(k), "budget_ignored": True}
        if self._plus:
            spatial = prumerge_spatial_samples(n, ratio, kept)
            kept = torch.cat([kept, spatial])
            stats["n_spatial"] = int(spatial.numel())
        return _finish_prumerge(ctx, a, kept, self.layer, self.n_neighbours, True, stats)


@register("PruMerge")
class PruMerge(_PruMergeBase):
    """LLaVA-PruMerge (arXiv 2403.15388), adaptive: the token count comes from the image, not from ``T``.

    Source: ``42Shawn/LLaVA-PruMerge`` ``llava/model/multimodal_encoder/clip_encoder.py::outlier_dectection``
    and ``::token_prune_merge_advanced``.

    1. ``a'`` = :func:`prumerge_cls_attention` of layer ``layer`` (default -1, the last layer; CLIP layer 23).
    2. ``k = int(N·ratio)`` with ``ratio = #{a' > Q3 + 1.5·IQR} / N``; kept = top-``k`` of ``a'``, descending.
    3. Each kept token absorbs ``Σ a'_j x_j`` over its ``n_neighbours`` (32) most key-similar other patches
       (:func:`merge_neighbours`, cosine of layer-``layer`` keys, all heads concatenated), ``x`` = ``ctx.features``.
    4. One extra EViT token ``Σ_{j not kept} a'_j x_j`` is appended.

    Output: ``k + 1`` vision-space tokens in descending-attention order, extra token last (``indices`` -1).
    **Adaptive: the budget ``T`` is validated but ignored** (``stats["budget_ignored"]``); the output count
    varies per image.

    [RECONSTRUCTION] ``min_keep`` (default 1): if no score is an outlier the original keeps only the extra
    token; here at least ``min_keep`` tokens are kept. ``n_neighbours`` is capped at ``N-1`` for small towers.
    """

    source = "arXiv 2403.15388; 42Shawn/LLaVA-PruMerge clip_encoder.py::token_prune_merge_advanced"


@register("PruMerge+")
class PruMergePlus(_PruMergeBase):
    """LLaVA-PruMerge+ (arXiv 2403.15388), adaptive: PruMerge's outliers plus uniform raster samples.

    Source: ``42Shawn/LLaVA-PruMerge`` ``clip_encoder.py::token_prune_merge_advanced_plus`` (inference branch,
    ``if_adaptive=True``). As :class:`PruMerge`, then the spatial samples of
    :func:`prumerge_spatial_samples` (positions ``0, s, 2s, … < N-1``, ``s = int(int(1/ratio)/3)``, skipping
    tokens already kept) are appended after the attention tokens; every kept token (attention or spatial) is
    merged with its 32 key-nearest patches, and the extra token sums the patches kept by neither.

    Output order: attention tokens (descending ``a'``), spatial samples (raster), extra token. **Adaptive:
    the budget ``T`` is validated but ignored.** Use ``"PruMerge+fixed"`` for an exact budget.
    [RECONSTRUCTION] ``min_keep`` and the floor of the sampling step at 1 (see :class:`PruMerge`).
    """

    source = "arXiv 2403.15388; 42Shawn/LLaVA-PruMerge clip_encoder.py::token_prune_merge_advanced_plus"
    paper_name = "PruMerge+"
    _plus = True


def evenly_spaced(candidates: torch.Tensor, m: int) -> torch.Tensor:
    """``m`` entries of ``candidates`` at positions ``floor(i·R/m)``, ``i = 0..m-1`` (``R = len``): a uniform
    raster sample of exactly ``m`` distinct tokens when ``candidates`` is in raster order."""
    r = candidates.numel()
    if m <= 0:
        return candidates[:0]
    if m > r:
        raise ValueError(f"cannot take {m} samples from {r} candidates")
    pos = (torch.arange(m, dtype=torch.long) * r) // m
    return candidates[pos]


@register("PruMerge+fixed")
class PruMergePlusFixed(Pruner):
    """PruMerge+ at a fixed budget: exactly ``T`` output tokens. [RECONSTRUCTION — no official code]

    Papers that report PruMerge+ at 64/128 tokens (VisPruner, AgilePruner) must replace the IQR count by the
    budget; methods-spec §2.2 "fixed-budget variant". Scores, merging and the extra token are PruMerge+'s
    (``42Shawn/LLaVA-PruMerge clip_encoder.py::token_prune_merge_advanced_plus``); only the counts change:

    * ``slots = T - 1`` if ``extra_token`` else ``T``;
    * ``k_att = round(T · k_att_fraction)`` attention tokens (top ``a'``), clipped to ``[1, slots]`` when
      ``slots >= 1`` (so small budgets keep at least one attention token);
    * ``slots - k_att`` spatial tokens: evenly spaced (:func:`evenly_spaced`) over the not-yet-kept patches in
      raster order — the exact-count counterpart of PruMerge+'s arithmetic raster sample;
    * merge each kept token with its ``n_neighbours`` key-nearest patches, then append the extra EViT token.

    Output order as PruMerge+ (attention, spatial, extra), vision-space tokens; ``T = 1`` with
    ``extra_token=True`` gives the extra token alone.
    """

    family = "attention"
    requires = ("keys[-1]", "queries[-1]")
    order = "attention"
    source = "[RECONSTRUCTION] of arXiv 2403.15388 PruMerge+ at a fixed budget (methods-spec §2.2)"
    paper_name = "PruMerge+"

    def __init__(self, k_att_fraction: float = 0.25, extra_token: bool = True, layer: int = -1, n_neighbours: int = 32):
        super().__init__()
        if not 0.0 <= float(k_att_fraction) <= 1.0:
            raise ValueError(f"k_att_fraction must be in [0, 1], got {k_att_fraction}")
        self.k_att_fraction = float(k_att_fraction)
        self.extra_token = bool(extra_token)
        _merge_settings(self, layer, n_neighbours)

    def select(self, ctx: VisualContext, budget: int) -> PruneResult:
        n = ctx.n_tokens
        a = prumerge_cls_attention(ctx, self.layer)
        slots = budget - 1 if self.extra_token else budget
        k_att = int(round(budget * self.k_att_fraction))
        k_att = min(max(k_att, 1), slots) if slots >= 1 else 0
        top = topk_by_attention(a, k_att)
        rest = torch.ones(n, dtype=torch.bool)
        rest[top] = False
        spatial = evenly_spaced(torch.nonzero(rest).flatten(), slots - k_att)
        kept = torch.cat([top, spatial])
        stats = {"n_attention": int(k_att), "n_spatial": int(spatial.numel())}
        return _finish_prumerge(ctx, a, kept, self.layer, self.n_neighbours, self.extra_token, stats)


__all__ = [
    "FasterVLM",
    "PruMerge",
    "PruMergePlus",
    "PruMergePlusFixed",
    "attention_ranking",
    "topk_by_attention",
    "concat_heads",
    "prumerge_cls_attention",
    "iqr_outlier_count",
    "merge_neighbours",
    "merge_neighbours_loop",
    "prumerge_spatial_samples",
    "evenly_spaced",
]

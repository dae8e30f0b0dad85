"""Text-conditioned pre-LLM pruning: CDPruner (methods-spec §2.7).

CDPruner (NeurIPS'25, arXiv 2506.10967; ``Theia-4869/CDPruner`` ``llava/model/llava_arch.py::encode_images``,
``llava/model/multimodal_encoder/clip_encoder.py::load_text_tower/forward``) selects a subset of visual tokens
that is both diverse and relevant to the instruction by greedy MAP inference of a conditional DPP:

1. similarity ``S = cos`` of the **projected** tokens (what the LLM receives), in float32;
2. relevance ``r_i`` of each token to the instruction, min-max normalised over the image as the source does,
   ``(r - min + 1e-6) / (max - min)``;
3. kernel ``L = diag(r) · S · diag(r)``; greedy MAP (Chen, Zhang & Zhou, NeurIPS 2018, "Fast greedy MAP
   inference for DPP": incremental Cholesky rows, pick the largest remaining marginal gain ``d_i²``) in
   float32, as the source, selects exactly ``T`` tokens; indices sorted (raster order), positions contiguous.
   Given the same inputs the picks equal the source's bit for bit (``tests/test_cdpruner.py``);
   ``precision="float64"`` keeps this library's earlier float64 greedy without the ``1e-6``.

**Relevance space — a documented deviation.** The source embeds the image tokens with CLIP's ``post_layernorm`` +
``visual_projection`` and the instruction with CLIP's text tower (77-token segments), and uses the *negated*
cosine (an empirical choice its author confirmed, issues #14/#19: "observed only in CLIP"). Neither ToyLLaVA
(DINOv2 tower) nor a llava-hf checkpoint carries a CLIP text tower, and none can be downloaded here. So, when no
CLIP text embedding is supplied, relevance is measured in the **LLM's own input-embedding space**: the projected
visual tokens against the LLM input embeddings of the instruction tokens (``ctx.text_embeds``, filled by the
adapter with the tokens after the image). This is the space where the LLM itself compares image and text
inputs, it needs no extra weights, and both sides are what the LLM actually reads. The instruction is pooled into
one vector (mean of its token embeddings: the analogue of one CLIP text segment); ``pooling="tokens"`` averages
per-token cosines instead. ``negate`` keeps the source's sign flip by default (faithful to the code); since the
flip was tuned for CLIP space, ``negate=False`` is exposed for the ablation. ``theta`` enables the source's
commented-out variant ``r <- exp(alpha·r)``, ``alpha = theta / (2(1 - theta))``.
"""

from __future__ import annotations

import torch

from prunelab.errors import BudgetError, CapabilityError, UnknownNameError
from prunelab.methods.base import Pruner, PruneResult, VisualContext, register

POOLINGS = ("mean", "tokens")


PRECISIONS = ("float32", "float64")


def dpp_greedy_map(kernel: torch.Tensor, k: int, precision: str = "float32", eps: float | None = None) -> torch.Tensor:
    """Greedy MAP inference for a DPP with PSD ``kernel`` ``(N, N)``: ``k`` indices in selection order.

    Chen et al. 2018 (Algorithm 1): keep ``d_i² = L_ii - ||c_i||²`` (the gain of adding ``i``) and the rows
    ``c`` of the incremental Cholesky factor; each step picks ``argmax d²`` (ties -> lowest index), then
    ``e_i = (L_ji - <c_j, c_i>) / d_j`` updates every ``d_i² -= e_i²``.

    ``precision="float32"`` (default) runs it as the source does (Theia-4869/CDPruner ``llava_arch.py::
    encode_images``, lines 170-181: float32 rows, the same einsum, ``sqrt`` and updates on a batch of one), so
    the picks are the source's bit for bit on the same device; ``"float64"`` is this library's earlier
    variant. A pick whose gain is ``<= eps`` (default 0 in float32, 1e-10 in float64) updates nothing: the
    kernel's rank is exhausted. The source divides by ``sqrt`` of that gain anyway, which gives NaN gains and
    repeated picks (fewer than ``k`` distinct tokens); here the remaining picks continue by the same argmax
    over the unselected tokens' (tiny) gains, so exactly ``k`` distinct indices are returned.
    """
    n = kernel.shape[0]
    if not 1 <= k <= n:
        raise BudgetError(f"DPP selection size k={k} is outside 1..{n}; choose 1 <= k <= {n}")
    if precision not in PRECISIONS:
        raise UnknownNameError(f"unknown precision {precision!r}; known: {', '.join(PRECISIONS)}")
    dtype = torch.float32 if precision == "float32" else torch.float64
    if eps is None:
        eps = 0.0 if precision == "float32" else 1e-10
    L = kernel.detach().to(dtype).unsqueeze(0)  # (1, N, N): a batch of one, as the source
    b = torch.zeros(1, dtype=torch.long, device=L.device)
    rows = torch.zeros(k, 1, n, dtype=dtype, device=L.device)
    gains = torch.diagonal(L, dim1=1, dim2=2).clone()
    out = []
    for t in range(k):
        j = torch.argmax(gains, dim=-1)
        out.append(int(j))
        gain = gains[b, j]
        if float(gain) > eps:
            e = (L[b, j] - torch.einsum("tb,tbn->bn", rows[:t, b, j], rows[:t])) / torch.sqrt(gain).unsqueeze(-1)
            rows[t] = e
            gains -= torch.square(e)
        gains[b, j] = -float("inf")
    return torch.tensor(out, dtype=torch.long)


def relevance(
    tokens: torch.Tensor,
    text: torch.Tensor,
    pooling: str = "mean",
    negate: bool = True,
    theta: float | None = None,
    offset: float = 1e-6,
) -> torch.Tensor:
    """Instruction relevance of each token, min-max normalised (see module docstring).

    As the source (``llava_arch.py::encode_images`` lines 156-160): cosine of each token with each text row,
    mean over the rows (``pooling="tokens"``; ``"mean"`` first pools the text into one row), negated, then
    ``(r - min + offset) / (max - min)`` with the source's ``offset = 1e-6`` (``offset=0`` gives exactly
    ``[0, 1]``). A constant ``r`` (zero span, where the source divides by zero) gives all ones.
    """
    x = tokens.float()
    x = x / x.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    t = text.float()
    if pooling == "mean":
        t = t.mean(0, keepdim=True)
    elif pooling != "tokens":
        raise UnknownNameError(f"unknown text pooling {pooling!r}; known: {', '.join(POOLINGS)}")
    tn = t / t.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    cos = x @ tn.T  # (N, M)
    r = (-cos if negate else cos).mean(dim=-1)
    span = r.max() - r.min()
    r = (r - r.min() + offset) / span if float(span.detach()) > 0 else torch.ones_like(r)
    if theta is not None:
        alpha = theta / (2.0 * (1.0 - theta))
        r = torch.exp(alpha * r)
    return r


@register("CDPruner")
class CDPruner(Pruner):
    """Conditional-DPP selection of ``T`` projected tokens, relevance from the instruction (module docstring).

    Parameters: ``pooling`` (``"mean"``/``"tokens"``), ``negate`` (source's sign flip, default True),
    ``theta`` (``None`` = plain relevance as in the source's active code; else ``exp`` variant, ``0 < theta < 1``),
    ``precision`` of the greedy (``"float32"``, the source's, default; ``"float64"`` the earlier variant, which
    also drops the source's ``+ 1e-6`` in the relevance normalisation, so it reproduces earlier results).
    Needs ``ctx.text_embeds`` ``(L, D)`` in the projected space's width and a projector (or ``ctx.projected``).

    Given the same projected tokens and relevance inputs, the default selection is the source's bit for bit
    (similarity, relevance, kernel and greedy are the same float32 operations on a batch of one).
    """

    family = "text"
    requires = ("projected", "text")
    order = "raster"
    source = "arXiv 2506.10967; Theia-4869/CDPruner llava/model/llava_arch.py::encode_images"

    def __init__(
        self, pooling: str = "mean", negate: bool = True, theta: float | None = None, precision: str = "float32"
    ):
        super().__init__(pooling=pooling, negate=negate, theta=theta, precision=precision)
        if pooling not in POOLINGS:
            raise UnknownNameError(f"unknown text pooling {pooling!r}; known: {', '.join(POOLINGS)}")
        if precision not in PRECISIONS:
            raise UnknownNameError(
                f"unknown CDPruner precision {precision!r}; pass precision='float32' (the source's) or 'float64'"
            )
        self.precision = precision
        if theta is not None and not 0.0 < float(theta) < 1.0:
            raise BudgetError(f"CDPruner theta must be in (0, 1), got {theta!r}; pass e.g. theta=0.5 or None")
        self.pooling, self.negate = pooling, bool(negate)
        self.theta = None if theta is None else float(theta)

    def select(self, ctx: VisualContext, budget: int) -> PruneResult:
        if ctx.text_embeds is None or ctx.text_embeds.numel() == 0:
            raise CapabilityError(
                "CDPruner needs the instruction's embeddings (ctx.text_embeds); run it through LlavaAdapter with a "
                "question after <image>, or fill text_embeds"
            )
        z = ctx.space("projected").detach().float()  # selection needs no graph (a caller may project with grad on)
        if ctx.text_embeds.shape[-1] != z.shape[-1]:
            raise CapabilityError(
                f"text_embeds width {ctx.text_embeds.shape[-1]} differs from the projected width {z.shape[-1]}; "
                "pass the LLM input embeddings of the instruction"
            )
        zn = (z / z.norm(dim=-1, keepdim=True).clamp_min(1e-8)).unsqueeze(0)
        sim = (zn @ zn.transpose(1, 2))[0]  # batch of one, as the source
        offset = 1e-6 if self.precision == "float32" else 0.0
        r = relevance(z, ctx.text_embeds.detach(), self.pooling, self.negate, self.theta, offset=offset)
        kernel = r[:, None] * sim * r[None, :]
        picked = dpp_greedy_map(kernel, budget, precision=self.precision)
        keep = torch.sort(picked).values
        return PruneResult(
            indices=keep,
            order="raster",
            positions="contiguous",
            stats={"relevance_kept_mean": float(r[keep].mean()), "relevance_mean": float(r.mean())},
        )


__all__ = ["PRECISIONS", "CDPruner", "dpp_greedy_map", "relevance"]

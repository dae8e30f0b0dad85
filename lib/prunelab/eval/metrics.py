"""Analysis metrics: effective rank (erank) and attention entropy (methods-spec §3.1-3.2).

* erank: Roy & Vetterli, "The effective rank: a measure of effective dimensionality", EUSIPCO 2007.
  ``p_k = s_k / sum_j s_j`` over singular values, ``erank = exp(-sum p_k log p_k)``.
  Options follow the variants found in the wild (Diff-eRank ``utils/diff_erank_single_sentence.py`` centres,
  L2-normalises rows and uses the eigenvalues of the covariance, i.e. squared singular values).
* attention entropy: Shannon entropy (nats) of the renormalised [CLS]->patch attention distribution.
"""

from __future__ import annotations

import math

import torch

_SPECTRA = ("singular", "squared")


def erank(
    x: torch.Tensor,
    *,
    center: bool = False,
    row_normalize: bool = False,
    spectrum: str = "singular",
    eps: float = 1e-12,
) -> torch.Tensor:
    """Effective rank of a token matrix (rows = tokens), batched over leading dimensions.

    Parameters
    ----------
    x: ``(..., n, d)`` tokens. Computed in float64 whatever the input dtype.
    center: subtract the mean token first (Diff-eRank does; the default does not, methods-spec §3.1).
    row_normalize: L2-normalise each token first (Diff-eRank does).
    spectrum: ``"singular"`` (p ∝ s_k, Roy & Vetterli; default) or ``"squared"`` (p ∝ s_k², covariance
        eigenvalues as in Diff-eRank).

    Returns a float64 tensor of shape ``x.shape[:-2]`` with values in ``[1, min(n, d)]``. An all-zero matrix
    has no spectrum and gives ``nan`` (made visible rather than hidden as 0 or 1).
    """
    if spectrum not in _SPECTRA:
        raise ValueError(f"spectrum must be one of {_SPECTRA}, got {spectrum!r}")
    if x.ndim < 2:
        raise ValueError(f"erank needs a matrix (..., n, d), got shape {tuple(x.shape)}")
    f = x.detach().to(torch.float64)
    if center:
        f = f - f.mean(dim=-2, keepdim=True)
    if row_normalize:
        f = f / f.norm(dim=-1, keepdim=True).clamp_min(eps)
    s = torch.linalg.svdvals(f)
    if spectrum == "squared":
        s = s * s
    total = s.sum(dim=-1, keepdim=True)
    p = s / total
    # 0·log 0 = 0: drop zero terms instead of producing nan.
    h = -(torch.where(p > 0, p * torch.log(p.clamp_min(1e-300)), torch.zeros_like(p))).sum(dim=-1)
    out = torch.exp(h)
    return torch.where(total.squeeze(-1) > eps, out, torch.full_like(out, float("nan")))


def attention_entropy(attn: torch.Tensor, *, normalized: bool = False, eps: float = 1e-30) -> torch.Tensor:
    """Entropy (nats) of attention weights over the last dimension, renormalised to sum to 1.

    ``attn`` is ``(..., N)``, e.g. the head-mean [CLS]->patch attention ``(N,)`` or per head ``(H, N)``
    (average the result over heads for the per-head variant). With ``normalized=True`` the entropy is divided
    by ``log N`` so that a uniform distribution gives 1 (methods-spec §3.2). Low = peaked = "simple" image.
    """
    a = attn.detach().to(torch.float64)
    if (a < 0).any():
        raise ValueError("attention weights must be non-negative")
    q = a / a.sum(dim=-1, keepdim=True).clamp_min(eps)
    h = -(torch.where(q > 0, q * torch.log(q.clamp_min(1e-300)), torch.zeros_like(q))).sum(dim=-1)
    if normalized:
        h = h / math.log(a.shape[-1])
    return h


__all__ = ["erank", "attention_entropy"]


def has_repeated_block(seq, min_repeats: int = 3, max_period: int = 8) -> bool:
    """Whether some block of 1..``max_period`` items repeats ``min_repeats`` times back to back in ``seq``
    (``a cup , a cup , a cup ,``): the loop half of the degenerate-description rule of the toy model's evaluation
    (:func:`prunelab.train.toyeval.is_degenerate`; the other half is a description that never ends)."""
    body = list(seq)
    for p in range(1, max_period + 1):
        run = 0
        for i in range(p, len(body)):
            run = run + 1 if body[i] == body[i - p] else 0
            if run >= p * (min_repeats - 1):
                return True
    return False

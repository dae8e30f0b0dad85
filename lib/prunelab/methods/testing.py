"""Small, seeded :class:`VisualContext` factories for tests and examples (no model weights needed).

The contexts are internally consistent the way a real tower's are: ``cls_attention`` is the head mean of the
softmax of the CLS query against all ``N+1`` keys of layer -2 (patch columns only), exactly how
``attentions[-2][:, :, 0, 1:].mean(1)`` is formed, and ``projected`` is what the (random, seeded) two-layer
GELU projector gives for ``features``. Pruning methods must work for *any* tower, so nothing here is specific
to CLIP or DINOv2.

Typical use::

    from prunelab.methods.testing import make_context
    ctx = make_context(n=36, c=16, seed=0)
"""

from __future__ import annotations

import torch

from prunelab.methods.base import VisualContext
from prunelab.methods.projector import SeededProjector


def make_context(
    n: int = 36,
    c: int = 16,
    seed: int = 0,
    *,
    d: int | None = 24,
    heads: int = 2,
    d_head: int = 8,
    qk_layers: tuple[int, ...] = (-2, -1),
    clusters: int = 0,
    attention_temperature: float = 1.0,
    lazy_projection: bool = False,
    erank_stats: dict[str, float] | None = None,
    text_len: int = 0,
    image_id: str | None = None,
) -> VisualContext:
    """A random but self-consistent context for one "image" of ``n`` patches.

    Parameters
    ----------
    n, c: number of patches and vision feature width.
    seed: everything (features, q/k, projector) derives from it.
    d: projector output width; ``None`` builds a context without projector (``"projected"`` unavailable).
    heads, d_head: shape of the per-head q/k tensors ``(heads, n+1, d_head)`` stored for ``qk_layers``
        (layer -2 is always generated because ``cls_attention`` is computed from it).
    clusters: if > 0, features are drawn around that many centres (near-duplicate tokens, as in real images).
    attention_temperature: divides the attention logits (smaller = more peaked ``cls_attention``).
    lazy_projection: give only the ``projector`` (``projected`` filled on first use) instead of both.
    erank_stats: passed through (AgilePruner needs ``{"mean": ..}``).
    text_len: if > 0, also random ``text_embeds`` of shape ``(text_len, d)``.
    """
    if n < 1 or c < 1:
        raise ValueError(f"need n >= 1 and c >= 1, got n={n}, c={c}")
    g = torch.Generator().manual_seed(seed)
    if clusters > 0:
        centres = 3.0 * torch.randn(clusters, c, generator=g)
        assign = torch.randint(0, clusters, (n,), generator=g)
        features = centres[assign] + 0.3 * torch.randn(n, c, generator=g)
    else:
        features = torch.randn(n, c, generator=g)
    cls_feature = torch.randn(c, generator=g)

    layers = sorted(set(qk_layers) | {-2})
    queries: dict[int, torch.Tensor] = {}
    keys: dict[int, torch.Tensor] = {}
    for layer in layers:
        queries[layer] = torch.randn(heads, n + 1, d_head, generator=g)
        keys[layer] = torch.randn(heads, n + 1, d_head, generator=g)
    logits = queries[-2][:, 0, :] @ keys[-2].transpose(1, 2)  # (H, n+1): CLS row against all keys
    probs = torch.softmax(logits[:, 0, :] * d_head**-0.5 / attention_temperature, dim=-1)
    heads_attn = probs[:, 1:]  # patch columns, CLS column dropped (rows do not renormalise, as in the towers)
    cls_attention = heads_attn.mean(0)

    projector = SeededProjector(c, d, seed) if d is not None else None
    projected = None
    if projector is not None and not lazy_projection:
        with torch.no_grad():
            projected = projector(features)
    text_embeds = torch.randn(text_len, d if d is not None else c, generator=g) if text_len > 0 else None
    return VisualContext(
        features=features,
        cls_attention=cls_attention,
        cls_attention_heads=heads_attn,
        cls_feature=cls_feature,
        projected=projected,
        projector=projector,
        queries={k: v for k, v in queries.items() if k in qk_layers},
        keys={k: v for k, v in keys.items() if k in qk_layers},
        text_embeds=text_embeds,
        erank_stats=erank_stats,
        image_id=image_id if image_id is not None else f"random-{seed}",
    )


def make_contexts(count: int, **kwargs) -> list[VisualContext]:
    """``count`` contexts with seeds ``0..count-1`` (other arguments as :func:`make_context`)."""
    base = kwargs.pop("seed", 0)
    return [make_context(seed=base + i, **kwargs) for i in range(count)]


def context_from(
    features,
    attention,
    *,
    projected=None,
    projector=None,
    keys: dict | None = None,
    queries: dict | None = None,
    erank_stats: dict[str, float] | None = None,
    grid: tuple[int, int] | None = None,
) -> VisualContext:
    """A context from hand-written values (lists or tensors), for known-answer tests."""
    f = torch.as_tensor(features, dtype=torch.float32)
    a = torch.as_tensor(attention, dtype=torch.float32)
    return VisualContext(
        features=f,
        cls_attention=a,
        projected=None if projected is None else torch.as_tensor(projected, dtype=torch.float32),
        projector=projector,
        keys=dict(keys or {}),
        queries=dict(queries or {}),
        erank_stats=erank_stats,
        grid=grid,
    )


def check_result(ctx: VisualContext, res, budget: int, *, exact: bool = True) -> None:
    """Assert the invariants every pre-LLM :class:`~prunelab.methods.base.PruneResult` must satisfy.

    * ``exact``: ``n_kept == budget`` (pass ``False`` for adaptive methods);
    * ``indices`` is 1-D, every real index in ``0..N-1`` and distinct (``-1`` placeholders allowed);
    * ``tokens`` (if any) has one row per index;
    * order policy ``"raster"``: indices strictly increasing (no placeholders). Other policies depend on the
      method's own score (``"attention"``) or layout (``"cls_first_raster"``): their tests check them.
    """
    idx = res.indices
    assert idx.ndim == 1, f"indices must be 1-D, got {tuple(idx.shape)}"
    if exact:
        assert res.n_kept == budget, f"kept {res.n_kept} tokens, budget {budget}"
    real = idx[idx >= 0]
    assert bool(((idx >= 0) | (idx == -1)).all()), "negative indices other than -1"
    assert bool((real < ctx.n_tokens).all()), "index out of range"
    assert real.unique().numel() == real.numel(), "duplicate indices"
    if res.tokens is not None:
        assert res.tokens.shape[0] == idx.numel(), "tokens and indices disagree in length"
        assert torch.isfinite(res.tokens).all(), "non-finite tokens"
    if res.order == "raster":
        assert bool((idx >= 0).all()), "raster-order results cannot hold placeholders"
        assert bool((idx[1:] > idx[:-1]).all()), "raster order violated"


__all__ = ["SeededProjector", "make_context", "make_contexts", "context_from", "check_result"]

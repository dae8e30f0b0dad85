"""A seeded random projector, so that contexts without a trained model still have a ``"projected"`` space.

Used by the weight-free pixel encoder of :mod:`prunelab.study.runner` and by the test factories of
:mod:`prunelab.methods.testing`; it lives apart from the factories so that no library module imports them.
"""

from __future__ import annotations

import torch


class SeededProjector(torch.nn.Module):
    """LLaVA-style projector ``Linear(c, d) -> GELU -> Linear(d, d)`` with seeded random weights."""

    def __init__(self, c: int, d: int, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(10_000 + seed)
        self.w1 = torch.nn.Parameter(torch.randn(c, d, generator=g) / c**0.5, requires_grad=False)
        self.b1 = torch.nn.Parameter(0.1 * torch.randn(d, generator=g), requires_grad=False)
        self.w2 = torch.nn.Parameter(torch.randn(d, d, generator=g) / d**0.5, requires_grad=False)
        self.b2 = torch.nn.Parameter(0.1 * torch.randn(d, generator=g), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.nn.functional.gelu(x.float() @ self.w1 + self.b1)
        return h @ self.w2 + self.b2

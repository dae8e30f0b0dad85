"""Shared pytest fixtures: small seeded visual contexts (see prunelab.methods.testing)."""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, settings

from prunelab.methods.testing import context_from, make_context, make_contexts  # noqa: F401

# Property tests run on 2 shared CPU cores: keep them short and deterministic.
settings.register_profile(
    "prunelab", max_examples=40, deadline=None, derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.load_profile("prunelab")


@pytest.fixture
def ctx():
    """36 patches (6x6), 16-d vision features, 24-d projector, q/k for layers -2 and -1."""
    return make_context(n=36, c=16, seed=0)


@pytest.fixture
def ctx_factory():
    """``ctx_factory(n=.., c=.., seed=.., **kw)`` -> VisualContext (see make_context)."""
    return make_context


@pytest.fixture
def clustered_ctx():
    """Context whose features form 5 tight clusters (near-duplicate tokens)."""
    return make_context(n=49, c=16, seed=3, clusters=5)

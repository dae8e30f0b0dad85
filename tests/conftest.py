"""Shared pytest fixtures: small seeded visual contexts (see prunelab.methods.testing)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, settings

from prunelab.methods.testing import context_from, make_context, make_contexts  # noqa: F401

# Property tests run on 2 shared CPU cores: keep them short and deterministic.
settings.register_profile(
    "prunelab",
    max_examples=40,
    deadline=None,
    derandomize=True,
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


@pytest.fixture(scope="module")
def one_torch_thread():
    """The test machines are shared; with 2 intra-op threads a contended CPU runs tower forwards up to 5x slower."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def chair_parser():
    """CHAIR caption parser on the offline path (Debian WordNet, noun lemmatiser); skips if WordNet cannot be had."""
    from prunelab.errors import AssetError
    from prunelab.eval import textproc
    from prunelab.eval.mentions import CaptionParser

    try:
        textproc.activate_wordnet()
    except AssetError:
        try:
            textproc.ensure_wordnet()
        except AssetError as err:
            pytest.skip(f"WordNet unavailable and cannot be fetched: {err}")
    return CaptionParser(tokenizer="offline", lemmatizer="noun")

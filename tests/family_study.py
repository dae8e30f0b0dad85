"""What the per-family study tests (test_next_study, test_qwen_study) share: a call counter on ``model.generate``
and the small study-loop run they make on a tiny folder."""

from __future__ import annotations

import contextlib

from prunelab.study import generation as G

SET = "toyworld:test"


@contextlib.contextmanager
def counting_generate(model):
    """Counts ``model.generate`` calls (an instance attribute for the block only)."""
    calls = [0]
    real = model.generate

    def generate(*a, **k):
        calls[0] += 1
        return real(*a, **k)

    model.generate = generate
    try:
        yield calls
    finally:
        del model.generate


def run_small(gm, methods, budgets, task, cache_dir, **kw):
    """``run_generation`` on 2 toy test scenes, random POPE questions only, 5 new tokens unless given."""
    kw.setdefault("max_new_tokens", 5)
    return G.run_generation(
        gm, SET, methods, budgets, task=task, n=2, cache_dir=cache_dir, progress=False, pope_settings=["random"], **kw
    )

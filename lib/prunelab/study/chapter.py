"""The chapter helper: what every notebook of the book needs around its own calls into the library (issue 17).

One place for the setup each chapter used to copy (the up-front parameter check, the plotting theme, no weight-loading
bar, the BLAS thread count the build chose), the figure glue, the number formats of the glued prose, the model's
default generation limit and the glued verdict table. A chapter's first code cell after ``parameters`` reads::

    from prunelab.study.chapter import fmt, generation_limit, glue_figure, glue_verdict, setup

    P = setup(model=model, image_set=image_set, n_images=n_images, methods=methods, budgets=budgets, seed=seed,
              device=device, max_new_tokens=max_new_tokens, results_dir=results_dir, methods_required=True)

Progress bars: the study loops' default (``progress=None``) shows bars only when stderr is a terminal
(:func:`prunelab.device.bars_off`), so an executed chapter shows none (``prunelab.book.bookcheck`` checks the
published book); the chapters' explicit ``progress=False`` says the same. ``disable=None`` would not do:
``tqdm.notebook`` reads it as "show".

The library never imports this module (guide, "Style": chapters call the library); it imports no trainer either
(import-linter contract ``inference-never-imports-training``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable

import matplotlib.pyplot as plt
import pandas as pd
import torch
from myst_nb import glue
from transformers.utils import logging as hf_logging

from prunelab.errors import UnknownNameError
from prunelab.models.loader import description_limit
from prunelab.study import plots
from prunelab.study.params import validate
from prunelab.study.verdict import VERDICT_GLUE, VerdictError, style_verdict


def _build_threads() -> int | None:
    """The BLAS/OpenMP thread count the book build gave this kernel (``OMP_NUM_THREADS``, set by
    ``prunelab.book.build.kernel_threads`` when kernels run side by side), or ``None`` when none was set."""
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    if not value:
        return None
    if not value.isdigit() or int(value) < 1:
        raise UnknownNameError(
            f"OMP_NUM_THREADS={value!r} is not a positive integer; unset it or set e.g. OMP_NUM_THREADS=1"
        )
    return int(value)


_NOT_GIVEN = object()


def setup(*, image_set=_NOT_GIVEN, many_sets: bool = False, check: Callable = validate, **params):
    """Validate the chapter's parameters up front and prepare the kernel; returns what ``check`` returns.

    ``check`` is :func:`prunelab.study.params.validate` (or a chapter's own validator built on it, such as
    ``shortfall.validate_parameters``); every keyword but ``image_set`` goes to it unchanged, so a bad value still
    fails in one line before anything is loaded. ``image_set`` is the notebooks' parameter name (one spec, or a list
    where the chapter runs several: ``many_sets=True``) and reaches the validator as its ``image_sets`` list.
    Then: the book's plotting theme, no weight-loading progress bar in the output, and torch on the thread count
    the build set for this kernel (torch reads ``OMP_NUM_THREADS`` at import; setting it again covers a kernel that
    imported torch before the variable was set).
    """
    if image_set is not _NOT_GIVEN:
        if isinstance(image_set, (list, tuple)) and not many_sets:
            raise UnknownNameError(
                f"this chapter runs one image set, got the list {list(image_set)!r}; pass one spec, "
                "e.g. image_set='toyworld:test'"
            )
        params["image_sets"] = [image_set] if isinstance(image_set, str) else image_set
    p = check(**params)
    plots.set_theme()
    hf_logging.disable_progress_bar()
    threads = _build_threads()
    if threads is not None and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return p


def generation_limit(p) -> int:
    """The description limit of a chapter: its ``max_new_tokens`` parameter when given, else the model's default.

    An embedded ToyLLaVA answers with the limit its own evaluation used (:func:`prunelab.models.loader.description_limit`:
    144, read from the model folder; ToyLLaVA-S 96); any other model with the 512 tokens of the OPERA / PAI
    CHAIR protocol (:data:`prunelab.study.generation.DEFAULT_MAX_NEW_TOKENS`). ``p``: validated parameters with
    ``model``, ``model_path`` and ``max_new_tokens``.
    """
    if p.max_new_tokens:
        return int(p.max_new_tokens)
    return description_limit(p.model, p.model_path)


def glue_figure(name: str, fig) -> None:
    """Glue ``fig`` for the prose under ``name``, then close it: shown where the text references it, not twice.

    Closing is what keeps it single: a pyplot figure still open at the end of a cell is displayed again by the inline
    backend, under the ``{glue:figure}`` copy (issue 16 saw Figs. 1-5 and 6-7 twice when the 00 chapters called
    ``glue(name, fig, display=False)`` on open figures; ``prunelab.book.bookcheck`` fails such a page)."""
    glue(name, fig, display=False)
    plt.close(fig)


def glue_verdict(table: pd.DataFrame) -> None:
    """Show the chapter's verdict table (coloured by :func:`prunelab.study.verdict.style_verdict`) and glue it as
    :data:`VERDICT_GLUE`, which the book's "paper vs this study" page collects from every finding chapter."""
    if not isinstance(table, pd.DataFrame) or table.empty:
        raise VerdictError(
            f"glue_verdict needs the table of verdict_table(claims), got {type(table).__name__} "
            f"{'(empty)' if isinstance(table, pd.DataFrame) else ''}; pass verdict_table(claims)"
        )
    glue(VERDICT_GLUE, style_verdict(table))


def _isfinite(x) -> bool:
    """``math.isfinite`` that reads anything without a float value (``None``, a string) as not finite."""
    try:
        return math.isfinite(x)
    except TypeError:
        return False


def fmt(x, spec: str = "{:.1f}") -> str:
    """``x`` (a Python int or float, numpy's float64 included) formatted with ``spec`` for the glued prose, or
    ``"n/a"`` when it is missing or not finite."""
    return spec.format(x) if isinstance(x, (int, float)) and math.isfinite(x) else "n/a"


def fmt_ci(lo, hi, spec: str = "{:+.1f}") -> str:
    """A confidence interval as ``"[lo, hi]"`` (each end through :func:`fmt`), or ``"n/a"`` unless both ends are
    finite."""
    return f"[{fmt(lo, spec)}, {fmt(hi, spec)}]" if _isfinite(lo) and _isfinite(hi) else "n/a"


def sign_word(x, pos: str, neg: str, zero: str = "no different") -> str:
    """``pos`` / ``neg`` / ``zero`` by the sign of ``x`` (a difference), ``"n/a"`` when it is not finite."""
    return (pos if x > 0 else neg if x < 0 else zero) if _isfinite(x) else "n/a"


__all__ = ["setup", "generation_limit", "glue_figure", "glue_verdict", "fmt", "fmt_ci", "sign_word", "VERDICT_GLUE"]

"""prunelab inside lmms-eval (the field's evaluation engine, PyPI ``lmms-eval``): a model, local tasks, a wrapper.

* :mod:`prunelab.lmms.model` — the lmms-eval model ``prunelab`` (``--model prunelab --model_args
  pretrained=...,method=...,budget=...``), registered through the entry-point group ``lmms_eval.models``
  (``pyproject.toml``) with the :class:`ModelManifest` of :func:`manifest` (``lmms_eval/models/registry_v2.py``).
* :mod:`prunelab.lmms.tasks` — toy-world POPE and CHAIR task folders for ``--include_path``, scored with
  prunelab's own POPE and CHAIR.
* :mod:`prunelab.lmms.stats` — AgilePruner's erank statistics, computed once before launch.
* ``python -m prunelab.lmms`` — ``calibrate`` (the statistics) and ``eval`` (lmms-eval's CLI, exiting non-zero when
  the run fails: lmms-eval itself exits 0 on a failed run unless ``--verbosity DEBUG``).

lmms-eval is an optional extra (``make lmms``); nothing else in prunelab imports this package.
"""

from __future__ import annotations

MODEL_ID = "prunelab"
MODEL_CLASS = "prunelab.lmms.model.PrunelabLMM"


def manifest():
    """The entry point's payload: lmms-eval calls it when it loads external models."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_ID, simple_class_path=MODEL_CLASS)

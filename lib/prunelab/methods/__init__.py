"""Pruning methods behind one interface (:mod:`prunelab.methods.base`) and a name registry.

Families, one file each: ``attention`` (FasterVLM, PruMerge, PruMerge+), ``diversity`` (DivPrune, FPS),
``hybrid`` (VisPruner, VisionZip, BAT adaptation, attention+diversity mixture, erank-guided split / inverse),
``adaptive`` (AgilePruner), ``text_conditioned`` (CDPruner), ``in_llm`` (FastV, PDrop, SparseVLM, DART).
"""
from prunelab.methods.base import (  # noqa: F401
    Pruner,
    PruneResult,
    VisualContext,
    available_methods,
    catalog,
    get_pruner,
    prune,
    register,
    replace_params,
)

"""Pruning methods behind one interface (:mod:`prunelab.methods.base`) and a name registry.

Families, one file each: ``attention`` (FasterVLM, PruMerge, PruMerge+), ``diversity`` (DivPrune, FPS),
``hybrid`` (VisPruner, VisionZip, BAT adaptation, attention+diversity mixture, erank-guided split / inverse),
``adaptive`` (AgilePruner), ``text_conditioned`` (CDPruner), ``in_llm`` (FastV, PDrop, SparseVLM, DART).
"""

from prunelab.methods.base import (  # noqa: F401
    FAMILY_ORDER,
    UNPRUNED,
    ErankStatsSpec,
    Pruner,
    PruneResult,
    VisualContext,
    available_methods,
    base_label,
    catalog,
    get_pruner,
    paper_name,
    prune,
    register,
    replace_params,
)

"""One entry point from a loaded model to the adapter of its family (issue #14).

``make_adapter(model, ...)`` reads ``model.config.model_type``: ``qwen2_5_vl`` gets
:class:`prunelab.models.qwen2_5_vl.QwenVLAdapter`, ``llava_next`` :class:`prunelab.models.llava_next.LlavaNextAdapter`
(anyres tiles; ``tile_budget`` is its keyword), every other model :class:`prunelab.models.adapter.LlavaAdapter`,
which refuses the families it cannot run (:data:`prunelab.models.parts.UNSUPPORTED_FAMILIES`) in one line.
"""

from __future__ import annotations

from torch import nn

__all__ = ["make_adapter", "ADAPTED_FAMILIES", "FAMILY_NAMES", "family_support"]

#: Families with their own adapter class (module, class name); the rest go to LlavaAdapter.
ADAPTED_FAMILIES = {
    "qwen2_5_vl": ("prunelab.models.qwen2_5_vl", "QwenVLAdapter"),
    "llava_next": ("prunelab.models.llava_next", "LlavaNextAdapter"),
}


def make_adapter(model: nn.Module, processor=None, tokenizer=None, device=None, **family_kw):
    """The adapter for ``model``'s family; ``family_kw`` go to that adapter (e.g. Qwen's ``score_layer``)."""
    import importlib

    family = getattr(getattr(model, "config", None), "model_type", None)
    if family in ADAPTED_FAMILIES:
        mod, name = ADAPTED_FAMILIES[family]
        cls = getattr(importlib.import_module(mod), name)
    else:
        from prunelab.models.adapter import LlavaAdapter

        cls = LlavaAdapter
    return cls(model, processor=processor, tokenizer=tokenizer, device=device, **family_kw)


#: Display names of the supported families (``config.model_type`` -> the paper's name).
FAMILY_NAMES = {"llava": "LLaVA-1.5", "llava_next": "LLaVA-NeXT", "qwen2_5_vl": "Qwen2.5-VL"}


def family_support(pruner) -> dict[str, str]:
    """``{family: how the method runs there}`` for one pruner, from what each adapter declares: LLaVA-1.5 runs every
    method; LLaVA-NeXT runs pre-LLM methods per tile and in-LLM methods on the packed run, newlines included
    (:mod:`prunelab.models.llava_next`); Qwen2.5-VL refuses what :func:`prunelab.models.qwen2_5_vl.refusal` names
    and scores the rest with the attention patches receive (:mod:`prunelab.models.qwen2_5_vl`)."""
    from prunelab.models.qwen2_5_vl import refusal

    in_llm = getattr(pruner, "stage", "pre_llm") == "in_llm"
    why = refusal(pruner)
    return {
        "llava": "runs",
        "llava_next": "runs on the packed run (newlines count)" if in_llm else "runs per tile",
        "qwen2_5_vl": f"refuses: {why}" if why else "runs",
    }

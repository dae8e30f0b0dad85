"""The layout of a Qwen2.5-VL model: ViT, merger and decoder (:class:`QwenParts`), kept apart from
:mod:`prunelab.models.qwen2_5_vl` so that :func:`prunelab.models.parts.resolve_parts` can return it without an import
cycle. Paths follow transformers 5.x: ``model.visual`` (``blocks``, ``merger``), ``model.language_model``."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from prunelab.errors import CapabilityError
from prunelab.models.decoder_side import DecoderSide

__all__ = ["QwenParts", "resolve_qwen_parts"]


@dataclass
class QwenParts(DecoderSide):
    """The pieces of a Qwen2.5-VL model the adapter touches (resolved once)."""

    model: nn.Module
    visual: nn.Module
    decoder: nn.Module
    image_token_id: int
    merge: int
    fullatt: tuple[int, ...]
    vision_heads: int

    @property
    def blocks(self) -> nn.ModuleList:
        return self.visual.blocks

    @property
    def vision_tower(self) -> nn.Module:
        """The ViT, for code that counts or moves LLaVA's ``vision_tower``; it holds the merger (the projector),
        which is a submodule of ``model.visual`` and cannot be split off."""
        return self.visual

    @property
    def merger(self) -> nn.Module:
        return self.visual.merger

    @property
    def projector(self) -> nn.Module:
        return self.visual.merger


def resolve_qwen_parts(model: nn.Module) -> QwenParts:
    """The ViT, merger and decoder of a ``Qwen2_5_VLForConditionalGeneration`` (one-line error otherwise)."""
    cfg = getattr(model, "config", None)
    inner = getattr(model, "model", None)
    visual = getattr(inner, "visual", None)
    decoder = getattr(inner, "language_model", None)
    if cfg is None or visual is None or decoder is None or not hasattr(visual, "blocks"):
        raise CapabilityError(
            f"{type(model).__name__} has no model.visual / model.language_model; pass a "
            "Qwen2_5_VLForConditionalGeneration (transformers >= 5.0)"
        )
    vc = cfg.vision_config
    return QwenParts(
        model=model,
        visual=visual,
        decoder=decoder,
        image_token_id=int(cfg.image_token_id),
        merge=int(vc.spatial_merge_size),
        fullatt=tuple(int(i) for i in vc.fullatt_block_indexes),
        vision_heads=int(vc.num_heads),
    )

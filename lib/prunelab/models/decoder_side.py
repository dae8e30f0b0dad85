"""What every family's layout reads the same way on its text side, kept apart from :mod:`prunelab.models.parts` and
:mod:`prunelab.models.qwen_parts` so that both layouts can share it without importing each other."""

from __future__ import annotations

from torch import nn

__all__ = ["DecoderSide"]


class DecoderSide:
    """Mixin of a layout dataclass with fields ``model`` (the whole Hugging Face model) and ``decoder`` (its language
    model, which holds ``.layers``)."""

    @property
    def text_layers(self) -> nn.ModuleList:
        return self.decoder.layers

    @property
    def embed(self) -> nn.Module:
        return self.model.get_input_embeddings()

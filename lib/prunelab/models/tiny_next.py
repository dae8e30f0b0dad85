"""A seeded tiny random **LLaVA-NeXT-format** checkpoint for tests and notebook smoke runs (issue #14): what a user
passes as ``model=/path/to/llava-v1.6-vicuna-7b-hf``, shrunk, written with ``save_pretrained`` so that loading goes
through ``from_pretrained`` like a real checkpoint (:func:`prunelab.models.loader.load_generation_model`).

Geometry: LLaVA-NeXT's anyres scaled by 1/3 (tiles of 112 px instead of 336 px, patch 14, so 8 x 8 patches a tile;
``image_grid_pinpoints`` the 1/3 of llava-v1.6's ``[[336, 672], [672, 336], [672, 672], ...]`` up to 2 x 2 tiles). The
saved ``LlavaNextImageProcessor`` (PIL backend) resizes to those pinpoints, so a toy-world 336 x 336 image becomes a
base tile plus 2 x 2 crop tiles: 64 + 16 * 16 = :data:`TINY_NEXT_TOKENS` visual tokens and 16 newline tokens (a square
image needs no un-padding). Text: the same word-level tokenizer as :func:`prunelab.models.tiny.save_tiny_llava_hf`;
``chat_template`` (optional) is saved with the processor, as llava-hf's v1.6 checkpoints ship one. Weights have the
larger spread of :mod:`prunelab.models.tiny`, so a random model's output depends on its input. Its text is noise; it
exists to run the LLaVA-NeXT code path of the study loop and the chapters offline.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["save_tiny_llava_next_hf", "TINY_NEXT_TILE", "TINY_NEXT_PINPOINTS", "TINY_NEXT_TOKENS"]

TINY_NEXT_TILE = 112
TINY_NEXT_PINPOINTS = [[112, 224], [224, 112], [224, 224]]
TINY_NEXT_TOKENS = 64 + 16 * 16  # 336 x 336 image: base tile + 2 x 2 crops, newlines not counted


def save_tiny_llava_next_hf(
    folder, *, seed: int = 0, words=(), text_layers: int = 2, vision_layers: int = 3, chat_template: str | None = None
) -> Path:
    """Write the tiny checkpoint (model, tokenizer, ``LlavaNextImageProcessor`` config, ``LlavaNextProcessor``, and
    ``chat_template`` when given) to ``folder``; returns it."""
    from transformers import LlavaNextConfig, LlavaNextForConditionalGeneration, LlavaNextProcessor

    try:  # transformers >= 5: the PIL backend by name (the default one needs torchvision)
        from transformers import LlavaNextImageProcessorPil as ImageProcessor
    except ImportError:  # pragma: no cover - 4.x, where the slow processor is the default class
        from transformers import LlavaNextImageProcessor as ImageProcessor

    from prunelab.models.tiny import CLIP_NORM, PROCESSOR_KW, hf_tokenizer_and_config, seeded_hf_model

    tok, base = hf_tokenizer_and_config(
        words, image_size=TINY_NEXT_TILE, text_layers=text_layers, vision_layers=vision_layers, extra="[INST] [/INST]"
    )
    cfg = LlavaNextConfig(
        vision_config=base.vision_config.to_dict(),
        text_config=base.text_config.to_dict(),
        image_token_id=base.image_token_id,
        image_grid_pinpoints=TINY_NEXT_PINPOINTS,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
    )
    cfg.vision_config._attn_implementation = "eager"  # as the llava-hf tiny folder
    model = seeded_hf_model(cfg, seed, tok, LlavaNextForConditionalGeneration)
    tile = {"height": TINY_NEXT_TILE, "width": TINY_NEXT_TILE}
    ip = ImageProcessor(
        size={"shortest_edge": TINY_NEXT_TILE}, crop_size=tile, image_grid_pinpoints=TINY_NEXT_PINPOINTS, **CLIP_NORM
    )
    proc = LlavaNextProcessor(image_processor=ip, tokenizer=tok, chat_template=chat_template, **PROCESSOR_KW)
    out = Path(folder)
    model.save_pretrained(out)
    proc.save_pretrained(out)
    return out

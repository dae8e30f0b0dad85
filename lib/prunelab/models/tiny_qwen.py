"""A seeded tiny random **Qwen2.5-VL-format** checkpoint for tests and notebook smoke runs (issue #14): what a user
passes as ``model=/path/to/Qwen2.5-VL-7B-Instruct``, shrunk, written with ``save_pretrained`` so that loading goes
through ``from_pretrained`` like a real checkpoint (:func:`prunelab.models.loader.load_generation_model`).

Geometry: Qwen2.5-VL's (patch 14, 2x2 merge, temporal patch 2, 112-px windows, one full-attention block), with
``min_pixels = max_pixels = 168 * 168`` in the saved image processor, so ``smart_resize`` turns the toy world's
336 x 336 images into 12 x 12 patches, i.e. 6 x 6 = 36 merged tokens (four windows of 4x4 / 4x2 / 2x4 / 2x2).
Text: a word-level tokenizer over ``words`` plus the prompt words and Qwen's special tokens (``<|im_start|>``,
``<|im_end|>``, ``<|vision_start|>``, ``<|image_pad|>``, ``<|vision_end|>``, ...). Weights have a larger spread than
transformers' default (as :mod:`prunelab.models.tiny`), so a random model's output depends on its input.
Its text is noise; it exists to run the Qwen code path of the study loop and the chapters offline.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

import torch

__all__ = ["save_tiny_qwen2_5_vl_hf", "TINY_QWEN_PIXELS", "QWEN_SPECIAL_TOKENS"]

TINY_QWEN_PIXELS = 168 * 168  # smart_resize bounds of the tiny folder: 336 px -> 168 px -> 36 merged tokens
QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<unk>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)


def _tokenizer(texts: Iterable[str]):
    """A word-level ``PreTrainedTokenizerFast``: Qwen's special tokens first (ids 0..7), then every word and
    punctuation run of ``texts`` in sorted order (same texts, same ids)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = sorted({w for t in texts for w in re.findall(r"\w+|[^\w\s]+", t)} - set(QWEN_SPECIAL_TOKENS))
    vocab = {t: i for i, t in enumerate(QWEN_SPECIAL_TOKENS)}
    for w in words:
        vocab.setdefault(w, len(vocab))
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<unk>",
        clean_up_tokenization_spaces=True,
        padding_side="left",
        model_max_length=1024,
    )
    tok.add_special_tokens({"additional_special_tokens": list(QWEN_SPECIAL_TOKENS[1:3] + QWEN_SPECIAL_TOKENS[4:])})
    return tok


def _config(tok, text_layers: int, vision_depth: int):
    from transformers import Qwen2_5_VLConfig

    ids = tok.convert_tokens_to_ids
    return Qwen2_5_VLConfig(
        vision_config=dict(
            depth=vision_depth,
            hidden_size=32,
            intermediate_size=64,
            num_heads=2,
            out_hidden_size=32,
            fullatt_block_indexes=[vision_depth - 2],
            window_size=112,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
        ),
        text_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=text_layers,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=len(tok),
            max_position_embeddings=2048,
            rope_parameters={"rope_type": "default", "mrope_section": [2, 1, 1], "rope_theta": 10000.0},
            bos_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        ),
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
    )


def save_tiny_qwen2_5_vl_hf(folder, *, seed: int = 0, words=(), text_layers: int = 2, vision_depth: int = 3) -> Path:
    """Write the tiny checkpoint (model, tokenizer, ``Qwen2VLImageProcessor`` config) to ``folder``; returns it."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    try:  # transformers >= 5: the PIL backend by name (the default one needs torchvision)
        from transformers import Qwen2VLImageProcessorPil as ImageProcessor
    except ImportError:  # pragma: no cover - 4.x
        from transformers import Qwen2VLImageProcessor as ImageProcessor

    from prunelab.models.loader import LLAVA_SHORT_ANSWER
    from prunelab.models.qwen_loading import QWEN_SYSTEM

    texts = [
        QWEN_SYSTEM,
        "system user assistant Please describe this image in detail.",
        f"Is there a dog in the image? {LLAVA_SHORT_ANSWER} Yes No yes no",
        " ".join(words),
    ]
    tok = _tokenizer(texts)
    cfg = _config(tok, text_layers, vision_depth)
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(cfg)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # seeded, spread-out weights (see the module docstring)
        for name, p in model.named_parameters():
            if p.ndim >= 2:
                fan_in = p.shape[1] if "embed" not in name else 16
                p.copy_(torch.randn(p.shape, generator=gen) * 0.25 / max(1.0, (fan_in / 16) ** 0.5))
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.bos_token_id = tok.pad_token_id
    ip = ImageProcessor(min_pixels=TINY_QWEN_PIXELS, max_pixels=TINY_QWEN_PIXELS)
    out = Path(folder)
    model.eval().save_pretrained(out)
    tok.save_pretrained(out)
    ip.save_pretrained(out)
    return out

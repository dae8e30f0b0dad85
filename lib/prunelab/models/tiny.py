"""Seeded tiny random ``LlavaForConditionalGeneration`` models for tests, benchmarks and notebook smoke runs.

Two towers, both with LLaVA-1.5's geometry scaled down (CLS + a square patch grid, features from
``hidden_states[-2]`` without CLS, a 2-layer GELU projector, a Llama decoder):

* ``tower="clip"``: ``CLIPVisionConfig`` (the llava-hf layout).
* ``tower="dinov2"``: ``Dinov2Config`` (ToyLLaVA's layout).

Weights are drawn from a seeded generator with a larger spread than transformers' default
(``initializer_range=0.02``), because near-zero weights make a random model's logits almost independent of its
input, and then pruning could not change anything a test could see. The vision tower runs with eager attention
(so its attention maps can be compared with the adapter's recomputation), the decoder with SDPA.
"""

from __future__ import annotations

import torch

from prunelab.errors import UnknownNameError
from prunelab.models import toyllava as T
from prunelab.models.prompts import VICUNA_SYSTEM

IMAGE_TOKEN_ID = 250
VOCAB_SIZE = 256
BOS, EOS, PAD = 1, 2, 0


def tiny_config(
    tower: str = "clip",
    *,
    image_size: int = 112,
    patch_size: int = 14,
    vision_hidden: int = 32,
    vision_layers: int = 4,
    vision_heads: int = 4,
    text_hidden: int = 64,
    text_layers: int = 8,
    text_heads: int = 4,
    text_kv_heads: int | None = None,
    text_intermediate: int | None = None,
    vocab_size: int = VOCAB_SIZE,
    image_token_id: int = IMAGE_TOKEN_ID,
    max_positions: int = 4096,
):
    """A ``LlavaConfig`` with ``(image_size // patch_size)**2`` patch tokens (default 8x8 = 64)."""
    from transformers import CLIPVisionConfig, Dinov2Config, LlamaConfig, LlavaConfig

    shape = dict(
        hidden_size=vision_hidden,
        intermediate_size=2 * vision_hidden,
        num_hidden_layers=vision_layers,
        num_attention_heads=vision_heads,
        image_size=image_size,
        patch_size=patch_size,
    )
    if tower == "clip":
        vision = CLIPVisionConfig(**shape, projection_dim=vision_hidden)
    elif tower == "dinov2":
        vision = Dinov2Config(**shape, layerscale_value=1.0)
    else:
        raise UnknownNameError(f"unknown tiny tower {tower!r}; known: clip, dinov2")
    text = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=text_hidden,
        intermediate_size=text_intermediate or 2 * text_hidden,
        num_hidden_layers=text_layers,
        num_attention_heads=text_heads,
        num_key_value_heads=text_kv_heads or text_heads,
        max_position_embeddings=max_positions,
        bos_token_id=BOS,
        eos_token_id=EOS,
        pad_token_id=PAD,
        tie_word_embeddings=False,
    )
    n = (image_size // patch_size) ** 2
    return LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=image_token_id,
        image_seq_length=n,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
    )


def _seeded_model(cfg, seed: int, init_std: float = 0.25, model_class=None):
    """``model_class(cfg)`` (default ``LlavaForConditionalGeneration``) with the seeded spread-out init described
    in the module docstring."""
    from transformers import LlavaForConditionalGeneration

    torch.manual_seed(seed)
    model = (model_class or LlavaForConditionalGeneration)(cfg)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim >= 2:
                fan_in = p.shape[1] if "embed" not in name and "position" not in name else 16
                p.copy_(torch.randn(p.shape, generator=gen) * init_std / max(1.0, (fan_in / 16) ** 0.5))
            elif name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
    return model


def tiny_llava(tower: str = "clip", *, seed: int = 0, init_std: float = 0.25, dtype=torch.float32, **config_kw):
    """A seeded random tiny LLaVA (``eval()`` mode). ``config_kw`` go to :func:`tiny_config`.

    Linear and embedding weights ~ N(0, init_std / sqrt(fan_in / 16)) so activations keep a useful spread at
    any width; norms stay at 1 / 0 (their defaults).
    """
    cfg = tiny_config(tower, **config_kw)
    cfg.vision_config._attn_implementation = "eager"
    cfg.text_config._attn_implementation = "sdpa"
    model = _seeded_model(cfg, seed, init_std)
    model.generation_config.pad_token_id = PAD
    model.generation_config.eos_token_id = EOS
    model.generation_config.bos_token_id = BOS
    return model.to(dtype).eval()


def tiny_inputs(
    model, *, batch: int = 1, prefix: int = 6, suffix: int = 7, seed: int = 0, one_placeholder: bool = False
):
    """Seeded ``(input_ids, pixel_values)`` for ``model``: ``prefix`` text ids, the image placeholder run
    (``image_seq_length`` ids, or a single id with ``one_placeholder``), ``suffix`` text ids."""
    cfg = model.config
    n = cfg.image_seq_length
    gen = torch.Generator().manual_seed(seed)
    size = cfg.vision_config.image_size
    pv = torch.randn(batch, 3, size, size, generator=gen)
    text_hi = min(cfg.image_token_id, cfg.text_config.vocab_size) - 1
    rows = []
    for _ in range(batch):
        pre = torch.randint(3, text_hi, (prefix,), generator=gen)
        suf = torch.randint(3, text_hi, (suffix,), generator=gen)
        img = torch.full((1 if one_placeholder else n,), cfg.image_token_id)
        rows.append(torch.cat([torch.tensor([BOS]), pre, img, suf]))
    return torch.stack(rows), pv.to(next(model.parameters()).dtype)


class ToyTokenizer:
    """A minimal whitespace tokenizer over a fixed word list, for smoke runs of the text path (``<image>`` maps
    to the model's image id; unknown words map to id 3). Not a trained tokenizer."""

    def __init__(self, model, words: list[str] | None = None):
        cfg = model.config
        words = words or [f"w{i}" for i in range(cfg.text_config.vocab_size)]
        self.image_token_id = cfg.image_token_id
        self.vocab = {"<pad>": PAD, "<s>": BOS, "</s>": EOS, "<unk>": 3}
        for w in words:
            if len(self.vocab) >= min(cfg.image_token_id, cfg.text_config.vocab_size):
                break
            self.vocab.setdefault(w, len(self.vocab))
        self.inv = {v: k for k, v in self.vocab.items()}
        self.eos_token_id, self.pad_token_id, self.bos_token_id = EOS, PAD, BOS

    def __call__(self, text: str, add_special_tokens: bool = True):
        ids = [self.vocab.get(w, 3) for w in text.split()]
        return {"input_ids": ([BOS] if add_special_tokens else []) + ids}

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        out = []
        for i in ids:
            i = int(i)
            if skip_special_tokens and i in (PAD, BOS, EOS):
                continue
            out.append(self.inv.get(i, "<img>" if i == self.image_token_id else f"<{i}>"))
        return " ".join(out)

    def batch_decode(self, seqs, skip_special_tokens: bool = True) -> list[str]:
        return [self.decode(s, skip_special_tokens) for s in seqs]


__all__ = ["tiny_config", "tiny_llava", "tiny_inputs", "ToyTokenizer", "IMAGE_TOKEN_ID"]


def save_tiny_llava_hf(folder, *, seed: int = 0, words=(), text_layers: int = 2, vision_layers: int = 3):
    """Write a seeded random **llava-hf-format** checkpoint to ``folder`` and return its path: what a user passes
    as ``model=/path/to/llava-1.5-7b-hf``, shrunk. A CLIP tower at LLaVA-1.5's 336 px / patch 14 (576 tokens, width
    32), a Llama decoder (width 64), a word-level ``PreTrainedTokenizerFast`` over ``words`` plus LLaVA-1.5's prompt
    words, a CLIP image processor (resize + centre crop to 336, CLIP mean/std) and a ``LlavaProcessor`` — all
    through ``save_pretrained``, so loading goes through ``from_pretrained`` like a real checkpoint. The config
    carries no ToyLLaVA vocabulary digest: the study treats it as a llava-hf model (Vicuna prompt, padding to
    square). Its text is random words; it exists to run the real-model code path of every notebook offline."""
    from pathlib import Path

    from transformers import LlavaProcessor

    try:  # transformers >= 5: the PIL backend by name (the default one needs torchvision)
        from transformers import CLIPImageProcessorPil as CLIPImageProcessor
    except ImportError:  # pragma: no cover - 4.x
        from transformers import CLIPImageProcessor

    tok, cfg = hf_tokenizer_and_config(words, image_size=336, text_layers=text_layers, vision_layers=vision_layers)
    model = seeded_hf_model(cfg, seed, tok)
    crop = {"height": 336, "width": 336}
    ip = CLIPImageProcessor(size={"shortest_edge": 336}, crop_size=crop, do_center_crop=True, **CLIP_NORM)
    proc = LlavaProcessor(image_processor=ip, tokenizer=tok, **PROCESSOR_KW)
    out = Path(folder)
    model.save_pretrained(out)
    proc.save_pretrained(out)
    return out


#: CLIP's normalisation, as llava-hf's image processors use it.
CLIP_NORM = dict(image_mean=[0.48145466, 0.4578275, 0.40821073], image_std=[0.26862954, 0.26130258, 0.27577711])
#: What llava-hf's processors say about the tower: patch 14, [CLS] dropped ("default"), one extra token.
PROCESSOR_KW = dict(patch_size=14, vision_feature_select_strategy="default", num_additional_image_tokens=1)


def hf_tokenizer_and_config(words=(), *, image_size: int, text_layers: int, vision_layers: int, extra: str = ""):
    """The word-level tokenizer of the llava-hf-format tiny folders (over ``words``, LLaVA-1.5's prompt words and
    ``extra``; no chat template) and a CLIP :func:`tiny_config` at ``image_size`` whose special ids are the
    tokenizer's."""
    texts = [
        VICUNA_SYSTEM,
        f"USER: ASSISTANT: Please describe this image in detail. {extra}",
        "Is there a dog in the image? Answer the question using a single word or phrase. Yes No",
        " ".join(words),
    ]
    tok = T.build_tokenizer(texts)
    tok.chat_template = None  # llava-hf checkpoints use the Vicuna format (or their processor's), not ToyLLaVA's
    cfg = tiny_config(
        "clip",
        image_size=image_size,
        patch_size=14,
        vision_layers=vision_layers,
        text_layers=text_layers,
        vocab_size=len(tok),
        image_token_id=tok.convert_tokens_to_ids(T.IMAGE_TOKEN),
    )
    cfg.text_config.bos_token_id, cfg.text_config.eos_token_id = tok.bos_token_id, tok.eos_token_id
    cfg.text_config.pad_token_id = tok.pad_token_id
    cfg.vision_config._attn_implementation = "eager"
    return tok, cfg


def seeded_hf_model(cfg, seed: int, tok, model_class=None):
    """:func:`_seeded_model` in eval mode, its generation config's pad / eos / bos ids the tokenizer's."""
    model = _seeded_model(cfg, seed, model_class=model_class)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.bos_token_id = tok.bos_token_id
    return model.eval()

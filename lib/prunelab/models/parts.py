"""The layout of one model family: where the tower, projector, decoder and visual tokens are.

:class:`LlavaParts` (resolved once per model by :func:`resolve_parts`) is what the adapter, the encoders and the
FLOPs estimates read; a new family (LLaVA-NeXT, Qwen2.5-VL) adds its own resolver beside this one. Module paths
follow transformers 5.23 with a fallback chain for 5.0 / 4.57 (methods-spec §4.1, §4.5): tower layers at
``vision_tower.encoder.layers`` (5.23 CLIP), ``vision_tower.vision_model.encoder.layers`` (5.0 / 4.57 CLIP),
``vision_tower.encoder.layer`` (DINOv2); attention at ``self_attn`` / ``attention`` / ``attention.attention`` with
``q_proj``/``k_proj`` or ``query``/``key``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from prunelab.errors import CapabilityError, ImageError
from prunelab.models.decoder_side import DecoderSide

__all__ = [
    "LlavaParts",
    "UNSUPPORTED_FAMILIES",
    "TILED_FAMILIES",
    "resolve_parts",
    "find_image_span",
    "expand_image_placeholder",
    "parse_requires",
    "llm_flops",
    "vision_flops",
]


@dataclass
class LlavaParts(DecoderSide):
    """The pieces of a LLaVA model the adapter touches (resolved once)."""

    model: nn.Module
    vision_tower: nn.Module
    projector: nn.Module
    decoder: nn.Module  # LlamaModel-like: .layers, .rotary_emb, .norm, .embed_tokens
    vision_layers: nn.ModuleList
    image_token_id: int
    feature_layer: int
    select_strategy: str
    vision_heads: int

    @property
    def n_vision_layers(self) -> int:
        return len(self.vision_layers)

    def vision_qk(self, layer_idx: int) -> tuple[nn.Module, nn.Module]:
        """``(q_linear, k_linear)`` of tower layer ``layer_idx`` (0-based)."""
        layer = self.vision_layers[layer_idx]
        for attn_path in (("self_attn",), ("attention",), ("attention", "attention")):
            attn = _get_path(layer, attn_path)
            if attn is None:
                continue
            for qn, kn in (("q_proj", "k_proj"), ("query", "key")):
                q, k = getattr(attn, qn, None), getattr(attn, kn, None)
                if isinstance(q, nn.Linear) and isinstance(k, nn.Linear):
                    return q, k
        raise CapabilityError(
            f"cannot find the query/key projections of vision layer {layer_idx} ({type(layer).__name__}); "
            "use a CLIP or DINOv2 tower, or a method that does not need [CLS] attention or keys"
        )


def _get_path(obj, path):
    for name in path:
        obj = getattr(obj, name, None)
        if obj is None:
            return None
    return obj


#: Families resolve_parts reads whose visual run is not one square tile: the LLaVA-1.5 adapter refuses them and
#: names the adapter that runs them (``prunelab.models.families.make_adapter`` picks it).
TILED_FAMILIES = {"llava_next": "LlavaNextAdapter (prunelab.models.llava_next)"}

#: Model families whose visual-token layout the adapter does not handle yet, and why.
UNSUPPORTED_FAMILIES = {
    "llava_onevision": "anyres tiles with newline tokens, SigLIP without [CLS]",
    "qwen2_vl": "no [CLS], windowed ViT, 2x2-merged tokens with 3-D M-RoPE positions",
}


def resolve_parts(model: nn.Module) -> LlavaParts:
    """Find tower, projector, decoder and tower layers of a LLaVA-style model, across transformers versions.
    A Qwen2.5-VL model gets its own :class:`prunelab.models.qwen_parts.QwenParts`.

    Raises :class:`CapabilityError` (one line) for a model without a vision tower or a projector, or with a
    feature selection the adapter does not support (multi-layer features, ``"full"`` strategy).
    """
    cfg = getattr(model, "config", None)
    family = getattr(cfg, "model_type", None)
    if family == "qwen2_5_vl":
        from prunelab.models.qwen_parts import resolve_qwen_parts

        return resolve_qwen_parts(model)
    if family in UNSUPPORTED_FAMILIES:
        # refuse up front: such a model may pass the checks below and fail inside generate
        raise CapabilityError(
            f"{type(model).__name__} ({family}) is not supported yet: its visual tokens are laid out differently "
            f"({UNSUPPORTED_FAMILIES[family]}); use a LLaVA-1.5, LLaVA-NeXT or Qwen2.5-VL checkpoint"
        )
    inner = getattr(model, "model", model)
    vt = getattr(inner, "vision_tower", None)
    if vt is None:
        vt = getattr(model, "vision_tower", None)  # 4.57 convenience property
    if vt is None or cfg is None or not hasattr(cfg, "image_token_id"):
        raise CapabilityError(
            f"{type(model).__name__} has no vision tower / image_token_id; pass a LlavaForConditionalGeneration "
            "(llava-hf checkpoint, ToyLLaVA or prunelab.models.tiny.tiny_llava)"
        )
    if isinstance(vt, (list, tuple, nn.ModuleList)):
        vt = vt[0]
    projector = getattr(inner, "multi_modal_projector", None) or getattr(model, "multi_modal_projector", None)
    if projector is None:
        raise CapabilityError(f"{type(model).__name__} has no multi_modal_projector; pass a LLaVA-style model")
    decoder = getattr(inner, "language_model", None)
    if decoder is None and hasattr(model, "get_decoder"):
        decoder = model.get_decoder()
    if decoder is not None and not hasattr(decoder, "layers") and hasattr(decoder, "model"):
        decoder = decoder.model  # 4.4x layout: language_model is a *ForCausalLM
    if decoder is None or not hasattr(decoder, "layers"):
        raise CapabilityError(f"cannot find the decoder layers of {type(model).__name__}; pass a Llama-based LLaVA")
    layers = None
    for path in (
        ("encoder", "layers"),
        ("vision_model", "encoder", "layers"),
        ("encoder", "layer"),
        ("vision_model", "encoder", "layer"),
    ):
        layers = _get_path(vt, path)
        if layers is not None:
            break
    if layers is None:
        raise CapabilityError(
            f"cannot find the encoder layers of vision tower {type(vt).__name__}; use a CLIP or DINOv2 tower"
        )
    fl = getattr(cfg, "vision_feature_layer", -2)
    if not isinstance(fl, int):
        raise CapabilityError(
            f"vision_feature_layer={fl!r} (several layers) is not supported; use a model with one feature layer (-2)"
        )
    strategy = getattr(cfg, "vision_feature_select_strategy", "default")
    if strategy != "default":
        raise CapabilityError(
            f"vision_feature_select_strategy={strategy!r} keeps the CLS token among the visual tokens; the adapter "
            "needs 'default' (CLS dropped, LLaVA-1.5)"
        )
    vcfg = cfg.vision_config
    return LlavaParts(
        model=model,
        vision_tower=vt,
        projector=projector,
        decoder=decoder,
        vision_layers=layers,
        image_token_id=int(cfg.image_token_id),
        feature_layer=int(fl),
        select_strategy=strategy,
        vision_heads=int(vcfg.num_attention_heads),
    )


# --------------------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------------------

_REQ = re.compile(r"^(keys|queries)\[(-?\d+)\]$")
_KNOWN_REQ = {"attention", "projected", "cls_feature", "text"}


def parse_requires(requires: Sequence[str]) -> tuple[set[int], bool]:
    """Tower layers (negative indices, as in ``attentions[layer]``) whose q/k a method needs, and whether it
    needs the instruction text. Unknown requirement strings raise :class:`CapabilityError`."""
    layers: set[int] = set()
    text = False
    for r in requires:
        m = _REQ.match(r.replace(" ", ""))
        if m:
            layers.add(int(m.group(2)))
        elif r == "text":
            text = True
        elif r not in _KNOWN_REQ:
            raise CapabilityError(
                f"method requires {r!r}, which the LLaVA adapter cannot provide; known: "
                "attention, projected, cls_feature, text, keys[L], queries[L]"
            )
    return layers, text


def find_image_span(ids: torch.Tensor, image_token_id: int) -> tuple[int, int]:
    """``(start, count)`` of the single contiguous run of ``image_token_id`` in 1-D ``ids``."""
    pos = (ids == image_token_id).nonzero().flatten()
    if pos.numel() == 0:
        raise ImageError(
            f"the prompt has no image token (id {image_token_id}); put one '<image>' placeholder in the prompt"
        )
    start, count = int(pos[0]), int(pos.numel())
    if int(pos[-1]) - start + 1 != count:
        raise ImageError("the image tokens are not one contiguous run (several images?); use one image per prompt")
    return start, count


def expand_image_placeholder(ids: torch.Tensor, image_token_id: int, n_tokens: int) -> torch.Tensor:
    """Accept either one placeholder id (expanded to ``n_tokens``) or an already-expanded run of ``n_tokens``."""
    start, count = find_image_span(ids, image_token_id)
    if count == n_tokens:
        return ids
    if count == 1:
        return torch.cat([ids[:start], ids.new_full((n_tokens,), image_token_id), ids[start + 1 :]])
    raise ImageError(
        f"the prompt has {count} image tokens but the vision tower gives {n_tokens}; use one '<image>' id or "
        f"exactly {n_tokens} (check the processor's patch_size / num_additional_image_tokens)"
    )


def _numel(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def llm_flops(parts: LlavaParts, prefill_lengths: Sequence[int], decode_steps: int = 0) -> tuple[float, float]:
    """FLOPs estimate of the decoder: per layer ``2·P_l·n + 4·n²·d`` for a prefill of ``n`` tokens (weights
    multiply-add + QKᵀ and AV), and per decoded token ``2·P_l + 4·c·d`` with ``c`` the layer's context; plus
    ``2·D·V`` for the LM head on one position per forward. ``prefill_lengths`` gives each layer's input length.
    Returns ``(prefill_flops, decode_flops)``."""
    layers = parts.text_layers
    tc = parts.model.config.text_config
    hd = getattr(tc, "head_dim", None)  # Qwen2 text configs have none: heads x head_dim = hidden_size
    d_attn = tc.num_attention_heads * hd if hd else tc.hidden_size
    head = 2.0 * tc.hidden_size * tc.vocab_size
    pre = head
    dec = 0.0
    for layer, n in zip(layers, prefill_lengths):
        p = _numel(layer)
        pre += 2.0 * p * n + 4.0 * n * n * d_attn
        for s in range(decode_steps):
            c = n + s + 1
            dec += 2.0 * p + 4.0 * c * d_attn
    dec += head * decode_steps
    return pre, dec


def vision_flops(parts: LlavaParts, n_images: int = 1) -> float:
    """FLOPs estimate of the tower (all layers, ``S = N + 1`` tokens) and the projector on ``N`` tokens."""
    vcfg = parts.model.config.vision_config
    s = (vcfg.image_size // vcfg.patch_size) ** 2 + 1
    d = vcfg.hidden_size
    total = sum(2.0 * _numel(layer) * s + 4.0 * s * s * d for layer in parts.vision_layers)
    total += 2.0 * _numel(parts.projector) * (s - 1)
    return total * n_images

"""Run any registered pruning method inside generation of a Hugging Face ``LlavaForConditionalGeneration``.

Works for llava-hf checkpoints (CLIP tower, e.g. ``llava-hf/llava-1.5-7b-hf``) and for ToyLLaVA / the tiny test
models (DINOv2 or CLIP tower) without forking transformers and without patching any class (methods-spec §4.4):

* **Pre-LLM methods** (FasterVLM, DivPrune, VisionZip, PruMerge+, AgilePruner, CDPruner, ...): two-stage
  prefill (strategy A). (1) run the vision tower once, reading ``hidden_states[-2]`` and the q/k projections of
  the layers a method needs through scoped forward hooks; (2) build a :class:`~prunelab.methods.base.VisualContext`
  per image and run the pruner; (3) project; (4) embed the prompt ids, replace the image-placeholder run (found
  by ``config.image_token_id``, never by offset) with the kept rows; (5) ``model.generate(inputs_embeds=...)``.
  Positions are then contiguous ``0..L'-1``, as in the original repositories.
* **In-LLM methods** (FastV, PDrop, SparseVLM, DART; :mod:`prunelab.methods.in_llm`): scoped
  ``forward_pre_hook(with_kwargs=True)`` on every decoder layer (strategy D). During prefill the hooks let the
  method read a layer's input, and at the layers where it prunes they gather the kept rows of the hidden states
  and substitute matching ``position_ids`` / rotary ``position_embeddings`` / causal mask for that layer and every
  later one (``LlamaModel`` hands the same full-length kwargs to all layers). Pruning happens once at prefill;
  the KV cache then holds fewer entries in later layers; decoding positions continue from the full prompt
  length (what ``generate`` passes), as FastV's KV-cache variant and DART intend.
  All hooks live in a :class:`~prunelab.models.hooks.HookScope` and are removed when the call ends, also on error.

[CLS] attention is *recomputed* from the captured ``q_proj``/``k_proj`` outputs of the layer whose output is the
LLaVA feature (``attentions[-2]`` <-> ``hidden_states[-2]``; methods-spec §1, §4.2): softmax of the CLS query
against all keys with the layer's ``head_dim**-0.5`` scaling, per head, CLS column dropped. This equals the eager
attention map (checked in the tests) and works whatever attention kernel the tower uses, in transformers 5.x and
4.57 alike. The text decoder keeps SDPA.

Module paths follow transformers 5.23 with a fallback chain for 5.0 / 4.57 (methods-spec §4.1, §4.5):
tower layers at ``vision_tower.encoder.layers`` (5.23 CLIP), ``vision_tower.vision_model.encoder.layers``
(5.0 / 4.57 CLIP), ``vision_tower.encoder.layer`` (DINOv2); attention at ``self_attn`` / ``attention`` /
``attention.attention`` with ``q_proj``/``k_proj`` or ``query``/``key``.
"""
from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from prunelab.device import resolve_device, synchronize
from prunelab.errors import BudgetError, CapabilityError, ImageError, check_budget
from prunelab.methods.base import Pruner, PruneResult, VisualContext, get_pruner, prune
from prunelab.models.hooks import HookScope
from prunelab.models.prompts import VICUNA_SYSTEM, build_prompt, tokenize_with_image

__all__ = [
    "resolve_device",
    "LlavaParts",
    "resolve_parts",
    "LlavaAdapter",
    "RunOutput",
    "find_image_span",
    "expand_image_placeholder",
    "parse_requires",
    "layer_attention_rows",
    "layer_keys",
    "llm_flops",
]


# --------------------------------------------------------------------------------------------------------
# Module resolution
# --------------------------------------------------------------------------------------------------------

@dataclass
class LlavaParts:
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

    @property
    def text_layers(self) -> nn.ModuleList:
        return self.decoder.layers

    @property
    def embed(self) -> nn.Module:
        return self.model.get_input_embeddings()

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


def resolve_parts(model: nn.Module) -> LlavaParts:
    """Find tower, projector, decoder and tower layers of a LLaVA-style model, across transformers versions.

    Raises :class:`CapabilityError` (one line) for a model without a vision tower or a projector, or with a
    feature selection the adapter does not support (multi-layer features, ``"full"`` strategy).
    """
    inner = getattr(model, "model", model)
    vt = getattr(inner, "vision_tower", None)
    if vt is None:
        vt = getattr(model, "vision_tower", None)  # 4.57 convenience property
    cfg = getattr(model, "config", None)
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
    for path in (("encoder", "layers"), ("vision_model", "encoder", "layers"), ("encoder", "layer"),
                 ("vision_model", "encoder", "layer")):
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
        model=model, vision_tower=vt, projector=projector, decoder=decoder, vision_layers=layers,
        image_token_id=int(cfg.image_token_id), feature_layer=int(fl), select_strategy=strategy,
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
            raise CapabilityError(f"method requires {r!r}, which the LLaVA adapter cannot provide; known: "
                                  "attention, projected, cls_feature, text, keys[L], queries[L]")
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
        return torch.cat([ids[:start], ids.new_full((n_tokens,), image_token_id), ids[start + 1:]])
    raise ImageError(
        f"the prompt has {count} image tokens but the vision tower gives {n_tokens}; use one '<image>' id or "
        f"exactly {n_tokens} (check the processor's patch_size / num_additional_image_tokens)"
    )


def _rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def _rope(x, cos, sin):
    # Llama convention (modeling_llama.apply_rotary_pos_emb): x*cos + rotate_half(x)*sin, heads on dim 1.
    return x * cos.unsqueeze(1) + _rotate_half(x) * sin.unsqueeze(1)


def _qk(layer: nn.Module, hidden: torch.Tensor, pos_emb, rows: torch.Tensor | None = None):
    attn = layer.self_attn
    x = layer.input_layernorm(hidden)
    hd = attn.head_dim
    cos, sin = pos_emb
    k = attn.k_proj(x).view(x.shape[0], x.shape[1], -1, hd).transpose(1, 2)
    k = _rope(k, cos, sin)
    xq = x if rows is None else x[:, rows]
    q = attn.q_proj(xq).view(x.shape[0], xq.shape[1], -1, hd).transpose(1, 2)
    q = _rope(q, cos if rows is None else cos[:, rows], sin if rows is None else sin[:, rows])
    return q, k


def layer_attention_rows(layer: nn.Module, hidden: torch.Tensor, pos_emb, rows: torch.Tensor) -> torch.Tensor:
    """Causal softmax attention probabilities of decoder ``layer`` for query ``rows`` of its input ``hidden``
    ``(1, L, D)``: returns ``(H, R, L)`` float32. Recomputed from ``input_layernorm``, ``q_proj``, ``k_proj`` and
    RoPE exactly as the layer does (FastV / PDrop / SparseVLM scores; methods-spec §2.8-2.10), so no eager
    attention is needed. Keys after a query's own position get probability 0."""
    attn = layer.self_attn
    rows = torch.as_tensor(rows, dtype=torch.long, device=hidden.device)
    q, k = _qk(layer, hidden, pos_emb, rows)
    n_rep = q.shape[1] // k.shape[1]
    if n_rep > 1:
        k = k.repeat_interleave(n_rep, dim=1)
    scores = (q.float() @ k.float().transpose(-1, -2))[0] * float(attn.scaling)
    L = hidden.shape[1]
    future = torch.arange(L, device=hidden.device)[None, :] > rows[:, None]
    scores = scores.masked_fill(future[None], float("-inf"))
    return torch.softmax(scores, dim=-1)


def layer_keys(layer: nn.Module, hidden: torch.Tensor, pos_emb) -> torch.Tensor:
    """Keys of decoder ``layer`` after RoPE for its input ``hidden`` ``(1, L, D)``, heads concatenated:
    ``(L, n_kv_heads * head_dim)`` (DART's pivot signal, methods-spec §2.11)."""
    _, k = _qk(layer, hidden, pos_emb, rows=torch.zeros(1, dtype=torch.long, device=hidden.device))
    return k[0].transpose(0, 1).reshape(hidden.shape[1], -1)


def _numel(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def llm_flops(parts: LlavaParts, prefill_lengths: Sequence[int], decode_steps: int = 0) -> tuple[float, float]:
    """FLOPs estimate of the decoder: per layer ``2·P_l·n + 4·n²·d`` for a prefill of ``n`` tokens (weights
    multiply-add + QKᵀ and AV), and per decoded token ``2·P_l + 4·c·d`` with ``c`` the layer's context; plus
    ``2·D·V`` for the LM head on one position per forward. ``prefill_lengths`` gives each layer's input length.
    Returns ``(prefill_flops, decode_flops)``."""
    layers = parts.text_layers
    tc = parts.model.config.text_config
    d_attn = tc.num_attention_heads * getattr(tc, "head_dim", None) or tc.hidden_size
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


# --------------------------------------------------------------------------------------------------------
# In-LLM editing engine
# --------------------------------------------------------------------------------------------------------

class PrefillView:
    """What an in-LLM method may read at the input of a decoder layer during prefill (batch 1)."""

    def __init__(self, engine: DecoderEditor, layer_idx: int, hidden: torch.Tensor, pos_emb):
        self.engine = engine
        self.layer_idx = layer_idx
        self.hidden = hidden
        self.pos_emb = pos_emb
        self.decoder = engine.parts.decoder
        self.n_layers = len(engine.parts.text_layers)

    @property
    def visual_pos(self) -> torch.Tensor:
        """Positions (in the current sequence) of the visual tokens, in order (merged tokens included)."""
        return self.engine.is_visual[: self.engine.n_prompt_cur].nonzero().flatten()

    @property
    def visual_orig(self) -> torch.Tensor:
        """Original image-patch index (0..N-1) of each current visual token (``-1`` for merged tokens)."""
        o = self.engine.cur_orig[self.visual_pos]
        return torch.where(o >= 0, o - self.engine.image_start, o)

    @property
    def text_after_pos(self) -> torch.Tensor:
        """Positions of the prompt tokens after the image (question + ``ASSISTANT:``)."""
        e = self.engine
        o = e.cur_orig[: e.n_prompt_cur]
        return ((o >= e.image_start + e.n_image) & ~e.is_visual[: e.n_prompt_cur]).nonzero().flatten()

    def pos_of_orig(self, orig: torch.Tensor) -> torch.Tensor:
        """Current positions of tokens given by their original prompt index."""
        e = self.engine
        table = torch.full((e.prompt_len,), -1, dtype=torch.long, device=orig.device)
        o = e.cur_orig[: e.n_prompt_cur]
        ok = o >= 0
        table[o[ok]] = ok.nonzero().flatten()
        return table[orig]

    @property
    def last_pos(self) -> int:
        return self.engine.n_prompt_cur - 1

    def attention_rows(self, layer_idx: int, rows: torch.Tensor) -> torch.Tensor:
        """``(H, R, L)`` attention probabilities of layer ``layer_idx`` computed on *this* input."""
        return layer_attention_rows(self.decoder.layers[layer_idx], self.hidden, self.pos_emb, rows)

    def keys(self, layer_idx: int) -> torch.Tensor:
        return layer_keys(self.decoder.layers[layer_idx], self.hidden, self.pos_emb)


class DecoderEditor:
    """Applies an in-LLM method through scoped pre-hooks on the decoder layers (batch 1).

    Modes: ``"select"`` (first prefill: the method observes layer inputs and decides edits, which are recorded)
    and ``"replay"`` (a no-cache forward over prompt + generated tokens re-applies the recorded edits to the
    prompt part, keeping every generated token: the reference that cached decoding must match).
    Cached decode steps (one query token) only need the causal mask, when one is materialised, trimmed to the
    layer's shorter cache.
    """

    def __init__(self, parts: LlavaParts, method, budget: int, prompt_len: int, image_start: int, n_image: int):
        self.parts = parts
        self.method = method
        self.budget = budget
        self.prompt_len = prompt_len
        self.image_start = image_start
        self.n_image = n_image
        self.n_layers = len(parts.text_layers)
        self.plan = method.plan(self.n_layers, n_image, budget)
        self.edits: dict[int, tuple[torch.Tensor, torch.Tensor | None]] = {}  # layer -> (keep positions, extra)
        self.visual_counts: list[int] = []
        self.seq_lengths: list[int] = []
        self.mode = "select"
        self.state: Any = None
        self._reset_pass(None)

    # ---- per forward pass bookkeeping
    def _reset_pass(self, device):
        dev = device or torch.device("cpu")
        self.cur_orig = torch.arange(self.prompt_len, device=dev)
        self.is_visual = (self.cur_orig >= self.image_start) & (self.cur_orig < self.image_start + self.n_image)
        self.n_prompt_cur = self.prompt_len
        self.n_tail = 0
        self.override: dict | None = None

    def install(self, scope: HookScope) -> None:
        for i, layer in enumerate(self.parts.text_layers):
            scope.forward_pre(layer, self._make_hook(i), with_kwargs=True)

    def _make_hook(self, i: int):
        def hook(module, args, kwargs):
            return self._pre(i, module, args, kwargs)

        return hook

    def _positions(self, device) -> torch.Tensor:
        if self.method.positions == "original":
            p = self.cur_orig.clone()
            if (p < 0).any():
                raise CapabilityError("merged tokens have no original position; use positions='contiguous'")
        else:
            p = torch.arange(self.n_prompt_cur, device=device)
        tail = torch.arange(self.prompt_len, self.prompt_len + self.n_tail, device=device)
        return torch.cat([p, tail]).unsqueeze(0)

    def _causal_like(self, mask: torch.Tensor, length: int) -> torch.Tensor:
        # Batch 1 without padding: a plain causal mask of the new length, in the incoming mask's format.
        causal = torch.ones(length, length, dtype=torch.bool, device=mask.device).tril()
        if mask.dtype == torch.bool:
            out = causal
        else:
            out = torch.zeros(length, length, dtype=mask.dtype, device=mask.device)
            out = out.masked_fill(~causal, torch.finfo(mask.dtype).min)
        return out[None, None].expand(mask.shape[0], mask.shape[1], length, length)

    def _pre(self, i, module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        q_len = hidden.shape[1]
        if q_len == 1:
            return self._decode_step(i, args, kwargs)
        if i == 0:
            self._reset_pass(hidden.device)
            self.n_tail = q_len - self.prompt_len
            if self.n_tail < 0 or (self.mode == "select" and self.n_tail != 0):
                raise CapabilityError("in-LLM pruning saw a prompt of unexpected length; run it through LlavaAdapter")
            if self.mode == "select":
                self.state = self.method.start(self, hidden)
        if self.override is not None:
            kwargs = dict(kwargs)
            kwargs.update(self.override)
        pos_emb = kwargs.get("position_embeddings")
        view = PrefillView(self, i, hidden, pos_emb)
        if self.mode == "select":
            if i in self.plan.observe:
                self.method.observe(self.state, view)
            edit = self.method.edit(self.state, view) if i in self.plan.edit else None
            if edit is not None:
                vis = view.visual_pos
                keep_v = vis[torch.as_tensor(edit.keep_visual, dtype=torch.long, device=vis.device)]
                keep_mask = ~self.is_visual[: self.n_prompt_cur].clone()
                keep_mask[keep_v] = True
                keep = keep_mask.nonzero().flatten()
                self.edits[i] = (keep, None if edit.extra is None else edit.extra.detach())
        if i in self.edits:
            hidden, kwargs = self._apply(i, hidden, kwargs)
            args = (hidden,) + tuple(args[1:]) if args else args
            if not args:
                kwargs["hidden_states"] = hidden
        if self.mode == "select" or self.n_tail == 0:
            self.visual_counts.append(int(self.is_visual[: self.n_prompt_cur].sum()))
            self.seq_lengths.append(int(hidden.shape[1]))
        return args, kwargs

    def _apply(self, i, hidden, kwargs):
        keep, extra = self.edits[i]
        keep = keep.to(hidden.device)
        prompt_h = hidden[:, : self.n_prompt_cur]
        tail_h = hidden[:, self.n_prompt_cur:]
        new_h = prompt_h[:, keep]
        new_orig = self.cur_orig[keep]
        new_vis = self.is_visual[keep]
        if extra is not None and extra.shape[0] > 0:
            vis_pos = new_vis.nonzero().flatten()
            at = int(vis_pos[-1]) + 1 if vis_pos.numel() else int(
                ((new_orig >= 0) & (new_orig < self.image_start)).sum())
            ex = extra.to(hidden.dtype).unsqueeze(0)
            new_h = torch.cat([new_h[:, :at], ex, new_h[:, at:]], dim=1)
            m = extra.shape[0]
            new_orig = torch.cat([new_orig[:at], new_orig.new_full((m,), -1), new_orig[at:]])
            new_vis = torch.cat([new_vis[:at], new_vis.new_ones(m), new_vis[at:]])
        self.cur_orig, self.is_visual = new_orig, new_vis
        self.n_prompt_cur = new_h.shape[1]
        hidden = torch.cat([new_h, tail_h], dim=1)
        pos_ids = self._positions(hidden.device)
        cos, sin = self.parts.decoder.rotary_emb(hidden, pos_ids)
        ov = {"position_ids": pos_ids, "position_embeddings": (cos, sin)}
        mask = kwargs.get("attention_mask")
        if isinstance(mask, torch.Tensor):
            ov["attention_mask"] = self._causal_like(mask, hidden.shape[1])
        self.override = ov
        kwargs = dict(kwargs)
        kwargs.update(ov)
        return hidden, kwargs

    def _decode_step(self, i, args, kwargs):
        mask = kwargs.get("attention_mask")
        if isinstance(mask, torch.Tensor) and self.edits and i >= min(self.edits):
            cache = kwargs.get("past_key_values")
            if cache is not None:
                need = int(cache.get_seq_length(i)) + 1
                if mask.shape[-1] != need:
                    kwargs = dict(kwargs)
                    # Batch 1, no padding: every prompt column is visible, so the last `need` columns are right.
                    kwargs["attention_mask"] = mask[..., -need:]
        return args, kwargs

    def final_visual_orig(self) -> torch.Tensor:
        """Image-patch indices (0..N-1) of the visual tokens left after the last edit (merged tokens excluded)."""
        o = self.cur_orig[: self.n_prompt_cur][self.is_visual[: self.n_prompt_cur]]
        o = o[o >= 0]
        return (o - self.image_start).cpu()


# --------------------------------------------------------------------------------------------------------
# The adapter
# --------------------------------------------------------------------------------------------------------

@dataclass
class RunOutput:
    """``sequences``: generated ids per sample (prompt excluded, stopped at EOS); ``texts`` when a tokenizer is
    known; ``records``: one dict per sample (see :meth:`LlavaAdapter.run`); ``logits``: ``(steps, V)`` per sample
    when requested."""

    sequences: list[list[int]]
    records: list[dict]
    texts: list[str] | None = None
    logits: list[torch.Tensor] | None = None


@dataclass
class _Sample:
    ids: torch.Tensor
    image_start: int
    n_image: int
    embeds: torch.Tensor | None = None  # (L', D) after pruning (pre-LLM) or full (in-LLM)
    record: dict = field(default_factory=dict)
    editor: DecoderEditor | None = None
    kept: PruneResult | None = None


class _TimedPruner(Pruner):
    """Wraps a pruner so ``prune()`` (which adds the standard stats) can be timed without the stats' cost."""

    def __init__(self, inner: Pruner, device):
        self.inner = inner
        self.device = device
        self.elapsed = 0.0
        self.name = inner.name

    def __call__(self, ctx, budget):
        synchronize(self.device)
        t0 = time.perf_counter()
        res = self.inner(ctx, budget)
        synchronize(self.device)
        self.elapsed = time.perf_counter() - t0
        return res


class LlavaAdapter:
    """Generate with a LLaVA model under a pruning method and budget, returning text and per-sample records.

    Parameters
    ----------
    model: a ``LlavaForConditionalGeneration`` (llava-hf checkpoint, ToyLLaVA, or a tiny test model).
    processor / tokenizer: optional; needed only for :meth:`generate` (images + questions) and for ``texts``.
    device: ``"auto"`` / ``"cpu"`` / ``"cuda"``; the model is moved there (``DeviceError`` if cuda is absent).
    """

    def __init__(self, model: nn.Module, processor=None, tokenizer=None, device: str | torch.device | None = None):
        self.parts = resolve_parts(model)
        self.model = model
        self.processor = processor
        self.tokenizer = tokenizer if tokenizer is not None else getattr(processor, "tokenizer", None)
        if device is not None:
            self.device = resolve_device(device)
            self.model.to(self.device)
        else:
            self.device = next(model.parameters()).device
        self.model.eval()
        self._vflops = vision_flops(self.parts)

    # ---------------- vision side
    @property
    def n_image_tokens(self) -> int:
        """Visual tokens per image at the vision config's resolution. The processor may resize to another size
        (ToyLLaVA's DINOv2 config says 518 px, its processor gives 336 px); :meth:`tokens_for` counts the tokens
        of actual ``pixel_values``, which is what budgets are checked against."""
        vcfg = self.model.config.vision_config
        return (vcfg.image_size // vcfg.patch_size) ** 2

    def tokens_for(self, pixel_values: torch.Tensor) -> int:
        """Patch tokens the tower makes from ``pixel_values`` ``(B, 3, H, W)``."""
        patch = self.model.config.vision_config.patch_size
        h, w = pixel_values.shape[-2:]
        return (int(h) // patch) * (int(w) // patch)

    @torch.no_grad()
    def encode_images(self, pixel_values: torch.Tensor, qk_layers: Sequence[int] = ()) -> dict:
        """Run the tower once; return per-batch ``features (B,N,C)``, ``cls_feature (B,C)``,
        ``cls_attention_heads (B,H,N)`` and ``queries/keys {layer: (B,H,S,d)}`` for ``qk_layers``."""
        p = self.parts
        nl = p.n_vision_layers
        att_layer = nl + p.feature_layer  # layer whose output is hidden_states[feature_layer]
        wanted = {int(layer) for layer in qk_layers}
        need = {att_layer} | {nl + layer if layer < 0 else layer for layer in wanted}
        store: dict = {}
        with HookScope() as scope:
            for li in sorted(need):
                if not 0 <= li < nl:
                    raise CapabilityError(f"vision layer {li - nl} does not exist (the tower has {nl} layers); "
                                          "choose a layer in -1..-{nl}")
                q, k = p.vision_qk(li)
                scope.capture_output(q, store, ("q", li))
                scope.capture_output(k, store, ("k", li))
            dtype = next(p.vision_tower.parameters()).dtype
            out = p.vision_tower(pixel_values.to(self.device, dtype), output_hidden_states=True, return_dict=True)
        hs = out.hidden_states[p.feature_layer]
        b, s, c = hs.shape
        h = p.vision_heads

        def split(x):
            return x.reshape(b, s, h, -1).transpose(1, 2)

        q = split(store[("q", att_layer)]).float()
        k = split(store[("k", att_layer)]).float()
        logits = (q[:, :, :1] @ k.transpose(-1, -2))[:, :, 0] * (q.shape[-1] ** -0.5)
        cls_heads = torch.softmax(logits, dim=-1)[:, :, 1:]
        res = {
            "features": hs[:, 1:],
            "cls_feature": hs[:, 0],
            "cls_attention_heads": cls_heads,
            "queries": {},
            "keys": {},
        }
        for layer in wanted:
            li = nl + layer if layer < 0 else layer
            key = li - nl
            res["queries"][key] = split(store[("q", li)])
            res["keys"][key] = split(store[("k", li)])
        return res

    @torch.no_grad()
    def contexts(self, pixel_values: torch.Tensor, qk_layers: Sequence[int] = (-1, -2), erank_stats=None) -> list[VisualContext]:
        """One :class:`VisualContext` per image (no text), e.g. to calibrate erank statistics
        (:func:`prunelab.methods.adaptive.calibrate_erank`) before a run."""
        enc = self.encode_images(pixel_values, qk_layers)
        return [self.context(enc, b, erank_stats=erank_stats) for b in range(pixel_values.shape[0])]

    def _project(self, x: torch.Tensor) -> torch.Tensor:
        w = next(self.parts.projector.parameters())
        with torch.no_grad():
            return self.parts.projector(x.to(w.dtype)).float()

    def context(self, enc: dict, b: int, text_embeds=None, erank_stats=None, image_id=None) -> VisualContext:
        feats = enc["features"][b]
        n = feats.shape[0]
        side = int(round(n ** 0.5))
        heads = enc["cls_attention_heads"][b]
        return VisualContext(
            features=feats.float(),
            cls_attention=heads.mean(0),
            cls_attention_heads=heads,
            cls_feature=enc["cls_feature"][b].float(),
            projector=self._project,
            queries={k: v[b].float() for k, v in enc["queries"].items()},
            keys={k: v[b].float() for k, v in enc["keys"].items()},
            grid=(side, side) if side * side == n else (1, n),
            text_embeds=text_embeds,
            erank_stats=erank_stats,
            image_id=image_id,
        )

    # ---------------- main entry
    def _method(self, method, method_params):
        if method is None or (isinstance(method, str) and method.lower() in ("none", "full", "vanilla")):
            return None
        if isinstance(method, Pruner):
            return method
        return get_pruner(method, **(method_params or {}))

    @torch.no_grad()
    def run(
        self,
        input_ids,
        pixel_values: torch.Tensor,
        method: str | Pruner | None = None,
        budget: int | None = None,
        *,
        method_params: dict | None = None,
        max_new_tokens: int = 32,
        batch_size: int = 1,
        output_logits: bool = False,
        erank_stats: dict | None = None,
        image_ids: Sequence[str] | None = None,
        eos_token_id: int | None = None,
        progress: bool = False,
    ) -> RunOutput:
        """Greedy generation for each (prompt ids, image) pair under ``method`` at budget ``T``.

        ``input_ids``: ``(B, L)`` tensor or list of 1-D tensors, each with one ``<image>`` id or the full run of
        N image ids; ``pixel_values``: ``(B, 3, H, W)``. ``method=None`` runs the unpruned model through the
        same path. Records per sample: method, budget, params, n_image_tokens, n_kept, kept_indices, order,
        positions, the pruner's stats (erank_kept_*, attention_mass_kept, ...), prompt_len (LLM prefill length)
        and prompt_len_unpruned, visual_tokens_per_layer, equivalent_tokens, vision_s, select_s, prefill_s,
        decode_s, n_generated, batch_size, flops_vision, flops_prefill, flops_decode.
        """
        pruner = self._method(method, method_params)
        in_llm = pruner is not None and getattr(pruner, "stage", "pre_llm") == "in_llm"
        budget = self._method_budget(pruner, budget, pixel_values)
        if isinstance(batch_size, bool) or int(batch_size) < 1:
            raise BudgetError(f"batch_size must be a positive integer, got {batch_size!r}; pass batch_size=1")
        if in_llm and batch_size != 1:
            raise CapabilityError(
                f"{pruner.name} is an in-LLM method and runs with batch_size=1 (its source uses batch element 0); "
                "pass batch_size=1"
            )
        rows = [torch.as_tensor(r, dtype=torch.long) for r in (input_ids if not torch.is_tensor(input_ids) else list(input_ids))]
        if pixel_values.shape[0] != len(rows):
            raise ImageError(f"{len(rows)} prompts but {pixel_values.shape[0]} images; pass one image per prompt")
        eos = eos_token_id if eos_token_id is not None else self.model.generation_config.eos_token_id
        qk_layers, needs_text = parse_requires(getattr(pruner, "requires", ()) if (pruner and not in_llm) else ())
        out_seqs: list[list[int]] = []
        out_recs: list[dict] = []
        out_logits: list[torch.Tensor] = []
        chunks = range(0, len(rows), batch_size)
        if progress:
            from tqdm.auto import tqdm

            chunks = tqdm(chunks, desc=f"{getattr(pruner, 'name', 'full')} T={budget}")
        for c0 in chunks:
            idx = list(range(c0, min(c0 + batch_size, len(rows))))
            samples = self._prepare(rows, idx, pixel_values, pruner, budget, in_llm, qk_layers, needs_text,
                                    erank_stats, image_ids)
            seqs, logits, timing = self._generate(samples, max_new_tokens, eos, output_logits, in_llm)
            self._finish_records(samples, seqs, timing)
            out_seqs.extend(seqs)
            out_recs.extend(s.record for s in samples)
            if output_logits:
                out_logits.extend(logits)
        texts = self._attach_texts(out_seqs, out_recs)
        return RunOutput(out_seqs, out_recs, texts, out_logits if output_logits else None)

    def _method_budget(self, pruner, budget, pixel_values) -> int | None:
        """``budget`` checked against the image's token count (``None`` for the unpruned model)."""
        if pruner is None:
            return budget
        n_img = self.tokens_for(pixel_values)
        if budget is None:
            raise BudgetError(f"method {pruner.name!r} needs a budget; pass budget=T with 1 <= T <= {n_img}")
        return check_budget(budget, n_img)

    def _finish_records(self, samples, seqs, timing) -> None:
        """Per sample of one ``_generate`` chunk: its timings, generated count, batch size and FLOPs estimates."""
        for s, seq, t in zip(samples, seqs, timing):
            rec = s.record
            rec.update(t)
            rec["n_generated"] = len(seq)
            rec["batch_size"] = len(samples)
            per_layer = s.editor.seq_lengths if s.editor is not None else [s.embeds.shape[0]] * len(self.parts.text_layers)
            rec["flops_prefill"], rec["flops_decode"] = llm_flops(self.parts, per_layer, len(seq))
            rec["flops_vision"] = self._vflops

    def _attach_texts(self, seqs, recs) -> list[str] | None:
        """Decoded texts (also stored as ``record["text"]``), or ``None`` without a tokenizer."""
        if self.tokenizer is None:
            return None
        texts = [self.tokenizer.decode(q, skip_special_tokens=True).strip() for q in seqs]
        for r, t in zip(recs, texts):
            r["text"] = t
        return texts

    def _prompt_embeds(self, row: torch.Tensor, n_image: int):
        """``(ids, image_start, n_image, text embeddings)`` of one prompt, its image placeholder expanded to
        ``n_image`` ids (image ids outside the vocabulary embed as id 0; those rows are replaced anyway)."""
        p = self.parts
        ids = expand_image_placeholder(row, p.image_token_id, n_image).to(self.device)
        start, n = find_image_span(ids, p.image_token_id)
        safe = ids.masked_fill(ids == p.image_token_id, 0) if p.image_token_id >= p.embed.num_embeddings else ids
        return ids, start, n, p.embed(safe)

    @torch.no_grad()
    def run_shared_image(
        self,
        input_ids,
        pixel_values: torch.Tensor,
        method: str | Pruner | None = None,
        budget: int | None = None,
        *,
        method_params: dict | None = None,
        max_new_tokens: int = 32,
        batch_size: int = 32,
        erank_stats: dict | None = None,
        image_id: str | None = None,
        eos_token_id: int | None = None,
    ) -> RunOutput:
        """Greedy generation for several prompts about **one** image (``pixel_values`` ``(1, 3, H, W)``), e.g. the
        POPE questions of an image: the tower and the method's selection run once, the kept tokens are spliced
        into every prompt, and the prompts are decoded ``batch_size`` at a time with left padding (the path
        :meth:`run` tests against batch 1). Records are :meth:`run`'s, one per prompt, with ``shared_selection``
        True and ``select_s`` the one selection's time.

        A method whose selection depends on the prompt (``requires`` ``"text"``: CDPruner, SparseVLM) or that
        prunes inside the LLM (FastV, PDrop, DART) cannot share a selection: each prompt then runs through
        :meth:`run` with batch 1, as before (``shared_selection`` False)."""
        pruner = self._method(method, method_params)
        rows = [torch.as_tensor(r, dtype=torch.long) for r in (input_ids if not torch.is_tensor(input_ids) else list(input_ids))]
        if pixel_values.shape[0] != 1:
            raise ImageError(f"run_shared_image takes one image, got {pixel_values.shape[0]}; use run() for several")
        if isinstance(batch_size, bool) or int(batch_size) < 1:
            raise BudgetError(f"batch_size must be a positive integer, got {batch_size!r}; pass batch_size=1")
        in_llm = pruner is not None and getattr(pruner, "stage", "pre_llm") == "in_llm"
        qk_layers, needs_text = parse_requires(getattr(pruner, "requires", ()) if (pruner and not in_llm) else ())
        kw = dict(method_params=None, max_new_tokens=max_new_tokens, erank_stats=erank_stats,
                  image_ids=None if image_id is None else [image_id], eos_token_id=eos_token_id)
        if in_llm or needs_text or not rows:
            outs = [self.run([r], pixel_values, pruner, budget, **kw) for r in rows]
            recs = [dict(o.records[0], sample=i, shared_selection=False) for i, o in enumerate(outs)]
            texts = None if self.tokenizer is None else [o.texts[0] for o in outs]
            return RunOutput([o.sequences[0] for o in outs], recs, texts)
        budget = self._method_budget(pruner, budget, pixel_values)
        eos = eos_token_id if eos_token_id is not None else self.model.generation_config.eos_token_id
        first = self._prepare(rows[:1], [0], pixel_values, pruner, budget, False, qk_layers, False, erank_stats,
                              kw["image_ids"])[0]
        n_visual = first.embeds.shape[0] - (first.ids.shape[0] - first.n_image)  # kept rows (merged ones included)
        visual = first.embeds[first.image_start: first.image_start + n_visual]
        samples = [first]
        for i, r in enumerate(rows[1:], start=1):
            ids, start, n, text_emb = self._prompt_embeds(r, first.n_image)
            rec = dict(first.record, sample=i, prompt_len_unpruned=int(ids.shape[0]))
            s = _Sample(ids=ids, image_start=start, n_image=n, record=rec, kept=first.kept)
            s.embeds = torch.cat([text_emb[:start], visual, text_emb[start + n:]], dim=0)
            rec["prompt_len"] = int(s.embeds.shape[0])
            samples.append(s)
        out_seqs: list[list[int]] = []
        for c0 in range(0, len(samples), int(batch_size)):
            chunk = samples[c0: c0 + int(batch_size)]
            seqs, _, timing = self._generate(chunk, max_new_tokens, eos, False, False)
            self._finish_records(chunk, seqs, timing)
            out_seqs.extend(seqs)
        recs = [dict(s.record, shared_selection=True) for s in samples]
        return RunOutput(out_seqs, recs, self._attach_texts(out_seqs, recs))

    def _prepare(self, rows, idx, pixel_values, pruner, budget, in_llm, qk_layers, needs_text, erank_stats, image_ids):
        p = self.parts
        n_img = self.tokens_for(pixel_values)
        synchronize(self.device)
        t0 = time.perf_counter()
        enc = self.encode_images(pixel_values[idx], qk_layers)
        synchronize(self.device)
        vision_s = (time.perf_counter() - t0) / len(idx)
        samples = []
        for j, b in enumerate(idx):
            ids, start, n, text_emb = self._prompt_embeds(rows[b], enc["features"].shape[1])
            rec: dict[str, Any] = {
                "sample": b,
                "image_id": None if image_ids is None else image_ids[b],
                "method": "full" if pruner is None else pruner.name,
                "stage": "none" if pruner is None else pruner.stage,
                "budget": n_img if pruner is None else budget,
                "params": {} if pruner is None else pruner.params(),
                "n_image_tokens": n,
                "prompt_len_unpruned": int(ids.shape[0]),
                "vision_s": vision_s,
            }
            s = _Sample(ids=ids, image_start=start, n_image=n, record=rec)
            if pruner is None or in_llm:
                t1 = time.perf_counter()
                tokens = self._project(enc["features"][j]).to(text_emb.dtype)
                rec["select_s"] = 0.0
                if in_llm:
                    s.editor = DecoderEditor(p, pruner, budget, int(ids.shape[0]), start, n)
                    rec["order"], rec["positions"] = "raster", pruner.positions
                else:
                    rec.update(n_kept=n, kept_indices=list(range(n)), order="raster", positions="contiguous")
                    rec["visual_tokens_per_layer"] = [n] * len(p.text_layers)
                    rec["equivalent_tokens"] = float(n)
                rec["assemble_s"] = time.perf_counter() - t1
            else:
                text_ctx = None
                if needs_text:
                    after = torch.arange(start + n, ids.shape[0], device=ids.device)
                    text_ctx = text_emb[after].float()
                ctx = self.context(enc, j, text_embeds=text_ctx, erank_stats=erank_stats,
                                   image_id=None if image_ids is None else str(image_ids[b]))
                timed = _TimedPruner(pruner, self.device)
                res = prune(ctx, timed, budget)
                t1 = time.perf_counter()
                tokens = res.output_tokens(ctx, "projected").to(text_emb.dtype)
                rec["select_s"] = timed.elapsed
                rec["assemble_s"] = time.perf_counter() - t1
                s.kept = res
                rec.update({k: v for k, v in res.stats.items() if k not in ("method", "budget")})
                rec["n_kept"] = res.n_kept
                rec["kept_indices"] = res.indices.tolist()
                rec["order"], rec["positions"] = res.order, res.positions
                rec["visual_tokens_per_layer"] = [res.n_kept] * len(p.text_layers)
                rec["equivalent_tokens"] = float(res.n_kept)
            s.embeds = torch.cat([text_emb[:start], tokens, text_emb[start + n:]], dim=0)
            rec["prompt_len"] = int(s.embeds.shape[0])
            samples.append(s)
        return samples

    def _generate(self, samples, max_new_tokens, eos, output_logits, in_llm):
        """One ``generate`` call for a chunk (left padding when lengths differ)."""
        lens = [s.embeds.shape[0] for s in samples]
        lmax = max(lens)
        d = samples[0].embeds.shape[1]
        emb = samples[0].embeds.new_zeros(len(samples), lmax, d)
        mask = torch.zeros(len(samples), lmax, dtype=torch.long, device=emb.device)
        for j, s in enumerate(samples):
            emb[j, lmax - lens[j]:] = s.embeds
            mask[j, lmax - lens[j]:] = 1
        calls: list[tuple[int, float]] = []
        t_start = [0.0]

        def pre(_m, _a, kw):
            synchronize(self.device)
            t_start[0] = time.perf_counter()

        def post(_m, _a, kw, _out):
            synchronize(self.device)
            x = kw.get("inputs_embeds")
            n = x.shape[1] if x is not None else kw["input_ids"].shape[1]
            calls.append((n, time.perf_counter() - t_start[0]))

        gen_cfg = self.model.generation_config
        pad = gen_cfg.pad_token_id if gen_cfg.pad_token_id is not None else (eos if isinstance(eos, int) else 0)
        with HookScope() as scope:
            scope.forward_pre(self.model, pre, with_kwargs=True)
            scope.forward(self.model, post, with_kwargs=True)
            if in_llm:
                samples[0].editor.install(scope)
            out = self.model.generate(
                inputs_embeds=emb, attention_mask=mask, max_new_tokens=int(max_new_tokens), do_sample=False,
                num_beams=1, return_dict_in_generate=True, output_logits=output_logits, eos_token_id=eos,
                pad_token_id=pad,
            )
        seqs = []
        eos_set = set(eos if isinstance(eos, (list, tuple)) else ([eos] if eos is not None else []))
        for j in range(len(samples)):
            seq = []
            for t in out.sequences[j].tolist():
                seq.append(t)
                if t in eos_set:
                    break
            seqs.append(seq)
        logits = None
        if output_logits:
            stacked = torch.stack(out.logits, dim=1).float().cpu()  # (B, steps, V)
            logits = [stacked[j, : len(seqs[j])] for j in range(len(samples))]
        cache = getattr(out, "past_key_values", None)
        kv_lens = None
        if cache is not None and hasattr(cache, "get_seq_length"):
            kv_lens = [int(cache.get_seq_length(i)) for i in range(len(self.parts.text_layers))]
        prefill_s = calls[0][1] if calls else float("nan")
        decode_s = sum(t for _, t in calls[1:])
        timing = []
        for s in samples:
            t = {"prefill_s": prefill_s, "decode_s": decode_s, "kv_len_per_layer": kv_lens}
            if s.editor is not None:
                ed = s.editor
                counts = ed.visual_counts[: len(self.parts.text_layers)]
                kept = ed.final_visual_orig()
                s.record.update(
                    visual_tokens_per_layer=counts,
                    equivalent_tokens=float(sum(counts) / len(counts)),
                    n_kept=counts[-1],
                    kept_indices=kept.tolist(),
                    **ed.method.describe(ed.state),
                )
            timing.append(t)
        return seqs, logits, timing

    # ---------------- references used by the tests
    @torch.no_grad()
    def reference_no_cache(self, input_ids, pixel_values, method, budget, steps: int, method_params=None) -> torch.Tensor:
        """Greedy decoding *without* KV cache for ``steps`` tokens (batch 1): every step re-runs the whole
        sequence; an in-LLM method's prefill selection is recorded on the first pass and re-applied to the
        prompt part of later passes (generated tokens are always kept). Returns ``(steps, V)`` logits — what
        cached generation under the same method must reproduce."""
        pruner = self._method(method, method_params)
        n_img = self.tokens_for(pixel_values)
        budget = check_budget(budget, n_img) if pruner is not None else n_img
        row = torch.as_tensor(input_ids[0] if torch.is_tensor(input_ids) and input_ids.ndim == 2 else input_ids)
        in_llm = pruner is not None and pruner.stage == "in_llm"
        qk, needs_text = parse_requires(pruner.requires if (pruner is not None and not in_llm) else ())
        s = self._prepare([row], [0], pixel_values[:1], pruner, budget, in_llm, qk, needs_text, None, None)[0]
        embeds = s.embeds.unsqueeze(0)
        out = []
        with HookScope() as scope:
            if s.editor is not None:
                s.editor.install(scope)
            for _step in range(steps):
                logits = self.model(inputs_embeds=embeds, use_cache=False).logits[0, -1].float()
                out.append(logits.cpu())
                if s.editor is not None:
                    s.editor.mode = "replay"
                nxt = int(logits.argmax())
                e = self.parts.embed(torch.tensor([[nxt]], device=embeds.device)).to(embeds.dtype)
                embeds = torch.cat([embeds, e], dim=1)
        return torch.stack(out)

    # ---------------- text interface
    def build_inputs(self, images, questions: Sequence[str], template: str = "llava_v1", system: str | None = None):
        """Prompt ids (one list per question, image run expanded) and ``pixel_values`` via the processor."""
        if self.processor is None or self.tokenizer is None:
            raise CapabilityError("build_inputs needs a processor with a tokenizer; pass processor=AutoProcessor...")
        sys_msg = VICUNA_SYSTEM if system is None else system
        ip = getattr(self.processor, "image_processor", self.processor)
        pv = ip(images=list(images), return_tensors="pt")["pixel_values"]
        ids = [torch.tensor(tokenize_with_image(self.tokenizer, build_prompt(q, template, sys_msg),
                                                self.parts.image_token_id, self.tokens_for(pv))) for q in questions]
        return ids, pv

    def generate(self, images, questions: Sequence[str], method=None, budget=None, *, template: str = "llava_v1",
                 system: str | None = None, **run_kw) -> RunOutput:
        """Text in, text out: LLaVA-1.5 prompts (Vicuna system message by default), greedy decoding."""
        ids, pv = self.build_inputs(images, questions, template, system)
        return self.run(ids, pv, method, budget, **run_kw)


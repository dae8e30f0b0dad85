"""The in-LLM editing engine: scoped pre-hooks on the decoder layers that let a method read a layer's input during
prefill and drop visual rows from it (strategy D, methods-spec §4.4).

At the layers where a method prunes, the hooks gather the kept rows of the hidden states and substitute matching
``position_ids`` / rotary ``position_embeddings`` / causal mask for that layer and every later one (``LlamaModel``
hands the same full-length kwargs to all layers). Pruning happens once at prefill; the KV cache then holds fewer
entries in later layers; decoding positions continue from the full prompt length (what ``generate`` passes), as
FastV's KV-cache variant and DART intend. The method's side of the interface (plan / start / request / observe /
edit / describe and its plain-data types :class:`~prunelab.methods.in_llm.Observe`,
:class:`~prunelab.methods.in_llm.LayerInput`, :class:`~prunelab.methods.in_llm.LayerEdit`) lives in
:mod:`prunelab.methods.in_llm`: at each planned layer the engine asks the method what it needs, computes exactly
that and hands it over, so calls go from here to the method and never back.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from prunelab.errors import CapabilityError
from prunelab.methods.in_llm import LayerInput, Observe, PrefillInfo
from prunelab.models.hooks import HookScope
from prunelab.models.parts import LlavaParts

__all__ = ["DecoderEditor", "layer_attention_rows", "layer_keys"]


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


# --------------------------------------------------------------------------------------------------------
# In-LLM editing engine
# --------------------------------------------------------------------------------------------------------


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
        self.info = PrefillInfo(budget, self.n_layers, prompt_len, image_start, n_image)
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
                self.state = self.method.start(self.info, hidden)
        if self.override is not None:
            kwargs = dict(kwargs)
            kwargs.update(self.override)
        # a method whose edit at layer i uses scores from an earlier layer observes layer i's *edited* input
        late_observe = self.plan.edit_first and i in self.plan.observe and i in self.plan.edit
        if self.mode == "select" and (i in self.plan.observe or i in self.plan.edit):
            seen = self._seen(i, hidden, kwargs.get("position_embeddings"), self.method.request(self.state, i))
            if i in self.plan.observe and not late_observe:
                self.method.observe(self.state, seen)
            edit = self.method.edit(self.state, seen) if i in self.plan.edit else None
            if edit is not None:
                vis = seen.visual_pos
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
        if self.mode == "select" and late_observe:
            want = self.method.request(self.state, i)
            self.method.observe(self.state, self._seen(i, hidden, kwargs.get("position_embeddings"), want))
        if self.mode == "select" or self.n_tail == 0:
            self.visual_counts.append(int(self.is_visual[: self.n_prompt_cur].sum()))
            self.seq_lengths.append(int(hidden.shape[1]))
        return args, kwargs

    def _seen(self, i: int, hidden: torch.Tensor, pos_emb, want: Observe) -> LayerInput:
        """The :class:`LayerInput` of layer ``i``: current positions, and only the tensors ``want`` names."""
        n = self.n_prompt_cur
        orig = self.cur_orig[:n]
        visual_pos = self.is_visual[:n].nonzero().flatten()
        text_after = ((orig >= self.image_start + self.n_image) & ~self.is_visual[:n]).nonzero().flatten()
        layer = self.parts.decoder.layers[i]
        att = None
        if want.attention_rows is not None:
            if want.attention_rows == "last":
                rows = torch.tensor([n - 1], device=hidden.device)
            else:
                rows = self._pos_of_orig(torch.tensor(want.attention_rows, dtype=torch.long, device=hidden.device))
            att = layer_attention_rows(layer, hidden, pos_emb, rows)
        return LayerInput(
            layer_idx=i,
            orig=orig,
            visual_pos=visual_pos,
            text_after_pos=text_after,
            attention=att,
            keys=layer_keys(layer, hidden, pos_emb) if want.keys else None,
            normed_hidden=self.parts.decoder.norm(hidden)[0] if want.normed_hidden else None,
            visual_hidden=hidden[0, visual_pos] if want.visual_hidden else None,
        )

    def _pos_of_orig(self, orig: torch.Tensor) -> torch.Tensor:
        """Current positions of prompt tokens given by their original index."""
        table = torch.full((self.prompt_len,), -1, dtype=torch.long, device=orig.device)
        o = self.cur_orig[: self.n_prompt_cur]
        ok = o >= 0
        table[o[ok]] = ok.nonzero().flatten()
        pos = table[orig]
        if (pos < 0).any():
            raise CapabilityError(
                "an in-LLM method asked for attention rows of tokens an earlier edit removed; request kept tokens only"
            )
        return pos

    def _apply(self, i, hidden, kwargs):
        keep, extra = self.edits[i]
        keep = keep.to(hidden.device)
        prompt_h = hidden[:, : self.n_prompt_cur]
        tail_h = hidden[:, self.n_prompt_cur :]
        new_h = prompt_h[:, keep]
        new_orig = self.cur_orig[keep]
        new_vis = self.is_visual[keep]
        if extra is not None and extra.shape[0] > 0:
            vis_pos = new_vis.nonzero().flatten()
            at = (
                int(vis_pos[-1]) + 1
                if vis_pos.numel()
                else int(((new_orig >= 0) & (new_orig < self.image_start)).sum())
            )
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

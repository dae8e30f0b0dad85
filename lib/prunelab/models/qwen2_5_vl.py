"""Qwen2.5-VL under any pre-LLM pruning method: the family's layout and its adapter (issue #14).

Layout (transformers 5.23 ``Qwen2_5_VLForConditionalGeneration``): the prompt holds ``<|vision_start|>``, N
``<|image_pad|>`` ids and ``<|vision_end|>``; N = (h/2)(w/2) for an image of ``grid_thw = (1, h, w)`` patches
(:func:`prunelab.models.geometry.qwen2_5_vl_layout`). The ViT (``model.visual``) has no [CLS]; only the blocks in
``fullatt_block_indexes`` attend over the whole image, the others within windows; its hidden states are in window
order (groups of 2x2 patches permuted window by window), the merger output ``pooler_output`` in raster order.

What a :class:`~prunelab.methods.base.VisualContext` holds here:

* ``features`` ("vision" space): each merged token's four patch states of the ViT's last block, concatenated
  (``4 * C``, the merger's own input, raster order). ``projector`` is the merger applied to such rows, so merged
  tokens can still be projected; ``projector(features)`` equals ``pooler_output`` (tested).
* ``cls_attention``: there is no [CLS], so the score is the attention each patch *receives* in ViT block
  ``score_layer`` (default: the last full-attention block), averaged over queries and heads, then reduced over
  each 2x2 merge group (``merge="mean"`` default; ``"sum"`` ranks the same and sums to 1; ``"max"``). No official
  repository of the methods this project implements ships Qwen2.5-VL code (checked: ``Theia-4869/VisPruner``,
  ``Theia-4869/CDPruner``, ``dvlab-research/VisionZip`` have LLaVA paths only); community ports to Qwen2.5-VL
  (lmms-eval VisionZip / FastV wrappers, a TReVS port) score with the last ``fullatt_block_indexes`` block and
  fold patch scores into merge groups, which is the choice made here and exposed as parameters.
  The attention is recomputed from the block's input (``qkv`` projection, the vision rotary embedding, softmax
  within the block's ``cu_seqlens`` segments): it reproduces the block's own attention output (tested).
* no ``cls_feature`` and no q/k with a [CLS] row: methods that read them (VisionZip, PruMerge, PruMerge+) refuse.

Splicing and positions: the kept rows replace the image-pad run of ``inputs_embeds``; the 3-row M-RoPE positions
of the *unpruned* prompt (``model.model.get_rope_index``) are gathered at the kept columns and passed as
``generate(position_ids=...)`` (4 rows: the text row first, as ``generate`` builds them itself). Without them
``inputs_embeds`` alone gets 1-D positions, which is wrong for this family. ``generate`` continues each row with
``last + 1``; the last prompt token is text, so decoding positions equal the unpruned model's (``rope_deltas``)
whatever was pruned. In-LLM methods (FastV, PDrop, SparseVLM, DART) refuse: their decoder editor
(:mod:`prunelab.models.decoder_edit`) substitutes 1-D LLaMA positions.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from prunelab.device import synchronize
from prunelab.errors import CapabilityError, ImageError
from prunelab.methods.base import Pruner, VisualContext, prune
from prunelab.models.generate_common import FamilyAdapter, RunOutput, base_record, until_eos
from prunelab.models.hooks import HookScope
from prunelab.models.parts import expand_image_placeholder, find_image_span, llm_flops, parse_requires
from prunelab.models.qwen_parts import QwenParts, resolve_qwen_parts

__all__ = ["QwenParts", "QwenImages", "QwenVLAdapter", "resolve_qwen_parts", "refusal", "MERGE_REDUCTIONS"]

MERGE_REDUCTIONS = ("mean", "sum", "max")


def refusal(pruner: Pruner) -> str | None:
    """Why ``pruner`` cannot run on Qwen2.5-VL (one line), or ``None`` when it can."""
    if getattr(pruner, "stage", "pre_llm") == "in_llm":
        return (
            f"{pruner.name} prunes inside the LLM and its decoder editor substitutes 1-D LLaMA positions, not "
            "Qwen2.5-VL's 3-D M-RoPE ones; use a pre-LLM method on Qwen2.5-VL"
        )
    needs = [r for r in pruner.requires if r == "cls_feature" or r.startswith(("keys[", "queries["))]
    if needs:
        return (
            f"{pruner.name} reads {', '.join(needs)} with a [CLS] token, and Qwen2.5-VL's ViT has none; "
            "use a method that reads only attention / projected features"
        )
    return None


@dataclass
class QwenImages:
    """What Qwen2.5-VL's image processor returns for B images, kept together: ``pixel_values`` (the flattened
    patches of all images, concatenated) and ``image_grid_thw`` ``(B, 3)``. The study loop passes it where a LLaVA
    model takes a ``(B, 3, H, W)`` tensor; ``len()`` is the number of images, as for that tensor."""

    pixel_values: torch.Tensor
    image_grid_thw: torch.Tensor

    def __post_init__(self):
        self.image_grid_thw = torch.as_tensor(self.image_grid_thw, dtype=torch.long).reshape(-1, 3)
        need = int(self.image_grid_thw.prod(-1).sum())
        if self.pixel_values.ndim != 2 or self.pixel_values.shape[0] != need:
            raise ImageError(
                f"pixel_values has shape {tuple(self.pixel_values.shape)} but image_grid_thw needs {need} patch rows; "
                "pass the processor's pixel_values and image_grid_thw together"
            )

    def __len__(self) -> int:
        return int(self.image_grid_thw.shape[0])

    def split(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``(pixel_values, grid_thw (3,))`` per image."""
        sizes = [int(g.prod()) for g in self.image_grid_thw]
        return list(zip(torch.split(self.pixel_values, sizes), self.image_grid_thw))

    def __getitem__(self, idx) -> QwenImages:
        idx = [idx] if isinstance(idx, int) else list(idx)
        parts = self.split()
        return QwenImages(torch.cat([parts[i][0] for i in idx]), self.image_grid_thw[idx])

    def cpu(self) -> QwenImages:
        return QwenImages(self.pixel_values.detach().cpu(), self.image_grid_thw.cpu())

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.pixel_values, self.image_grid_thw))

    def same_as(self, other: QwenImages) -> bool:
        return (
            self.pixel_values.shape == other.pixel_values.shape
            and torch.equal(self.image_grid_thw.cpu(), other.image_grid_thw.cpu())
            and torch.equal(self.pixel_values.detach().cpu().to(other.pixel_values.dtype), other.pixel_values.cpu())
        )


def as_images(images, image_grid_thw=None) -> QwenImages:
    """``images`` as :class:`QwenImages`: one already, or a ``pixel_values`` tensor with its ``image_grid_thw``."""
    if isinstance(images, QwenImages):
        if image_grid_thw is not None:
            raise ImageError("pass image_grid_thw only with a pixel_values tensor, not with QwenImages")
        return images
    if image_grid_thw is None:
        raise ImageError(
            "Qwen2.5-VL needs image_grid_thw with pixel_values; pass QwenImages(pixel_values, image_grid_thw) or "
            "image_grid_thw=..."
        )
    return QwenImages(torch.as_tensor(images), image_grid_thw)


def _rotary(q, k, cos, sin):
    """The vision rotary embedding as Qwen2.5-VL applies it (``apply_rotary_pos_emb_vision``)."""
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import apply_rotary_pos_emb_vision

    return apply_rotary_pos_emb_vision(q, k, cos, sin)


def block_attention(attn: nn.Module, x: torch.Tensor, cu_seqlens, position_embeddings) -> torch.Tensor:
    """``(H, S, S)`` attention probabilities of a Qwen2.5-VL vision attention module on its input ``x`` (S, C),
    block-diagonal over the ``cu_seqlens`` segments (zero across segments), window order as the block sees it."""
    s = x.shape[0]
    q, k, _v = attn.qkv(x).reshape(s, 3, attn.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
    cos, sin = position_embeddings
    q, k = _rotary(q, k, cos, sin)
    q, k = q.transpose(0, 1).float(), k.transpose(0, 1).float()  # (H, S, d)
    probs = q.new_zeros(q.shape[0], s, s)
    bounds = [int(b) for b in cu_seqlens.tolist()]
    for a, b in zip(bounds[:-1], bounds[1:]):
        logits = (q[:, a:b] @ k[:, a:b].transpose(-1, -2)) * attn.scaling
        probs[:, a:b, a:b] = torch.softmax(logits, dim=-1)
    return probs


class QwenVLAdapter(FamilyAdapter):
    """Generate with a Qwen2.5-VL model under a pre-LLM pruning method and budget (batch 1 per prompt).

    Parameters
    ----------
    model: a ``Qwen2_5_VLForConditionalGeneration``.
    processor / tokenizer: optional, for ``texts`` in the output.
    score_layer: ViT block whose received attention is the token score (default: last ``fullatt_block_indexes``
        block; a negative index counts from the end).
    merge: how a merged token's score comes from its four patches: ``"mean"`` (default), ``"sum"``, ``"max"``.
    """

    def __init__(
        self,
        model: nn.Module,
        processor=None,
        tokenizer=None,
        device: str | torch.device | None = None,
        *,
        score_layer: int | None = None,
        merge: str = "mean",
    ):
        self.parts = resolve_qwen_parts(model)
        self._bind(model, processor, tokenizer, device)
        depth = len(self.parts.blocks)
        if score_layer is None:
            score_layer = self.parts.fullatt[-1] if self.parts.fullatt else depth - 1
        if isinstance(score_layer, bool) or not -depth <= int(score_layer) < depth:
            raise CapabilityError(
                f"score_layer={score_layer!r} is outside the ViT's {depth} blocks; pass 0..{depth - 1}"
            )
        self.score_layer = int(score_layer) % depth
        if merge not in MERGE_REDUCTIONS:
            raise CapabilityError(f"merge={merge!r} is unknown; pass one of {', '.join(MERGE_REDUCTIONS)}")
        self.merge = merge
        self._reuse: tuple[QwenImages, dict] | None = None

    @staticmethod
    def refusal(pruner: Pruner) -> str | None:
        """Why ``pruner`` cannot run on this family (:func:`refusal`); the study loops ask before any work."""
        return refusal(pruner)

    # ---------------- vision side
    def tokens_for(self, grid_thw) -> int:
        """Merged tokens of one image: of patch grid ``(t, h, w)``, or of the first image of a :class:`QwenImages`."""
        if isinstance(grid_thw, QwenImages):
            grid_thw = grid_thw.image_grid_thw[0]
        t, h, w = (int(x) for x in torch.as_tensor(grid_thw).flatten()[:3])
        return t * (h // self.parts.merge) * (w // self.parts.merge)

    @torch.no_grad()
    def encode_images(self, images, qk_layers: Sequence[int] = ()) -> dict:
        """:meth:`encode_image` of every image of ``images`` (:class:`QwenImages`): ``{"images": [...]}``, read by
        :meth:`context` ``(enc, b)``. ``qk_layers`` is accepted for the study loops' sake and ignored: the ViT has
        no [CLS] row, and the methods that read queries / keys refuse (:func:`refusal`)."""
        images = as_images(images)
        if self._reuse is not None and self._reuse[0].same_as(images):
            return self._reuse[1]
        return {"images": [self._encoded(pv, g) for pv, g in images.split()]}

    def encode_timed(self, images, qk_layers: Sequence[int] = ()) -> tuple[dict, float]:
        """:meth:`encode_images` and the seconds per image."""
        images = as_images(images)
        synchronize(self.device)
        t0 = time.perf_counter()
        enc = self.encode_images(images, qk_layers)
        synchronize(self.device)
        return enc, (time.perf_counter() - t0) / len(images)

    @contextlib.contextmanager
    def reuse_encoding(self, images, enc: dict):
        """Within the block, encoding ``images`` (all of them, or one of them inside :meth:`run`) returns ``enc``
        (an earlier :meth:`encode_images` output for them) instead of running the ViT again."""
        prev = self._reuse
        self._reuse = (as_images(images).cpu(), enc)
        try:
            yield
        finally:
            self._reuse = prev

    def _encoded(self, pv: torch.Tensor, grid) -> dict:
        """One image's :meth:`encode_image`, from :meth:`reuse_encoding`'s output when it holds this image."""
        if self._reuse is not None:
            ref, enc = self._reuse
            one = QwenImages(pv, grid)
            for b in range(len(ref)):
                if ref[b].same_as(one):
                    return enc["images"][b]
        return self.encode_image(pv, grid)

    def _window_index(self, grid_thw: torch.Tensor) -> torch.Tensor:
        from transformers.vision_utils import get_vision_window_index

        v = self.parts.visual
        idx, _ = get_vision_window_index(
            grid_thw, spatial_merge_size=v.spatial_merge_size, window_size=v.window_size, patch_size=v.patch_size
        )
        return idx

    @torch.no_grad()
    def encode_image(self, pixel_values: torch.Tensor, grid_thw) -> dict:
        """One image through the ViT: ``features (N, 4C)`` raster, ``projected (N, D)`` (``pooler_output``),
        ``scores_heads (H, N)`` received attention of ``score_layer`` per head (merge-reduced), ``grid``."""
        p = self.parts
        grid = torch.as_tensor(grid_thw, dtype=torch.long).reshape(1, 3).to(self.device)
        if int(grid[0, 0]) != 1:
            raise ImageError(f"grid_thw {grid.tolist()} has t={int(grid[0, 0])}; pass one still image (t=1)")
        store: dict[str, Any] = {}

        def grab_attn(_m, args, kw):
            store["x"] = args[0] if args else kw["hidden_states"]
            store["cu"], store["pe"] = kw["cu_seqlens"], kw["position_embeddings"]

        def grab_merger(_m, args):
            store["pre"] = args[0]

        with HookScope() as scope:
            scope.forward_pre(p.blocks[self.score_layer].attn, grab_attn, with_kwargs=True)
            scope.forward_pre(p.merger, grab_merger)
            dtype = next(p.visual.parameters()).dtype
            out = p.visual(pixel_values.to(self.device, dtype), grid_thw=grid)
        n = self.tokens_for(grid[0])
        unit = p.merge * p.merge
        raster = torch.argsort(self._window_index(grid).to(self.device))  # window-order group -> raster
        probs = block_attention(p.blocks[self.score_layer].attn, store["x"], store["cu"], store["pe"])
        # mean over the queries that can see each key (its window, or the whole image in a full-attention block)
        seg = torch.diff(store["cu"].to(probs.device)).repeat_interleave(torch.diff(store["cu"].to(probs.device)))
        received = (probs.sum(dim=1) / seg.to(probs.dtype)).reshape(probs.shape[0], n, unit)  # (H, N, 4) windowed
        red = {"mean": received.mean(-1), "sum": received.sum(-1), "max": received.amax(-1)}[self.merge]
        pre = store["pre"].reshape(n, unit * store["pre"].shape[-1])
        return {
            "features": pre[raster].float(),
            "projected": out.pooler_output.float(),
            "scores_heads": red[:, raster],
            "grid": (int(grid[0, 1]) // p.merge, int(grid[0, 2]) // p.merge),
        }

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """The merger on rows of ``features`` ``(M, 4C) -> (M, D)``."""
        m = self.parts.merger
        w = next(m.parameters())
        c = x.shape[-1] // (self.parts.merge**2)
        with torch.no_grad():
            return m(x.to(w.device, w.dtype).reshape(-1, c)).float()

    _project = project  # the name prunelab.models.encoders.AdapterEncoder calls on any adapter

    def context(self, enc: dict, b: int = 0, text_embeds=None, erank_stats=None, image_id=None) -> VisualContext:
        """The :class:`VisualContext` of image ``b`` of an :meth:`encode_images` output (or of one
        :meth:`encode_image` output): no ``cls_feature``, no queries / keys."""
        if "images" in enc:
            enc = enc["images"][b]
        heads = enc["scores_heads"].float()
        return VisualContext(
            features=enc["features"],
            cls_attention=heads.mean(0),
            cls_attention_heads=heads,
            projected=enc["projected"],
            projector=self.project,
            grid=enc["grid"],
            text_embeds=text_embeds,
            erank_stats=erank_stats,
            image_id=image_id,
        )

    # ---------------- positions
    def full_positions(self, ids: torch.Tensor, grid_thw) -> torch.Tensor:
        """``(3, L)`` M-RoPE positions of the unpruned prompt ``ids`` (1-D), by the model's ``get_rope_index``."""
        grid = torch.as_tensor(grid_thw, dtype=torch.long).reshape(1, 3).to(ids.device)
        mm = (ids == self.parts.image_token_id).int()[None]
        pos, _ = self.parts.model.model.get_rope_index(ids[None], mm_token_type_ids=mm, image_grid_thw=grid)
        return pos[:, 0]

    # ---------------- main entry
    def _method(self, method, method_params):
        pruner = super()._method(method, method_params)
        why = None if pruner is None else refusal(pruner)
        if why is not None:
            raise CapabilityError(why)
        return pruner

    @torch.no_grad()
    def run(
        self,
        input_ids,
        images,
        method: str | Pruner | None = None,
        budget: int | None = None,
        *,
        image_grid_thw: torch.Tensor | None = None,
        method_params: dict | None = None,
        max_new_tokens: int = 32,
        output_logits: bool = False,
        erank_stats: dict | None = None,
        image_ids: Sequence[str] | None = None,
        eos_token_id: int | None = None,
        batch_size: int = 1,
        progress: bool = False,
    ):
        """Greedy generation per (prompt ids, image) under ``method`` at budget ``T``.

        ``input_ids``: ``(B, L)`` or a list of 1-D tensors, each with one ``<|image_pad|>`` id or the full run of N;
        ``images``: a :class:`QwenImages` of the B images, or the processor's ``pixel_values`` (flattened patches,
        concatenated) with ``image_grid_thw=`` ``(B, 3)``. The signature is :meth:`LlavaAdapter.run`'s, so the study
        loop calls both alike; ``batch_size`` and ``progress`` are accepted and ignored (batch 1). Returns :class:`~prunelab.models.adapter.RunOutput`; records as
        :meth:`~prunelab.models.adapter.LlavaAdapter.run` (``positions`` is ``"mrope_gathered"``) plus
        ``position_ids`` (the ``(3, L')`` positions the prefill used)."""
        pruner, rows = self._method(method, method_params), self._rows(input_ids)
        images = as_images(images, image_grid_thw)
        if len(images) != len(rows):
            raise ImageError(f"{len(rows)} prompts but {len(images)} images; pass one image per prompt")
        _, needs_text = parse_requires(pruner.requires if pruner is not None else ())
        eos = self._eos(eos_token_id)
        seqs, recs, logits = [], [], []
        for b, (row, (pv, grid)) in enumerate(zip(rows, images.split())):
            iid = None if image_ids is None else str(image_ids[b])
            emb, pos, rec = self._prepare(row, pv, grid, pruner, budget, needs_text, erank_stats, iid)
            rec["sample"] = b
            seq, lg, timing = self._generate(emb, pos, max_new_tokens, eos, output_logits)
            rec.update(timing, n_generated=len(seq), batch_size=1)
            rec["flops_prefill"], rec["flops_decode"] = llm_flops(
                self.parts, [emb.shape[0]] * len(self.parts.text_layers), len(seq)
            )
            seqs.append(seq)
            recs.append(rec)
            logits.append(lg)
        return RunOutput(seqs, recs, self._attach_texts(seqs, recs), logits if output_logits else None)

    def _images(self, images) -> QwenImages:
        """:meth:`run_shared_image` (:class:`~prunelab.models.generate_common.FamilyAdapter`'s) takes a
        :class:`QwenImages` of one image and always runs each prompt through :meth:`run` with batch 1: a batched
        decode would need left-padded 3-D M-RoPE positions. The ViT runs once when the caller holds
        :meth:`reuse_encoding`, as the study loop does; the selection is made per prompt (``shared_selection``
        False), which gives the same kept set for an image-only method."""
        return as_images(images)

    def _prepare(self, row, pv, grid, pruner, budget, needs_text, erank_stats, image_id):
        """``(inputs_embeds (L', D), position_ids (3, L'), record)`` of one prompt."""
        p = self.parts
        n_img = self.tokens_for(grid)
        budget = self._method_budget(pruner, budget, grid)
        synchronize(self.device)
        t0 = time.perf_counter()
        enc = self._encoded(pv, grid)
        synchronize(self.device)
        vision_s = time.perf_counter() - t0
        ids = expand_image_placeholder(row, p.image_token_id, n_img).to(self.device)
        start, n = find_image_span(ids, p.image_token_id)
        text_emb = p.embed(ids)
        full_pos = self.full_positions(ids, grid)
        rec: dict[str, Any] = base_record(pruner, budget, n_img, n, int(ids.shape[0]), vision_s, image_id)
        rec.update(score_layer=self.score_layer, score_merge=self.merge)
        if pruner is None:
            tokens, kept, order = enc["projected"], torch.arange(n, device=ids.device), "raster"
            rec["select_s"] = 0.0
        else:
            text_ctx = text_emb[start + n :].float() if needs_text else None
            ctx = self.context(enc, text_embeds=text_ctx, erank_stats=erank_stats, image_id=image_id)
            res = prune(ctx, pruner, budget)
            kept, order = res.indices.to(ids.device), res.order
            if bool((kept < 0).any()) or (res.tokens is not None and res.tokens.shape[0] != kept.numel()):
                raise CapabilityError(
                    f"{pruner.name} returned tokens without one source patch each, which have no M-RoPE position "
                    "on Qwen2.5-VL; use a selection method"
                )
            tokens = res.output_tokens(ctx, "projected")
            rec["select_s"] = res.select_s
            rec.update({k: v for k, v in res.stats.items() if k not in ("method", "budget")})
        cols = torch.cat(
            [
                torch.arange(start, device=ids.device),
                start + kept,
                torch.arange(start + n, ids.shape[0], device=ids.device),
            ]
        )
        emb = torch.cat([text_emb[:start], tokens.to(text_emb.dtype), text_emb[start + n :]], dim=0)
        pos = full_pos[:, cols]
        rec.update(
            n_kept=int(kept.numel()),
            kept_indices=kept.tolist(),
            order=order,
            positions="mrope_gathered",
            prompt_len=int(emb.shape[0]),
            visual_tokens_per_layer=[int(kept.numel())] * len(p.text_layers),
            equivalent_tokens=float(kept.numel()),
            position_ids=pos.tolist(),
        )
        return emb, pos, rec

    def _generate(self, emb, pos, max_new_tokens, eos, output_logits):
        """One ``generate`` call on ``inputs_embeds`` with the gathered 3-D positions (the text row first)."""
        length = emb.shape[0]
        text_row = torch.arange(length, device=pos.device)[None]
        position_ids = torch.cat([text_row, pos], dim=0)[:, None]  # (4, 1, L')
        out, prefill_s, decode_s = self._greedy_generate(
            eos,
            output_logits,
            max_new_tokens,
            inputs_embeds=emb[None],
            attention_mask=torch.ones(1, length, dtype=torch.long, device=emb.device),
            position_ids=position_ids,
        )
        seq = until_eos(out.sequences[0].tolist(), eos)
        logits = torch.stack(out.logits, dim=1)[0, : len(seq)].float().cpu() if output_logits else None
        timing = {"prefill_s": prefill_s, "decode_s": decode_s, "assemble_s": 0.0}
        return seq, logits, timing

"""LLaVA-NeXT ("anyres") behind the LLaVA adapter: per-tile tower passes, the packed image run with its newline
tokens, per-tile pre-LLM pruning and the splice into ``generate`` (issue #14).

Layout (transformers 5.x ``LlavaNextModel.pack_image_features``; ``haotian-liu/LLaVA`` ``llava/model/llava_arch.py``,
``spatial_unpad``): an image becomes a base tile (the whole image at the tower's size) plus a grid of crop tiles at
the best resolution among ``image_grid_pinpoints``. Each tile goes through the tower on its own, with its own [CLS].
The crop tiles' feature maps are joined into one map, un-padded back to the image's aspect ratio, and a learned
``image_newline`` vector ends every row of it. The packed run is: base tile (raster), then the un-padded map row by
row, each row followed by one newline. :class:`AnyresLayout` records, per packed position, the tile and the patch
it comes from (``-1`` for newlines).

Pre-LLM pruning follows VisPruner's official code (``Theia-4869/VisPruner`` ``llava/model/llava_arch.py``,
``encode_images`` and the ``spatial_unpad`` branch of ``prepare_inputs_labels_for_multimodal``): every tile is
pruned with *its own* [CLS] attention and features, then the map is un-padded, and the newline tokens are always
kept. The budget ``T`` counts visual tokens after un-padding, newlines excluded (``N = base + rows * cols``), and
is split across tiles by ``tile_budget``:

* ``"proportional"`` (default): tile ``t`` gets ``T * n_t / N`` tokens, ``n_t`` its patches that survive
  un-padding (largest remainders, ties to the earlier tile), and is pruned among those patches only (its context
  holds just them, as a ``grid`` of their rows and columns). Exactly ``T`` visual tokens are kept, and ``T = N``
  is the unpruned model.
* ``"equal"``: the official rule. VisPruner gives every tile the same count (its README: "32 * 5 = 160 visual
  tokens" for five tiles), chosen over the whole tile, padding included, before un-padding drops the padded rows;
  here ``T`` is shared as ``T // tiles`` (the first ``T % tiles`` tiles one more). Kept tokens that fall in the
  padding are dropped, as in the source, so fewer than ``T`` may reach the LLM (``n_kept`` says how many).

Kept rows go to the LLM in packed order (positions contiguous), whatever order a method returns (PruMerge's
attention order is recorded as ``order_requested``); a merged token goes at the position of the patch it is anchored
to (its index). Tokens with no patch of their own (index ``-1``: VisionZip's [CLS], PruMerge's extra token) follow
the base tile's rows for the base tile, and the whole crop map (after its last newline) for crop tiles, tile by
tile; ``kept_indices`` holds ``-1`` for them. This follows where VisionZip's official LLaVA-NeXT code
(``dvlab-research/VisionZip`` ``visionzip/llava_arch.py``, ``restore_image_features_sorted``) puts the crop tiles'
[CLS] and contextual tokens: after the crop map. Documented deviations from that source: the base tile's [CLS]
follows its patches (the source keeps VisionZip's own order there, [CLS] first); contextual tokens (anchored to a
target patch) sit at that patch, not after the map; crop [CLS] and contextual tokens are interleaved per tile, not
all [CLS] first; and the source neither un-pads the crop map nor adds newlines, while here every method gets HF's
packed layout.

In-LLM methods (FastV, PDrop, SparseVLM, DART) run through the unchanged
:class:`~prunelab.models.decoder_edit.DecoderEditor` with the whole image run (newlines included, as in the HF
sequence) as the visual span; their budget counts packed rows, newlines included, and they may drop newlines.

In the study loop (:func:`prunelab.study.generation.run_generation`, :func:`prunelab.study.runner.run_vision`;
the folder loads through :mod:`prunelab.models.next_loading`): images travel as :class:`NextImages`
(``pixel_values`` with ``image_sizes``), and :meth:`LlavaNextAdapter.run` / ``run_shared_image`` /
``reference_no_cache`` are LLaVA-1.5's, with the per-image steps above. POPE's questions about one image share one
selection and are decoded together (left padding), as on LLaVA-1.5; batched descriptions
(``describe_batch_size > 1``, ``run_selections``) refuse in one line. The *image-level* numbers (``n_tokens``,
``erank_full_*``, ``attention_entropy*``, erank calibration) and ``run_vision``'s contexts are the **base tile**'s
(``context(enc, 0)``: the whole image at the tower's resolution, its own [CLS], a square grid the overlays can
draw); so are a pre-LLM record's ``erank_kept_*`` and ``attention_mass_kept`` (comparable with those numbers;
every tile's are in ``tile_stats``). ``n_kept`` and the budget count every tile's visual tokens.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from prunelab.errors import BudgetError, CapabilityError, ImageError, check_budget
from prunelab.methods.base import VisualContext, prune
from prunelab.models.adapter import LlavaAdapter, _Sample
from prunelab.models.decoder_edit import DecoderEditor
from prunelab.models.geometry import best_resolution
from prunelab.models.prompts import VICUNA_SYSTEM, build_prompt, tokenize_with_image

__all__ = [
    "AnyresLayout",
    "LlavaNextAdapter",
    "NextImages",
    "TILE_BUDGETS",
    "anyres_layout",
    "as_next_images",
    "split_budget",
]

TILE_BUDGETS = ("proportional", "equal")
_BASE_STATS = ("erank_kept_vision", "erank_kept_projected", "attention_mass_kept")


def _check_rule(rule: str) -> str:
    if rule not in TILE_BUDGETS:
        raise BudgetError(f"unknown tile_budget {rule!r}; use one of {', '.join(TILE_BUDGETS)}")
    return rule


@dataclass
class NextImages:
    """What LLaVA-NeXT's image processor returns for B images, kept together: ``pixel_values``
    ``(B, tiles, 3, S, S)`` (tiles padded to the batch's most) and ``image_sizes`` ``(B, 2)`` (height, width). The
    study loop passes it where a LLaVA-1.5 model takes a ``(B, 3, H, W)`` tensor; ``len()`` is the number of
    images, as for that tensor."""

    pixel_values: torch.Tensor
    image_sizes: torch.Tensor

    def __post_init__(self):
        self.image_sizes = torch.as_tensor(self.image_sizes, dtype=torch.long).reshape(-1, 2)
        if not torch.is_tensor(self.pixel_values) or self.pixel_values.ndim != 5:
            shape = tuple(getattr(self.pixel_values, "shape", ()))
            raise ImageError(
                f"pixel_values must be (B, tiles, 3, H, W) as the LLaVA-NeXT processor gives, got {shape}; "
                "pass the processor's pixel_values and image_sizes"
            )
        if self.pixel_values.shape[0] != self.image_sizes.shape[0]:
            raise ImageError(
                f"{self.pixel_values.shape[0]} images but {self.image_sizes.shape[0]} image sizes; pass the "
                "processor's pixel_values and image_sizes together"
            )

    def __len__(self) -> int:
        return int(self.image_sizes.shape[0])

    def size(self, b: int) -> list[int]:
        """``[height, width]`` of image ``b``."""
        return [int(x) for x in self.image_sizes[b]]

    def __getitem__(self, idx) -> NextImages:
        idx = [idx] if isinstance(idx, int) else idx
        return NextImages(self.pixel_values[idx], self.image_sizes[idx])

    def detach(self) -> NextImages:
        return NextImages(self.pixel_values.detach(), self.image_sizes)

    def cpu(self) -> NextImages:
        return NextImages(self.pixel_values.detach().cpu(), self.image_sizes.cpu())

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.pixel_values, self.image_sizes))


def as_next_images(images) -> NextImages:
    """``images`` as :class:`NextImages`: one already, or the processor's output (``pixel_values`` and
    ``image_sizes``)."""
    if isinstance(images, NextImages):
        return images
    if isinstance(images, Mapping) and "pixel_values" in images and "image_sizes" in images:
        return NextImages(images["pixel_values"], images["image_sizes"])
    raise ImageError(
        f"LLaVA-NeXT needs image_sizes with pixel_values, got {type(images).__name__}; pass "
        "NextImages(pixel_values, image_sizes) or the image processor's output"
    )


@dataclass(frozen=True)
class AnyresLayout:
    """The packed image run of one image: ``tile[i]`` / ``patch[i]`` give the tile (0 = base) and the patch
    (raster index inside the tile) of packed position ``i``, both ``-1`` for a newline token."""

    side: int  # patches per tile side
    tile_grid: tuple[int, int]  # crop tiles (rows, cols)
    rows: tuple[int, int]  # [start, stop) of the crop feature map's rows kept by un-padding
    cols: tuple[int, int]
    tile: torch.Tensor
    patch: torch.Tensor

    @property
    def n_tiles(self) -> int:
        return 1 + self.tile_grid[0] * self.tile_grid[1]

    @property
    def n_packed(self) -> int:
        return int(self.tile.numel())

    @property
    def n_visual(self) -> int:
        return int((self.tile >= 0).sum())

    @property
    def newlines(self) -> torch.Tensor:
        return (self.tile < 0).nonzero().flatten()

    def valid(self, t: int) -> tuple[torch.Tensor, tuple[int, int]]:
        """Patches of tile ``t`` that survive un-padding (raster order) and the ``(rows, cols)`` they span."""
        if t == 0:
            return torch.arange(self.side * self.side), (self.side, self.side)
        s = self.side
        tr, tc = divmod(t - 1, self.tile_grid[1])
        r = [i - tr * s for i in range(*self.rows) if tr * s <= i < (tr + 1) * s]
        c = [j - tc * s for j in range(*self.cols) if tc * s <= j < (tc + 1) * s]
        idx = torch.tensor([i * s + j for i in r for j in c], dtype=torch.long)
        return idx, (len(r), len(c))

    def lookup(self) -> dict[tuple[int, int], int]:
        """``(tile, patch) -> packed position`` of every visual position."""
        return {(int(t), int(p)): i for i, (t, p) in enumerate(zip(self.tile, self.patch)) if t >= 0}


def anyres_layout(config, image_hw) -> AnyresLayout:
    """The :class:`AnyresLayout` of an image of ``image_hw`` = (height, width) pixels under a ``LlavaNextConfig``
    (un-padding as transformers' ``unpad_image``: the rounded scaled size, equal padding cut from both sides)."""
    h, w = (int(x) for x in image_hw)
    if h < 1 or w < 1:
        raise ImageError(f"image size {image_hw!r} must be two positive integers (height, width)")
    vc = config.vision_config
    s = vc.image_size // vc.patch_size
    ph, pw = best_resolution((h, w), config.image_grid_pinpoints)
    gh, gw = ph // vc.image_size, pw // vc.image_size
    ch, cw = gh * s, gw * s
    r0, r1, c0, c1 = 0, ch, 0, cw
    if w / h > cw / ch:
        pad = (ch - int(round(h * (cw / w), 7))) // 2
        r0, r1 = pad, ch - pad
    else:
        pad = (cw - int(round(w * (ch / h), 7))) // 2
        c0, c1 = pad, cw - pad
    tiles, patches = [0] * (s * s), list(range(s * s))
    for i in range(r0, r1):
        for j in range(c0, c1):
            tiles.append(1 + (i // s) * gw + j // s)
            patches.append((i % s) * s + j % s)
        tiles.append(-1)
        patches.append(-1)
    return AnyresLayout(
        side=s,
        tile_grid=(gh, gw),
        rows=(r0, r1),
        cols=(c0, c1),
        tile=torch.tensor(tiles, dtype=torch.long),
        patch=torch.tensor(patches, dtype=torch.long),
    )


def split_budget(budget: int, sizes: Sequence[int], rule: str = "proportional") -> list[int]:
    """Per-tile budgets summing to ``budget``: ``"proportional"`` to ``sizes`` (largest remainders, ties to the
    earlier tile; never above a tile's size) or ``"equal"`` (``budget // tiles``, the first ``budget % tiles`` one
    more)."""
    n = len(sizes)
    if rule == "equal":
        return [budget // n + int(i < budget % n) for i in range(n)]
    if rule != "proportional":
        raise BudgetError(f"unknown tile_budget {rule!r}; use one of {', '.join(TILE_BUDGETS)}")
    total = sum(sizes)
    quota = [budget * sz / total for sz in sizes]
    out = [int(q) for q in quota]
    order = sorted(range(n), key=lambda i: (-(quota[i] - out[i]), i))
    for i in order[: budget - sum(out)]:
        out[i] += 1
    return out


def _sub_context(ctx: VisualContext, idx: torch.Tensor, grid: tuple[int, int]) -> VisualContext:
    """``ctx`` restricted to patches ``idx`` (q/k keep the [CLS] row 0)."""
    qk_rows = torch.cat([torch.zeros(1, dtype=torch.long), idx + 1]).to(ctx.features.device)
    idx = idx.to(ctx.features.device)
    heads = ctx.cls_attention_heads
    return VisualContext(
        features=ctx.features[idx],
        cls_attention=ctx.cls_attention[idx],
        cls_attention_heads=None if heads is None else heads[:, idx],
        cls_feature=ctx.cls_feature,
        projector=ctx.projector,
        queries={k: v[:, qk_rows] for k, v in ctx.queries.items()},
        keys={k: v[:, qk_rows] for k, v in ctx.keys.items()},
        grid=grid,
        text_embeds=ctx.text_embeds,
        erank_stats=ctx.erank_stats,
        image_id=ctx.image_id,
    )


class LlavaNextAdapter(LlavaAdapter):
    """Generate with a ``LlavaNextForConditionalGeneration`` under a pruning method and budget (module docstring).

    ``tile_budget`` (keyword): how ``T`` is split across tiles, ``"proportional"`` (default) or ``"equal"``
    (VisPruner's official rule); :meth:`tiles_split` changes it for a block. :meth:`run`, :meth:`run_shared_image`,
    :meth:`reference_no_cache` and :meth:`generate` are :class:`LlavaAdapter`'s, with images a :class:`NextImages`
    (or the processor's output) instead of a ``(B, 3, H, W)`` tensor: ``pixel_values`` ``(B, tiles, 3, S, S)``
    and ``image_sizes`` ``(B, 2)``. Records add ``n_tiles``, ``n_packed`` (image run length), ``n_newlines``,
    ``tile_budget``, ``tile_budgets`` and ``tile_kept`` (visual tokens per tile reaching the LLM);
    ``n_image_tokens`` and ``n_kept`` count visual tokens without newlines (for in-LLM methods ``n_kept`` counts
    the image run's rows left after the last pruning layer, newlines included); ``kept_indices`` are packed
    positions, newlines included, ``-1`` for tokens without a patch; ``visual_tokens_per_layer`` and
    ``equivalent_tokens`` count rows of the image run, newlines included; ``flops_vision`` counts every tile.
    :meth:`run_shared_image` (POPE) shares one selection across an image's prompts and decodes them together,
    as on LLaVA-1.5; :meth:`run_selections` refuses.
    """

    family = "llava_next"

    def _configure(self, tile_budget: str = "proportional") -> None:
        family = getattr(self.model.config, "model_type", None)
        if family != "llava_next":
            raise CapabilityError(
                f"LlavaNextAdapter takes a LlavaNextForConditionalGeneration, got {type(self.model).__name__} "
                f"({family}); use prunelab.models.families.make_adapter(model)"
            )
        self.tile_budget = _check_rule(tile_budget)
        self.image_newline = self.model.model.image_newline

    def layout(self, image_hw) -> AnyresLayout:
        return anyres_layout(self.model.config, image_hw)

    @contextlib.contextmanager
    def tiles_split(self, tile_budget: str):
        """Within the block, budgets are split across tiles by ``tile_budget`` instead of the adapter's own rule."""
        prev, self.tile_budget = self.tile_budget, _check_rule(tile_budget)
        try:
            yield self
        finally:
            self.tile_budget = prev

    # ---------------- the per-image steps of LlavaAdapter.run / run_shared_image / reference_no_cache
    def _images(self, pixel_values) -> NextImages:
        return as_next_images(pixel_values)

    def tokens_for(self, images) -> int:
        """Visual tokens (newlines not counted) of the first image of ``images``: what a budget counts."""
        images = as_next_images(images)
        return self.layout(images.size(0)).n_visual

    def _tile_stack(self, images) -> torch.Tensor:
        """The ``(tiles, 3, S, S)`` tiles of one image (a tensor is taken as such a stack already)."""
        if torch.is_tensor(images) and images.ndim == 4:
            return images
        images = as_next_images(images)
        if len(images) != 1:
            raise ImageError(f"this step takes one image, got {len(images)}; pass images[b] for image b")
        lay = self.layout(images.size(0))
        if images.pixel_values.shape[1] < lay.n_tiles:
            raise ImageError(
                f"the image needs {lay.n_tiles} tiles for size {images.size(0)} but pixel_values has "
                f"{images.pixel_values.shape[1]}; pass the processor's image_sizes with its pixel_values"
            )
        return images.pixel_values[0, : lay.n_tiles]

    def encode_images(self, images, qk_layers: Sequence[int] = ()) -> dict:
        """The tower on the tiles of one image (a :class:`NextImages` of one, or a tile stack): LlavaAdapter's
        output with the tiles as its batch, so ``context(enc, 0)`` is the base tile (the whole image at the tower's
        resolution, its own [CLS]): the context image-level statistics and :func:`prunelab.study.runner.run_vision`
        read on this family."""
        return super().encode_images(self._tile_stack(images), qk_layers)

    def encode_timed(self, images, qk_layers) -> tuple[dict, float]:
        """:meth:`encode_images` and the seconds for the image (all its tiles)."""
        tiles = self._tile_stack(images)
        enc, per_tile = super().encode_timed(tiles, qk_layers)
        return enc, per_tile * tiles.shape[0]

    def reuse_encoding(self, images, enc: dict):
        return super().reuse_encoding(self._tile_stack(images), enc)

    def _method_budget(self, pruner, budget, images) -> int | None:
        """``budget`` checked against every image's count: visual tokens for a pre-LLM method, the packed run
        (newlines included) for an in-LLM one."""
        if pruner is None:
            return budget
        in_llm = self._needs(pruner)[0]
        for b in range(len(images)):
            lay = self.layout(images.size(b))
            budget = self._check(pruner, budget, lay.n_packed if in_llm else lay.n_visual)
        return budget

    def _prepare(self, rows, idx, images, pruner, budget, in_llm, qk_layers, needs_text, erank_stats, image_ids):
        samples = []
        for b in idx:
            lay = self.layout(images.size(b))
            enc, vision_s = self.encode_timed(images[b], qk_layers)
            iid = None if image_ids is None else image_ids[b]
            s = self._next_sample(
                enc, lay, rows[b], b, iid, pruner, budget, in_llm, needs_text, erank_stats, self.tile_budget
            )
            s.record["vision_s"] = vision_s
            samples.append(s)
        return samples

    def _finish_records(self, samples, seqs, timing) -> None:
        super()._finish_records(samples, seqs, timing)
        for s in samples:
            s.record["flops_vision"] = self._vflops * s.record["n_tiles"]

    @staticmethod
    def _check(pruner, budget, n) -> int:
        if budget is None:
            raise BudgetError(f"method {pruner.name!r} needs a budget; pass budget=T with 1 <= T <= {n}")
        return check_budget(budget, n)

    def _packed_rows(self, enc, lay: AnyresLayout, dtype) -> torch.Tensor:
        """Every packed row: projected patch features by (tile, patch), the newline vector at newlines."""
        proj = self._project(enc["features"].reshape(-1, enc["features"].shape[-1]))
        proj = proj.reshape(enc["features"].shape[0], enc["features"].shape[1], -1)
        out = torch.empty(lay.n_packed, proj.shape[-1], dtype=dtype, device=proj.device)
        tile, patch = lay.tile.to(proj.device), lay.patch.to(proj.device)
        vis = tile >= 0
        out[vis] = proj[tile[vis], patch[vis]].to(dtype)
        out[~vis] = self.image_newline.detach().to(proj.device, dtype)
        return out

    def _next_sample(self, enc, lay, row, sample, image_id, pruner, budget, in_llm, needs_text, erank_stats, rule):
        p = self.parts
        ids, start, n, text_emb = self._prompt_embeds(row, lay.n_packed)
        rec: dict[str, Any] = {
            "sample": sample,
            "image_id": image_id,
            "method": "full" if pruner is None else pruner.name,
            "stage": "none" if pruner is None else pruner.stage,
            "budget": lay.n_visual if pruner is None else budget,
            "params": {} if pruner is None else pruner.params(),
            "n_image_tokens": lay.n_visual,
            "n_tiles": lay.n_tiles,
            "n_packed": lay.n_packed,
            "n_newlines": int(lay.newlines.numel()),
            "tile_budget": rule,
            "prompt_len_unpruned": int(ids.shape[0]),
        }
        s = _Sample(ids=ids, image_start=start, n_image=n, record=rec)
        t1 = time.perf_counter()
        if pruner is None or in_llm:
            tokens = self._packed_rows(enc, lay, text_emb.dtype)
            rec["select_s"] = 0.0
            if in_llm:
                s.editor = DecoderEditor(p, pruner, budget, int(ids.shape[0]), start, n)
                rec["order"], rec["positions"] = "packed", pruner.positions
            else:
                per_tile = torch.bincount(lay.tile[lay.tile >= 0], minlength=lay.n_tiles).tolist()
                rec.update(n_kept=lay.n_visual, kept_indices=list(range(n)), order="packed", positions="contiguous")
                rec.update(tile_budgets=per_tile, tile_kept=per_tile)
                rec["visual_tokens_per_layer"] = [n] * len(p.text_layers)
                rec["equivalent_tokens"] = float(n)
        else:
            text_ctx = None
            if needs_text:
                text_ctx = text_emb[start + n :].float()
            tokens, info = self._prune_tiles(enc, lay, pruner, budget, rule, text_ctx, erank_stats, image_id)
            tokens = tokens.to(text_emb.dtype)
            rec.update(info)
            rec["order"], rec["positions"] = "packed", "contiguous"
            rec["visual_tokens_per_layer"] = [tokens.shape[0]] * len(p.text_layers)
            rec["equivalent_tokens"] = float(tokens.shape[0])
        rec["assemble_s"] = time.perf_counter() - t1 - rec.get("select_s", 0.0)
        s.embeds = torch.cat([text_emb[:start], tokens, text_emb[start + n :]], dim=0)
        rec["prompt_len"] = int(s.embeds.shape[0])
        return s

    def _prune_tiles(self, enc, lay, pruner, budget, rule, text_ctx, erank_stats, image_id):
        """Prune every tile with its own context; return the kept packed rows (newlines included) and the
        record's fields."""
        where = lay.lookup()
        valid = [lay.valid(t) for t in range(lay.n_tiles)]
        full = lay.side * lay.side
        sizes = [int(v[0].numel()) for v in valid] if rule == "proportional" else [full] * lay.n_tiles
        budgets = split_budget(budget, sizes, rule)
        pos_rows: list[tuple[int, torch.Tensor]] = []
        extra: tuple[list, list] = ([], [])  # tokens without a patch: after the base tile / after the crop map
        tile_kept, select_s, tile_stats = [], 0.0, []
        for t in range(lay.n_tiles):
            if budgets[t] == 0:
                tile_kept.append(0)
                continue
            ctx = self.context(enc, t, text_embeds=text_ctx, erank_stats=erank_stats, image_id=image_id)
            idx = torch.arange(full)
            if rule == "proportional" and sizes[t] < full:
                idx, grid = valid[t]
                ctx = _sub_context(ctx, idx, grid)
            res = prune(ctx, pruner, budgets[t])
            select_s += res.select_s
            rows = res.output_tokens(ctx, "projected")
            kept = 0
            for j, i in enumerate(res.indices.cpu().tolist()):
                if i < 0:
                    extra[t > 0].append(rows[j])
                    kept += 1
                    continue
                pos = where.get((t, int(idx[i])))
                if pos is not None:  # "equal": a token chosen in the padding is dropped by un-padding
                    pos_rows.append((pos, rows[j]))
                    kept += 1
            tile_kept.append(kept)
            tile_stats.append({k: v for k, v in res.stats.items() if k not in ("method", "budget")})
        nl = self.image_newline.detach().to(self.device).float()
        pos_rows.extend((int(i), nl) for i in lay.newlines)
        pos_rows.sort(key=lambda pr: pr[0])
        n_base = sum(1 for pos, _ in pos_rows if pos < full)
        order = pos_rows[:n_base] + [(-1, r) for r in extra[0]] + pos_rows[n_base:] + [(-1, r) for r in extra[1]]
        tokens = torch.stack([r.float() for _, r in order])
        info = {
            # the base tile's kept statistics: comparable with the image-level numbers, also the base tile's
            **({k: v for k, v in tile_stats[0].items() if k in _BASE_STATS} if budgets[0] > 0 else {}),
            "n_kept": sum(tile_kept),
            "kept_indices": [pos for pos, _ in order],
            "tile_budgets": budgets,
            "tile_kept": tile_kept,
            "tile_stats": tile_stats,
            "order_requested": pruner.order,
            "select_s": select_s,
        }
        return tokens, info

    def run_selections(self, *args, **kwargs):
        raise CapabilityError(
            "run_selections is not available for LLaVA-NeXT (its batched selections assume one square tile); "
            "use describe_batch_size=1, which decodes each description alone"
        )

    # ---------------- text interface
    def build_inputs(self, images, questions: Sequence[str], template: str = "llava_v1", system: str | None = None):
        """Prompt ids (one ``<image>`` id each; :meth:`run` expands it) and the images as :class:`NextImages`, so
        :meth:`LlavaAdapter.generate` runs this family too."""
        if self.processor is None or self.tokenizer is None:
            raise CapabilityError("build_inputs needs a processor with a tokenizer; pass processor=AutoProcessor...")
        sys_msg = VICUNA_SYSTEM if system is None else system
        ip = getattr(self.processor, "image_processor", self.processor)
        out = ip(images=list(images), return_tensors="pt")
        ids = [
            torch.tensor(
                tokenize_with_image(self.tokenizer, build_prompt(q, template, sys_msg), self.parts.image_token_id, 1)
            )
            for q in questions
        ]
        return ids, NextImages(out["pixel_values"], out["image_sizes"])

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
  ``forward_pre_hook(with_kwargs=True)`` on every decoder layer (strategy D). During prefill the hooks hand the
  method what it asks to see of a layer's input (as plain tensors), and at the layers where it prunes they gather the kept rows of the hidden states
  and substitute matching ``position_ids`` / rotary ``position_embeddings`` / causal mask for that layer and every
  later one (``LlamaModel`` hands the same full-length kwargs to all layers). Pruning happens once at prefill;
  the KV cache then holds fewer entries in later layers; decoding positions continue from the full prompt
  length (what ``generate`` passes), as FastV's KV-cache variant and DART intend.
  The engine is :class:`prunelab.models.decoder_edit.DecoderEditor`. All hooks live in a
  :class:`~prunelab.models.hooks.HookScope` and are removed when the call ends, also on error.

[CLS] attention is *recomputed* from the captured ``q_proj``/``k_proj`` outputs of the layer whose output is the
LLaVA feature (``attentions[-2]`` <-> ``hidden_states[-2]``; methods-spec §1, §4.2): softmax of the CLS query
against all keys with the layer's ``head_dim**-0.5`` scaling, per head, CLS column dropped. This equals the eager
attention map (checked in the tests) and works whatever attention kernel the tower uses, in transformers 5.x and
4.57 alike. The text decoder keeps SDPA.

The model family's layout (tower, projector, decoder, image-token id) comes from
:func:`prunelab.models.parts.resolve_parts`.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from prunelab.device import synchronize
from prunelab.errors import BudgetError, CapabilityError, ImageError
from prunelab.methods.base import Pruner, PruneResult, prune
from prunelab.models.decoder_edit import DecoderEditor
from prunelab.models.generate_common import FamilyAdapter, RunOutput, base_record, until_eos
from prunelab.models.hooks import HookScope
from prunelab.models.parts import (
    TILED_FAMILIES,
    LlavaParts,
    expand_image_placeholder,
    find_image_span,
    llm_flops,
    parse_requires,
    resolve_parts,
    vision_flops,
)
from prunelab.models.prompts import VICUNA_SYSTEM, build_prompt, tokenize_with_image
from prunelab.models.tower import TowerReader

__all__ = ["LlavaAdapter", "RunOutput"]


@dataclass
class _Sample:
    ids: torch.Tensor
    image_start: int
    n_image: int
    embeds: torch.Tensor | None = None  # (L', D) after pruning (pre-LLM) or full (in-LLM)
    record: dict = field(default_factory=dict)
    editor: DecoderEditor | None = None
    kept: PruneResult | None = None


class LlavaAdapter(TowerReader, FamilyAdapter):
    """Generate with a LLaVA model under a pruning method and budget, returning text and per-sample records.

    Parameters
    ----------
    model: a ``LlavaForConditionalGeneration`` (llava-hf checkpoint, ToyLLaVA, or a tiny test model).
    processor / tokenizer: optional; needed only for :meth:`generate` (images + questions) and for ``texts``.
    device: ``"auto"`` / ``"cpu"`` / ``"cuda"``; the model is moved there (``DeviceError`` if cuda is absent).
    family_kw: options of a subclass's family (LLaVA-NeXT's ``tile_budget``), handed to :meth:`_configure`.

    Subclasses for other LLaVA layouts (:class:`~prunelab.models.llava_next.LlavaNextAdapter`) keep :meth:`run`,
    :meth:`run_shared_image` and :meth:`reference_no_cache` and override the per-image steps they call:
    :meth:`_images` (what ``pixel_values`` may be), :meth:`tokens_for`, :meth:`_method_budget`, :meth:`_prepare`
    and :meth:`_finish_records`.
    """

    family = "llava"  # a family in parts.TILED_FAMILIES is refused unless it is this class's own

    def __init__(
        self, model: nn.Module, processor=None, tokenizer=None, device: str | torch.device | None = None, **family_kw
    ):
        self.parts = resolve_parts(model)
        if not isinstance(self.parts, LlavaParts):
            raise CapabilityError(
                f"{type(model).__name__} is not a LLaVA model; use prunelab.models.families.make_adapter(model)"
            )
        family = getattr(model.config, "model_type", None)
        if family in TILED_FAMILIES and family != self.family:
            raise CapabilityError(
                f"{type(model).__name__} ({family}) needs {TILED_FAMILIES[family]}; "
                "use prunelab.models.families.make_adapter(model)"
            )
        self._bind(model, processor, tokenizer, device)
        self._vflops = vision_flops(self.parts)
        self._reuse: tuple[torch.Tensor, dict] | None = None
        self._configure(**family_kw)

    def _configure(self, **family_kw) -> None:
        """Family options (none for LLaVA-1.5); a subclass takes its own keywords here."""
        if family_kw:
            raise CapabilityError(
                f"{type(self).__name__} takes no option {', '.join(sorted(family_kw))}; "
                "pass model, processor, tokenizer and device only"
            )

    def _images(self, pixel_values):
        """The images of one call as this family holds them (LLaVA-1.5: the ``(B, 3, H, W)`` tensor itself)."""
        return pixel_values

    # ---------------- main entry
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
        pixel_values = self._images(pixel_values)
        pruner, rows, in_llm, qk_layers, needs_text = self._inputs(input_ids, method, method_params, batch_size)
        budget = self._method_budget(pruner, budget, pixel_values)
        if in_llm and batch_size != 1:
            raise CapabilityError(
                f"{pruner.name} is an in-LLM method and runs with batch_size=1 (its source uses batch element 0); "
                "pass batch_size=1"
            )
        if len(pixel_values) != len(rows):
            raise ImageError(f"{len(rows)} prompts but {len(pixel_values)} images; pass one image per prompt")
        eos = eos_token_id if eos_token_id is not None else self.model.generation_config.eos_token_id
        out_seqs: list[list[int]] = []
        out_recs: list[dict] = []
        out_logits: list[torch.Tensor] = []
        chunks = range(0, len(rows), batch_size)
        if progress:
            from tqdm.auto import tqdm

            chunks = tqdm(chunks, desc=f"{getattr(pruner, 'name', 'full')} T={budget}")
        for c0 in chunks:
            idx = list(range(c0, min(c0 + batch_size, len(rows))))
            samples = self._prepare(
                rows, idx, pixel_values, pruner, budget, in_llm, qk_layers, needs_text, erank_stats, image_ids
            )
            seqs, logits, timing = self._generate(samples, max_new_tokens, eos, output_logits, in_llm)
            self._finish_records(samples, seqs, timing)
            out_seqs.extend(seqs)
            out_recs.extend(s.record for s in samples)
            if output_logits:
                out_logits.extend(logits)
        texts = self._attach_texts(out_seqs, out_recs)
        return RunOutput(out_seqs, out_recs, texts, out_logits if output_logits else None)

    def _inputs(self, input_ids, method, method_params, batch_size):
        """``(pruner, prompt rows, in_llm, tower layers whose q/k it reads, needs the text)`` of one call."""
        if isinstance(batch_size, bool) or int(batch_size) < 1:
            raise BudgetError(f"batch_size must be a positive integer, got {batch_size!r}; pass batch_size=1")
        pruner = self._method(method, method_params)
        return (pruner, self._rows(input_ids), *self._needs(pruner))

    @staticmethod
    def _needs(pruner) -> tuple[bool, set[int], bool]:
        """``(in_llm, tower layers whose q/k it reads, needs the text)`` of a pruner (``None``: the unpruned model)."""
        in_llm = pruner is not None and getattr(pruner, "stage", "pre_llm") == "in_llm"
        qk_layers, needs_text = parse_requires(getattr(pruner, "requires", ()) if (pruner and not in_llm) else ())
        return in_llm, qk_layers, needs_text

    def _finish_records(self, samples, seqs, timing) -> None:
        """Per sample of one ``_generate`` chunk: its timings, generated count, batch size and FLOPs estimates."""
        for s, seq, t in zip(samples, seqs, timing):
            rec = s.record
            rec.update(t)
            rec["n_generated"] = len(seq)
            rec["batch_size"] = len(samples)
            per_layer = (
                s.editor.seq_lengths if s.editor is not None else [s.embeds.shape[0]] * len(self.parts.text_layers)
            )
            rec["flops_prefill"], rec["flops_decode"] = llm_flops(self.parts, per_layer, len(seq))
            rec["flops_vision"] = self._vflops

    def _prompt_embeds(self, row: torch.Tensor, n_image: int):
        """``(ids, image_start, n_image, text embeddings)`` of one prompt, its image placeholder expanded to
        ``n_image`` ids (image ids outside the vocabulary embed as id 0; those rows are replaced anyway)."""
        p = self.parts
        ids = expand_image_placeholder(row, p.image_token_id, n_image).to(self.device)
        start, n = find_image_span(ids, p.image_token_id)
        safe = ids.masked_fill(ids == p.image_token_id, 0) if p.image_token_id >= p.embed.num_embeddings else ids
        return ids, start, n, p.embed(safe)

    def _shared_inputs(self, input_ids, method, method_params, batch_size):
        """:meth:`run_shared_image` shares one selection unless the method reads the prompt (``requires``
        ``"text"``: CDPruner, SparseVLM) or prunes inside the LLM (FastV, PDrop, DART)."""
        pruner, rows, in_llm, _, needs_text = self._inputs(input_ids, method, method_params, batch_size)
        return pruner, rows, not (in_llm or needs_text)

    def _run_shared(self, rows, pixel_values, pruner, budget, kw, batch_size, prefix_cache) -> RunOutput:
        """:meth:`run_shared_image` with one selection: the tower and the method's selection run once, the kept
        tokens are spliced into every prompt, and the prompts are decoded ``batch_size`` at a time with left padding
        (the path :meth:`run` tests against batch 1). Records are :meth:`run`'s, with ``shared_selection`` True and
        ``select_s`` the one selection's time.

        ``prefix_cache=True`` also shares the prefill of what the prompts have in common (the text before the
        image and the kept visual rows, often more): it runs once, its KV cache is copied into every batch, and
        each prompt prefills only its own rest. The batch is then padded between the shared prefix and each rest
        (masked; positions follow the mask, so every row sees the positions it has alone). Records add
        ``prefix_len`` (cached rows) and ``prefix_s`` (the one shared forward); ``prefill_s`` is the rest's.
        Answers equal the uncached path's up to floating-point rounding (the tests compare tokens and logits)."""
        _, qk_layers, _ = self._needs(pruner)
        erank_stats, max_new_tokens = kw["erank_stats"], kw["max_new_tokens"]
        budget = self._method_budget(pruner, budget, pixel_values)
        eos = self._eos(kw["eos_token_id"])
        first = self._prepare(
            rows[:1], [0], pixel_values, pruner, budget, False, qk_layers, False, erank_stats, kw["image_ids"]
        )[0]
        n_visual = first.embeds.shape[0] - (first.ids.shape[0] - first.n_image)  # kept rows (merged ones included)
        visual = first.embeds[first.image_start : first.image_start + n_visual]
        samples = [first]
        for i, r in enumerate(rows[1:], start=1):
            ids, start, n, text_emb = self._prompt_embeds(r, first.n_image)
            rec = dict(first.record, sample=i, prompt_len_unpruned=int(ids.shape[0]))
            s = _Sample(ids=ids, image_start=start, n_image=n, record=rec, kept=first.kept)
            s.embeds = torch.cat([text_emb[:start], visual, text_emb[start + n :]], dim=0)
            rec["prompt_len"] = int(s.embeds.shape[0])
            samples.append(s)
        prefix = self._shared_prefix(samples, n_visual) if prefix_cache else None
        out_seqs: list[list[int]] = []
        for c0 in range(0, len(samples), int(batch_size)):
            chunk = samples[c0 : c0 + int(batch_size)]
            seqs, _, timing = self._generate(chunk, max_new_tokens, eos, False, False, prefix=prefix)
            self._finish_records(chunk, seqs, timing)
            out_seqs.extend(seqs)
        recs = [dict(s.record, shared_selection=True) for s in samples]
        return RunOutput(out_seqs, recs, self._attach_texts(out_seqs, recs))

    @torch.no_grad()
    def run_selections(
        self,
        input_ids,
        pixel_values: torch.Tensor,
        selections: Sequence[tuple],
        *,
        max_new_tokens: int = 32,
        batch_size: int = 8,
        erank_stats=None,
        image_id: str | None = None,
        eos_token_id: int | None = None,
    ) -> RunOutput:
        """Greedy generation of **one** prompt about **one** image under several ``(method, budget)`` selections,
        e.g. every method x budget of an image's description: the tower runs once, each selection prunes its own
        context, and the prompts are decoded ``batch_size`` at a time with left padding, grouped as below. The
        batches are therefore fixed by ``selections`` and ``batch_size`` (same parameters, same batches, same text);
        a row's text equals its batch-1 text up to floating-point rounding of the padded batch.

        ``method`` is what :meth:`run` takes (``None`` for the unpruned model); ``erank_stats`` one dict for all or a
        sequence, one per selection. In-LLM methods (FastV, PDrop, SparseVLM, DART) edit the decoder per sequence and
        run alone through :meth:`run` (``batch_size`` 1 in their records). The others are grouped by prompt length
        (a stable sort, so equal budgets share a batch and the unpruned prompt is not padded against short ones).
        Records are :meth:`run`'s, one per selection, in the order given, with ``selection`` its index."""
        if pixel_values.shape[0] != 1:
            raise ImageError(f"run_selections takes one image, got {pixel_values.shape[0]}; use run() for several")
        if isinstance(batch_size, bool) or int(batch_size) < 1:
            raise BudgetError(f"batch_size must be a positive integer, got {batch_size!r}; pass batch_size=1")
        row = torch.as_tensor(input_ids[0] if torch.is_tensor(input_ids) and input_ids.ndim == 2 else input_ids)
        stats = list(erank_stats) if isinstance(erank_stats, (list, tuple)) else [erank_stats] * len(selections)
        if len(stats) != len(selections):
            raise BudgetError(f"{len(stats)} erank statistics for {len(selections)} selections; pass one per selection")
        eos = eos_token_id if eos_token_id is not None else self.model.generation_config.eos_token_id
        n_img = self.tokens_for(pixel_values)
        plan = []
        for method, budget in selections:
            pruner = self._method(method, None)
            in_llm, qk, text = self._needs(pruner)
            plan.append((pruner, self._method_budget(pruner, budget, pixel_values), in_llm, qk, text))
        qk_all = sorted({q for *_, qk, _ in plan for q in qk})
        enc, vision_s = self.encode_timed(pixel_values, qk_all)
        ids = None if image_id is None else [image_id]
        outputs: dict[int, tuple[list[int], dict]] = {}
        batched = []
        for i, ((pruner, budget, in_llm, _, text), st) in enumerate(zip(plan, stats)):
            if in_llm:
                o = self.run(
                    [row],
                    pixel_values,
                    pruner,
                    budget,
                    max_new_tokens=max_new_tokens,
                    erank_stats=st,
                    image_ids=ids,
                    eos_token_id=eos_token_id,
                )
                outputs[i] = (o.sequences[0], o.records[0])
            else:
                batched.append(
                    (i, self._sample(enc, 0, row, 0, image_id, pruner, budget, False, text, st, n_img, vision_s))
                )
        # Similar lengths together (little padding to prefill); stable, so the batches follow from the selections.
        batched.sort(key=lambda t: t[1].embeds.shape[0])
        for c0 in range(0, len(batched), int(batch_size)):
            chunk = [s for _, s in batched[c0 : c0 + int(batch_size)]]
            seqs, _, timing = self._generate(chunk, max_new_tokens, eos, False, False)
            self._finish_records(chunk, seqs, timing)
            for (i, smp), seq in zip(batched[c0 : c0 + int(batch_size)], seqs):
                outputs[i] = (seq, smp.record)
        seqs = [outputs[i][0] for i in range(len(plan))]
        recs = [dict(outputs[i][1], selection=i) for i in range(len(plan))]
        return RunOutput(seqs, recs, self._attach_texts(seqs, recs))

    def _shared_prefix(self, samples, n_visual: int):
        """``(KV cache, length, seconds)`` of the longest run of rows every sample starts with (text ids, then the
        shared visual rows), leaving each sample at least one row of its own; ``None`` if nothing is shared."""

        def keys(s):
            ids = s.ids.tolist()
            return ids[: s.image_start] + [-1 - j for j in range(n_visual)] + ids[s.image_start + s.n_image :]

        seqs = [keys(s) for s in samples]
        c = min(len(k) for k in seqs) - 1
        for k in seqs[1:]:
            c = next((i for i in range(c) if k[i] != seqs[0][i]), c)
        if c < 1:
            return None
        synchronize(self.device)
        t0 = time.perf_counter()
        out = self.model(inputs_embeds=samples[0].embeds[None, :c], use_cache=True)
        synchronize(self.device)
        return out.past_key_values, c, time.perf_counter() - t0

    def _prepare(self, rows, idx, pixel_values, pruner, budget, in_llm, qk_layers, needs_text, erank_stats, image_ids):
        n_img = self.tokens_for(pixel_values)
        enc, vision_s = self.encode_timed(pixel_values[idx], qk_layers)
        return [
            self._sample(
                enc,
                j,
                rows[b],
                b,
                None if image_ids is None else image_ids[b],
                pruner,
                budget,
                in_llm,
                needs_text,
                erank_stats,
                n_img,
                vision_s,
            )
            for j, b in enumerate(idx)
        ]

    def _sample(self, enc, j, row, sample, image_id, pruner, budget, in_llm, needs_text, erank_stats, n_img, vision_s):
        """One prompt's embeddings (image ``j`` of ``enc`` pruned by ``pruner`` at ``budget``) and its record."""
        p = self.parts
        ids, start, n, text_emb = self._prompt_embeds(row, enc["features"].shape[1])
        rec: dict[str, Any] = {
            "sample": sample,
            **base_record(pruner, budget, n_img, n, int(ids.shape[0]), vision_s, image_id),
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
            ctx = self.context(
                enc,
                j,
                text_embeds=text_ctx,
                erank_stats=erank_stats,
                image_id=None if image_id is None else str(image_id),
            )
            res = prune(ctx, pruner, budget)
            t1 = time.perf_counter()
            tokens = res.output_tokens(ctx, "projected").to(text_emb.dtype)
            rec["select_s"] = res.select_s
            rec["assemble_s"] = time.perf_counter() - t1
            s.kept = res
            rec.update({k: v for k, v in res.stats.items() if k not in ("method", "budget")})
            rec["n_kept"] = res.n_kept
            rec["kept_indices"] = res.indices.tolist()
            rec["order"], rec["positions"] = res.order, res.positions
            rec["visual_tokens_per_layer"] = [res.n_kept] * len(p.text_layers)
            rec["equivalent_tokens"] = float(res.n_kept)
        s.embeds = torch.cat([text_emb[:start], tokens, text_emb[start + n :]], dim=0)
        rec["prompt_len"] = int(s.embeds.shape[0])
        return s

    def _generate(self, samples, max_new_tokens, eos, output_logits, in_llm, prefix=None):
        """One ``generate`` call for a chunk (left padding when lengths differ). With ``prefix`` (from
        :meth:`_shared_prefix`) the rows share its KV cache and are padded between the prefix and their rest."""
        c = 0 if prefix is None else prefix[1]
        lens = [s.embeds.shape[0] - c for s in samples]
        lmax = max(lens)
        d = samples[0].embeds.shape[1]
        emb = samples[0].embeds.new_zeros(len(samples), c + lmax, d)
        mask = torch.zeros(len(samples), c + lmax, dtype=torch.long, device=emb.device)
        for j, s in enumerate(samples):
            emb[j, :c] = s.embeds[:c]
            mask[j, :c] = 1
            emb[j, c + lmax - lens[j] :] = s.embeds[c:]
            mask[j, c + lmax - lens[j] :] = 1
        extra = {}
        if prefix is not None:
            cache = copy.deepcopy(prefix[0])  # generate appends to it
            cache.batch_repeat_interleave(len(samples))
            extra["past_key_values"] = cache
        out, prefill_s, decode_s = self._greedy_generate(
            eos,
            output_logits,
            max_new_tokens,
            install=samples[0].editor.install if in_llm else None,
            inputs_embeds=emb,
            attention_mask=mask,
            **extra,
        )
        seqs = [until_eos(out.sequences[j].tolist(), eos) for j in range(len(samples))]
        logits = None
        if output_logits:
            stacked = torch.stack(out.logits, dim=1).float().cpu()  # (B, steps, V)
            logits = [stacked[j, : len(seqs[j])] for j in range(len(samples))]
        cache = getattr(out, "past_key_values", None)
        kv_lens = None
        if cache is not None and hasattr(cache, "get_seq_length"):
            kv_lens = [int(cache.get_seq_length(i)) for i in range(len(self.parts.text_layers))]
        timing = []
        for s in samples:
            t = {"prefill_s": prefill_s, "decode_s": decode_s, "kv_len_per_layer": kv_lens}
            if prefix is not None:
                t.update(prefix_len=c, prefix_s=prefix[2])
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
    def reference_no_cache(
        self, input_ids, pixel_values, method, budget, steps: int, method_params=None
    ) -> torch.Tensor:
        """Greedy decoding *without* KV cache for ``steps`` tokens (batch 1): every step re-runs the whole
        sequence; an in-LLM method's prefill selection is recorded on the first pass and re-applied to the
        prompt part of later passes (generated tokens are always kept). Returns ``(steps, V)`` logits — what
        cached generation under the same method must reproduce."""
        pixel_values = self._images(pixel_values)
        pruner = self._method(method, method_params)
        budget = self._method_budget(pruner, budget, pixel_values) if pruner is not None else None
        row = torch.as_tensor(input_ids[0] if torch.is_tensor(input_ids) and input_ids.ndim == 2 else input_ids)
        in_llm, qk, needs_text = self._needs(pruner)
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
        ids = [
            torch.tensor(
                tokenize_with_image(
                    self.tokenizer, build_prompt(q, template, sys_msg), self.parts.image_token_id, self.tokens_for(pv)
                )
            )
            for q in questions
        ]
        return ids, pv

    def generate(
        self,
        images,
        questions: Sequence[str],
        method=None,
        budget=None,
        *,
        template: str = "llava_v1",
        system: str | None = None,
        **run_kw,
    ) -> RunOutput:
        """Text in, text out: LLaVA-1.5 prompts (Vicuna system message by default), greedy decoding."""
        ids, pv = self.build_inputs(images, questions, template, system)
        return self.run(ids, pv, method, budget, **run_kw)

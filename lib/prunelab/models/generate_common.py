"""What the family adapters share around ``generate``: the output type, the method / prompt / budget checks, the
per-prompt records' common fields, the timed greedy ``generate`` call and :meth:`FamilyAdapter.run_shared_image`.

:class:`~prunelab.models.adapter.LlavaAdapter` (and LLaVA-NeXT through it) and
:class:`~prunelab.models.qwen2_5_vl.QwenVLAdapter` build their inputs differently (spliced LLaVA rows vs gathered
M-RoPE positions) but take, check and return the same things; this module holds that once, so a fix reaches every
family. Hooks live in a :class:`~prunelab.models.hooks.HookScope` and are removed when the call ends.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from prunelab.device import resolve_device, synchronize
from prunelab.errors import BudgetError, ImageError, check_budget
from prunelab.methods.base import Pruner, get_pruner
from prunelab.models.hooks import HookScope

__all__ = ["RunOutput", "FamilyAdapter", "base_record", "until_eos"]


@dataclass
class RunOutput:
    """``sequences``: generated ids per sample (prompt excluded, stopped at EOS); ``texts`` when a tokenizer is
    known; ``records``: one dict per sample (see :meth:`LlavaAdapter.run`); ``logits``: ``(steps, V)`` per sample
    when requested."""

    sequences: list[list[int]]
    records: list[dict]
    texts: list[str] | None = None
    logits: list[torch.Tensor] | None = None


def base_record(pruner, budget, n_img: int, n: int, prompt_len: int, vision_s: float, image_id) -> dict:
    """The fields every family's record of one prompt starts with (the unpruned model: method ``"full"``, budget
    the image's ``n_img`` tokens)."""
    return {
        "image_id": image_id,
        "method": "full" if pruner is None else pruner.name,
        "stage": "none" if pruner is None else pruner.stage,
        "budget": n_img if pruner is None else budget,
        "params": {} if pruner is None else pruner.params(),
        "n_image_tokens": n,
        "prompt_len_unpruned": prompt_len,
        "vision_s": vision_s,
    }


def until_eos(ids: list[int], eos) -> list[int]:
    """``ids`` up to and including the first EOS (``eos``: an id, a list of ids or ``None``)."""
    eos_set = set(eos if isinstance(eos, (list, tuple)) else ([eos] if eos is not None else []))
    seq: list[int] = []
    for t in ids:
        seq.append(t)
        if t in eos_set:
            break
    return seq


class FamilyAdapter:
    """Base of the family adapters: the model binding, the checks of one call and :meth:`run_shared_image`, whose
    selection-sharing path a family supplies as :meth:`_run_shared`."""

    def _bind(self, model, processor, tokenizer, device) -> None:
        """Hold ``model`` in eval mode on ``device`` (``None``: where its parameters are; ``DeviceError`` if cuda is
        asked for and absent), with the processor's tokenizer unless ``tokenizer`` is given."""
        self.model = model
        self.processor = processor
        self.tokenizer = tokenizer if tokenizer is not None else getattr(processor, "tokenizer", None)
        if device is not None:
            self.device = resolve_device(device)
            self.model.to(self.device)
        else:
            self.device = next(model.parameters()).device
        self.model.eval()

    def _method(self, method, method_params):
        """The pruner ``method`` names (``None`` / ``"none"`` / ``"full"`` / ``"vanilla"``: the unpruned model)."""
        if method is None or (isinstance(method, str) and method.lower() in ("none", "full", "vanilla")):
            return None
        if isinstance(method, Pruner):
            return method
        return get_pruner(method, **(method_params or {}))

    @staticmethod
    def _rows(input_ids) -> list[torch.Tensor]:
        """The prompts of a ``(B, L)`` tensor or a list of 1-D id sequences, as 1-D long tensors."""
        return [
            torch.as_tensor(r, dtype=torch.long) for r in (list(input_ids) if torch.is_tensor(input_ids) else input_ids)
        ]

    def _eos(self, eos_token_id):
        return eos_token_id if eos_token_id is not None else self.model.generation_config.eos_token_id

    def _method_budget(self, pruner, budget, images) -> int | None:
        """``budget`` checked against the image's token count (``None`` for the unpruned model)."""
        if pruner is None:
            return budget
        n_img = self.tokens_for(images)
        if budget is None:
            raise BudgetError(f"method {pruner.name!r} needs a budget; pass budget=T with 1 <= T <= {n_img}")
        return check_budget(budget, n_img)

    def _attach_texts(self, seqs, recs) -> list[str] | None:
        """Decoded texts (also stored as ``record["text"]``), or ``None`` without a tokenizer."""
        if self.tokenizer is None:
            return None
        texts = [self.tokenizer.decode(q, skip_special_tokens=True).strip() for q in seqs]
        for r, t in zip(recs, texts):
            r["text"] = t
        return texts

    def _greedy_generate(self, eos, output_logits: bool, max_new_tokens: int, install=None, **inputs):
        """``(generate output, prefill_s, decode_s)`` of one greedy ``self.model.generate(**inputs)``: each forward is
        timed by scoped hooks (synchronised on ``self.device``), the first being the prefill. ``install(scope)`` adds
        the caller's own hooks to the same scope (an in-LLM method's decoder editor); the pad id is the model's, else
        ``eos``."""
        calls: list[float] = []
        t_start = [0.0]

        def pre(_m, _a, _kw):
            synchronize(self.device)
            t_start[0] = time.perf_counter()

        def post(_m, _a, _kw, _out):
            synchronize(self.device)
            calls.append(time.perf_counter() - t_start[0])

        gen_cfg = self.model.generation_config
        pad = gen_cfg.pad_token_id if gen_cfg.pad_token_id is not None else (eos if isinstance(eos, int) else 0)
        with HookScope() as scope:
            scope.forward_pre(self.model, pre, with_kwargs=True)
            scope.forward(self.model, post, with_kwargs=True)
            if install is not None:
                install(scope)
            out = self.model.generate(
                max_new_tokens=int(max_new_tokens),
                do_sample=False,
                num_beams=1,
                return_dict_in_generate=True,
                output_logits=output_logits,
                eos_token_id=eos,
                pad_token_id=pad,
                **inputs,
            )
        return out, (calls[0] if calls else float("nan")), sum(calls[1:])

    # ---------------- hooks of run_shared_image
    def _images(self, images):
        """``images`` as the family's ``run`` takes them (``len()``: the number of images)."""
        return images

    def _shared_inputs(self, input_ids, method, method_params, batch_size):
        """``(pruner, prompt rows, whether the prompts can share one selection)``; here never."""
        return self._method(method, method_params), self._rows(input_ids), False

    def _run_shared(self, rows, images, pruner, budget, kw: dict, batch_size, prefix_cache) -> RunOutput:
        raise NotImplementedError(f"{type(self).__name__} cannot share a selection between prompts")

    @torch.no_grad()
    def run_shared_image(
        self,
        input_ids,
        images,
        method: str | Pruner | None = None,
        budget: int | None = None,
        *,
        method_params: dict | None = None,
        max_new_tokens: int = 32,
        batch_size: int = 32,
        erank_stats: dict | None = None,
        image_id: str | None = None,
        eos_token_id: int | None = None,
        prefix_cache: bool = False,
    ) -> RunOutput:
        """Greedy generation for several prompts about **one** image (one image of the family's ``run`` input, e.g.
        ``pixel_values`` ``(1, 3, H, W)``), e.g. the POPE questions of an image. Records are ``run``'s, one per
        prompt, with ``sample`` its index and ``shared_selection``.

        Where the family and the method allow it (see the family's ``_run_shared``; LLaVA-1.5 for a method whose
        selection depends on the image alone) the tower and the selection run once and the prompts are decoded
        ``batch_size`` at a time, ``prefix_cache=True`` also sharing the prefill of what they have in common
        (``shared_selection`` True). Otherwise each prompt runs through ``run`` with batch 1 (``shared_selection``
        False; ``batch_size`` and ``prefix_cache`` then play no part): a method whose selection depends on the
        prompt (``requires`` ``"text"``: CDPruner, SparseVLM), one that prunes inside the LLM (FastV, PDrop, DART),
        or any method on Qwen2.5-VL (a batched decode would need left-padded 3-D M-RoPE positions)."""
        images = self._images(images)
        if len(images) != 1:
            raise ImageError(f"run_shared_image takes one image, got {len(images)}; use run() for several")
        pruner, rows, share = self._shared_inputs(input_ids, method, method_params, batch_size)
        kw = dict(
            method_params=None,
            max_new_tokens=max_new_tokens,
            erank_stats=erank_stats,
            image_ids=None if image_id is None else [image_id],
            eos_token_id=eos_token_id,
        )
        if share and rows:
            return self._run_shared(rows, images, pruner, budget, kw, batch_size, prefix_cache)
        outs = [self.run([r], images, pruner, budget, **kw) for r in rows]
        recs = [dict(o.records[0], sample=i, shared_selection=False) for i, o in enumerate(outs)]
        texts = None if self.tokenizer is None else [o.texts[0] for o in outs]
        return RunOutput([o.sequences[0] for o in outs], recs, texts)

"""The lmms-eval model ``prunelab``: any model prunelab loads, generating under a pruning method and budget.

``lmms-eval --model prunelab --model_args pretrained=toyllava,method=agilepruner,budget=64,erank_stats=stats.json``

* ``pretrained``: what :func:`prunelab.models.loader.load_generation_model` accepts (an embedded ToyLLaVA name, a
  llava-hf or Qwen2.5-VL folder, an HF id already in the local cache); nothing is downloaded.
* ``method`` (a registered pruning method, or ``none`` for the unpruned model), ``budget`` (kept visual tokens T),
  ``method_params`` (a JSON object, quoted: ``method_params='{"lam": 0.5}'``).
* ``erank_stats``: the JSON file of ``python -m prunelab.lmms calibrate`` (:mod:`prunelab.lmms.stats`), required for
  methods that read dataset erank statistics (AgilePruner without ``erank_avg``): computed once over every image
  before launch, so every rank prunes with the same statistics.
* ``device`` (``auto`` / ``cpu`` / ``cuda``; under ``torchrun`` / ``accelerate launch`` on GPUs each rank takes
  ``cuda:LOCAL_RANK``), ``dtype`` (``float32`` / ``float16`` / ``bfloat16``).

Generation is the adapter's greedy decoding (:meth:`prunelab.models.adapter.LlavaAdapter.run`), one request at a
time, so a document's answer does not depend on which rank or batch it falls in. ``until`` strings cut the text
after decoding. ``loglikelihood`` (multiple-choice tasks) is not implemented: the adapter scores no continuations.
"""

from __future__ import annotations

import json
import os

import torch
from lmms_eval.api.model import lmms

from prunelab.errors import CapabilityError, UnknownNameError
from prunelab.lmms.stats import load_stats, make_pruner
from prunelab.models.loader import load_generation_model

__all__ = ["PrunelabLMM"]

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _world() -> tuple[int, int, int]:
    """``(rank, world size, local rank)`` from the torchrun / accelerate environment."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


class PrunelabLMM(lmms):
    is_simple = True

    def __init__(
        self,
        pretrained: str = "toyllava",
        method: str = "none",
        budget: int | None = None,
        method_params: str | dict | None = None,
        erank_stats: str | None = None,
        device: str | None = "auto",
        dtype: str | None = None,
        batch_size: int | str = 1,
        max_new_tokens: int = 32,
        **kwargs,
    ) -> None:
        super().__init__()
        kwargs.pop("max_batch_size", None)  # lmms-eval passes it to every model; nothing here batches
        if kwargs:
            raise UnknownNameError(
                f"unknown prunelab model args {sorted(kwargs)}; known: pretrained, method, budget, method_params, "
                "erank_stats, device, dtype, max_new_tokens"
            )
        if str(batch_size) not in ("1", "None"):
            raise CapabilityError(f"prunelab generates one request at a time; pass --batch_size 1, not {batch_size}")
        if dtype is not None and str(dtype) not in _DTYPES:
            raise UnknownNameError(f"unknown dtype {dtype!r}; use one of {', '.join(_DTYPES)}")
        params = json.loads(method_params) if isinstance(method_params, str) else (method_params or {})
        self._rank, self._world_size, local = _world()
        dev = "auto" if device in (None, "") else str(device)
        if self._world_size > 1 and torch.cuda.is_available() and dev in ("auto", "cuda"):
            dev = f"cuda:{local}"
        self.gm = load_generation_model(str(pretrained), device=dev, dtype=_DTYPES.get(str(dtype)))
        self.pruner = make_pruner(method, params)
        self.budget = None if self.pruner is None or budget in (None, "") else int(budget)
        if self.pruner is not None and self.budget is None:
            raise CapabilityError(f"method {method!r} needs a budget; add budget=<kept visual tokens> to model_args")
        self.erank = None
        if self.pruner is not None and self.pruner.erank_stats_spec() is not None:
            if not erank_stats:
                raise CapabilityError(
                    f"{self.pruner.name} reads dataset erank statistics; run python -m prunelab.lmms calibrate "
                    f"--pretrained {pretrained} --method {method} DATA_DIR -o stats.json and add erank_stats=stats.json"
                )
            self.erank = load_stats(erank_stats, self.pruner, self.gm.fingerprint)
        self.max_new_tokens = int(max_new_tokens)
        self._device = self.gm.adapter.device

    @property
    def device(self):
        return self._device

    def _generate(self, context: str, visuals: list, gen_kwargs: dict) -> str:
        gen_kwargs = dict(gen_kwargs or {})
        if gen_kwargs.get("do_sample") or float(gen_kwargs.get("temperature", 0) or 0) > 0:
            raise CapabilityError("prunelab decodes greedily; set temperature: 0 and do_sample: false in the task")
        if len(visuals) != 1:
            raise CapabilityError(f"prunelab runs one image per request, got {len(visuals)}; use a single-image task")
        until = gen_kwargs.get("until") or []
        until = [until] if isinstance(until, str) else list(until)
        ids = torch.tensor(self.gm.prompt_ids(context))
        out = self.gm.adapter.run(
            [ids],
            self.gm.pixels(visuals[0]),
            self.pruner,
            self.budget,
            max_new_tokens=int(gen_kwargs.get("max_new_tokens", self.max_new_tokens)),
            erank_stats=self.erank,
            eos_token_id=getattr(self.gm.tokenizer, "eos_token_id", None),
        )
        text = out.texts[0]
        for stop in until:
            if stop and stop in text:
                text = text.split(stop, 1)[0]
        return text

    def generate_until(self, requests) -> list[str]:
        res = []
        for req in requests:
            context, gen_kwargs, doc_to_visual, doc_id, task, split = req.args
            visuals = doc_to_visual(self.task_dict[task][split][doc_id])
            res.append(self._generate(context, [v for v in visuals if v is not None], gen_kwargs))
        return res

    def loglikelihood(self, requests):
        raise NotImplementedError(
            "prunelab's model generates text only (greedy, under a pruning method); it scores no continuations, "
            "so multiple-choice (loglikelihood) tasks cannot run: use a generate_until task"
        )

    def generate_until_multi_round(self, requests):
        raise NotImplementedError("prunelab's model answers single-round requests only; use a single-round task")

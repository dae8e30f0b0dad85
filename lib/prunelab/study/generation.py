"""The generation loop of the study: (model, image set, methods, budgets) -> captions / answers -> CHAIR / POPE.

``run_generation(model, image_set, methods, budgets, task="describe"|"pope")`` is the language-side twin of
:func:`prunelab.study.runner.run_vision`. Every method runs *inside* generation of a ``LlavaForConditionalGeneration``
through :class:`prunelab.models.adapter.LlavaAdapter` (pre-LLM methods: two-stage prefill; in-LLM methods: scoped
decoder hooks); decoding is greedy, descriptions with batch 1 as in LLaVA-1.5's evaluation (methods-spec §3.3,
§4.6); the POPE questions of one image share one selection and are decoded together with left padding (see Speed).
It returns a tidy pandas DataFrame:

* ``task="describe"``: **one row per image x method x budget**: the caption for "Please describe this image in
  detail." and its CHAIR record (Rohrbach et al. 2018; OPERA's Recall/Len; :func:`prunelab.eval.chair.evaluate_chair`
  against the image set's ground truth): ``chair_s`` (0/1), ``chair_i`` (per caption), ``n_mentions``,
  ``n_hallucinated``, ``n_gt``, ``n_gt_covered``, ``recall``, ``length`` (CHAIR's Len: merged tokens, punctuation
  included), ``n_words``, ``mentioned``, ``hallucinated_words``, ``gt_objects``. :func:`chair_table` aggregates
  them per method x budget into the paper's CHAIR_s / CHAIR_i / Recall / Len as ratios of sums, by building the
  same :class:`prunelab.eval.chair.ChairResult` the evaluator builds.
* ``task="pope"``: **one row per image x question x method x budget** (POPE, Li et al. 2023): the toy world's own
  balanced questions per setting (``prunelab.toyworld.text.pope_questions``: random / popular / adversarial
  negatives) or, for COCO and the photos, :func:`prunelab.eval.pope.build_pope` on the selected images; the answer is
  read with :func:`prunelab.eval.pope.parse_yes_no`. :func:`pope_table` gives accuracy / precision / recall / F1 /
  yes-ratio per setting with :func:`prunelab.eval.pope.pope_metrics`.

Every row also carries what the adapter records for that generation (``n_kept``, ``kept_indices``,
``erank_kept_vision`` / ``erank_kept_projected`` of the kept tokens, ``attention_mass_kept``, ``prompt_len``,
timings, FLOPs estimates, the method's own statistics as JSON) and image-level numbers from the model's own tower
(``erank_full_*``, ``attention_entropy*``; :func:`prunelab.study.runner.image_stats`).

Models and prompts
------------------
* ``"toyllava"`` (the embedded model, :func:`prunelab.models.toyllava.load_toyllava`) and any folder whose config
  carries ToyLLaVA's vocabulary digest: ToyLLaVA's own chat format ``USER: <image>\\n{prompt} ASSISTANT:``
  (:data:`prunelab.models.toyllava.CHAT_TEMPLATE`), no system prompt — it was trained without one.
* an HF id (found in the local cache; nothing is downloaded) or a folder of a llava-hf checkpoint: the LLaVA-1.5
  protocol, ``vicuna_v1`` template with the Vicuna system message (:mod:`prunelab.models.prompts`); images padded
  to square when the processor can (``do_pad``, methods-spec §4.6); for POPE the question is followed by LLaVA's
  "Answer the question using a single word or phrase." (``haotian-liu/LLaVA``, ``llava_pope_test.jsonl``).
* a :class:`GenerationModel` (what :func:`load_generation_model` returns; load once, run many) or a bare
  :class:`~prunelab.models.adapter.LlavaAdapter` (tests, tiny models).

``methods`` are what :func:`prunelab.study.runner.resolve_methods` accepts, plus ``None`` / ``"Vanilla"`` / ``"full"``
for the unpruned model (all ``N`` tokens through the same path; one row per image with ``budget = N``).

Erank statistics. Methods whose :meth:`~prunelab.methods.base.Pruner.erank_stats_spec` names a spec (AgilePruner
without ``erank_avg``, the erank-guided hybrids without ``e_min``/``e_max``) need the dataset's input-erank
statistics. Unless ``erank_stats`` is given they are calibrated on the image set with the model's own tower: per
image the input erank of the tower's layer ``-2`` patch features with the consuming method's erank options
(:func:`prunelab.methods.adaptive.input_erank`, the function :func:`~prunelab.methods.adaptive.calibrate_erank`
applies), then mean/min/max/std over the images (:func:`prunelab.study.runner.erank_stats_from`, equal to
``calibrate_erank`` on the same images; a test checks it).

Caching and resuming. Every image x method x budget entry is one small file written atomically under
``cache_dir`` (default ``<prunelab cache>/generation``), in a folder named for the cache format and the hash of
the code that produces the text (``v2-<code hash>/``; ``python -m prunelab.study.cache prune`` drops the others). An
entry is checked on read (:mod:`prunelab.study.tablecache`: row count, columns and SHA-256 in its header; one that is
not intact is generated again) and stores a column with one value on every row once (the image's numbers, a
shared POPE selection's ``kept_indices``). It is named by a SHA-256 of everything that determines its text:
model fingerprint (weights, config, tokenizer, prompt format, image processor), device type and dtype, the
image (set and id), the method's name and parameters, the budget, the prompt token ids (every question for POPE),
the decoding settings (greedy, batch 1 for descriptions or ``pope_batch_size``, ``max_new_tokens``), the erank statistics for methods that consume them,
and the source of the code that produces the text. A second call generates nothing; an interrupted run resumes at
the first missing entry. CHAIR and POPE scores are recomputed from the cached text on every call (fast,
deterministic), so a change in the scorers never needs a new generation. Image-level statistics are cached per
image (a checked JSON entry).

Speed. The tower runs once per image (not once per method x budget): while an image's entries are generated, the
adapter's ``encode_images`` is memoised for that image's pixels, which returns the very tensors a fresh forward
would (tests compare); the output of the statistics pass is kept for generation up to
:data:`KEEP_ENCODINGS_BYTES` (1 GiB), so on the book's runs the tower runs once per image and call. ``vision_s`` is
that one tower pass. For POPE, an image-only pre-LLM method selects once
per image x method x budget and all of that image's questions are decoded in one left-padded batch
(:meth:`~prunelab.models.adapter.LlavaAdapter.run_shared_image`, ``pope_batch_size`` at a time): the questions
differ only after the image, so the kept tokens are the same for all of them. Left padding is masked, so the
answers are batch-1's up to floating-point rounding (tests compare the answers and the first-step logits);
methods that read the prompt (CDPruner) or prune inside the LLM (FastV, PDrop, SparseVLM, DART) still run each
question alone.
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from prunelab.device import resolve_device, synchronize
from prunelab.errors import AssetError, CapabilityError, PrunelabError, UnknownNameError, check_budget
from prunelab.eval import groundtruth as G, pope as P, stats as S
from prunelab.eval.chair import CaptionScore, ChairResult, combined_text_path, evaluate_chair
from prunelab.eval.mentions import CaptionParser, Mention
from prunelab.eval.pope import parse_yes_no, pope_metrics
from prunelab.methods.adaptive import input_erank
from prunelab.methods.base import ErankStatsSpec
from prunelab.models.adapter import LlavaAdapter
from prunelab.models.parts import parse_requires
from prunelab.models.prompts import VICUNA_SYSTEM, build_prompt, tokenize_with_image
from prunelab.models.toyllava import CHAT_TEMPLATE, load_toyllava, prompt_ids
from prunelab.paths import cache_dir as _cache_dir
from prunelab.study.params import (
    EMBEDDED_MODELS,
    check_budgets,
    check_image_set,
    check_model,
    check_n_images,
    check_seed,
)
from prunelab.study.plots import method_order
from prunelab.study.runner import _items_of, _jsonable, erank_stats_from, image_stats, resolve_methods
from prunelab.study.tablecache import (
    code_hash,
    key as _key,
    read_entry,
    read_table,
    version_dir,
    write_entry,
    write_table,
)
from prunelab.toyworld import text as tt

CACHE_FORMAT = 2  # bump when the meaning of a cached column or the entry layout changes (2: checked entries)
TASKS = ("describe", "pope")
VANILLA = "Vanilla"
_VANILLA_NAMES = ("vanilla", "full", "none", "unpruned")
PROMPT_FORMATS = ("toyllava", "llava_v1", "hf_chat")
#: LLaVA-1.5's POPE instruction suffix (``haotian-liu/LLaVA`` ``playground/data/eval/pope/llava_pope_test.jsonl``).
LLAVA_SHORT_ANSWER = "Answer the question using a single word or phrase."
DEFAULT_MAX_NEW_TOKENS = {"describe": 512, "pope": 8}  # OPERA/PAI CHAIR setting; POPE needs one word
# Code whose change must invalidate cached generations (not the scorers: they run on every call).
_CODE_FILES = ("study/generation.py", "eval/metrics.py", "methods/*.py", "models/adapter.py", "models/hooks.py",
               "models/prompts.py", "models/toyllava.py")

#: Columns of every row, both tasks (POPE rows add :data:`POPE_QUESTION_COLUMNS`).
BASE_COLUMNS = [
    "image_set", "image_id", "complexity", "task", "method", "family", "budget", "seed", "n_tokens", "n_kept",
    "equivalent_tokens", "prompt_len", "n_generated", "hit_max_new_tokens", "text",
    "erank_kept_vision", "erank_kept_projected", "attention_mass_kept",
    "erank_full_vision", "erank_full_projected", "attention_entropy", "attention_entropy_norm",
    "vision_s", "select_s", "prefill_s", "decode_s", "flops_vision", "flops_prefill", "flops_decode",
    "kept_indices", "method_stats",
]
POPE_QUESTION_COLUMNS = ["setting", "question_id", "question", "object", "label"]
#: Columns :func:`score_chair` adds (``caption`` is the generated text).
CHAIR_COLUMNS = [
    "caption", "n_words", "length", "n_mentions", "n_hallucinated", "chair_s", "chair_i", "n_gt", "n_gt_covered",
    "recall", "mentioned", "hallucinated_words", "gt_objects", "recalled", "chair_tokens", "mentions", "hallucinated",
    "chair_flag", "chair_text_path",
]
#: Columns :func:`score_pope` adds.
POPE_COLUMNS = ["answer", "pred", "correct"]
_IMAGE_COLUMNS = ["n_tokens", "erank_full_vision", "erank_full_projected", "attention_entropy", "attention_entropy_norm"]
_RECORD_KEYS = {  # adapter record keys that become columns (the rest of the scalars go to method_stats)
    "n_kept", "equivalent_tokens", "prompt_len", "n_generated", "erank_kept_vision", "erank_kept_projected",
    "attention_mass_kept", "vision_s", "select_s", "prefill_s", "decode_s", "flops_vision", "flops_prefill",
    "flops_decode", "kept_indices", "text",
}
_RECORD_SKIP = {"sample", "image_id", "method", "budget", "params", "stage", "n_image_tokens", "order",
                "positions", "batch_size", "assemble_s", "prompt_len_unpruned", "visual_tokens_per_layer",
                "kv_len_per_layer"}


# --------------------------------------------------------------------------------------------------------------
# Models


@dataclass
class GenerationModel:
    """A LLaVA model ready for :func:`run_generation`: adapter, prompt format, image preprocessing, fingerprint.

    ``prompt_format``: ``"toyllava"`` (ToyLLaVA's chat template, no system prompt), ``"llava_v1"`` (Vicuna system
    message + ``USER: <image>\\n... ASSISTANT:``) or ``"hf_chat"`` (llava-hf chat format, no system prompt).
    ``pixels``: ``callable(PIL image) -> (1, 3, H, W)`` tensor. ``name``: what the model was loaded from.
    """

    adapter: Any
    prompt_format: str
    pixels: Callable[[Any], torch.Tensor]
    name: str = "model"
    describe_prompt: str = "Please describe this image in detail."
    _fingerprint: str | None = field(default=None, repr=False)
    _n_tokens: int | None = field(default=None, repr=False)

    @property
    def tokenizer(self):
        return self.adapter.tokenizer

    @property
    def n_image_tokens(self) -> int:
        """Visual tokens per image, from the pixels the preprocessing really produces (ToyLLaVA's config keeps
        DINOv2's stored 518-px position grid while its processor feeds 336 px, i.e. 576 tokens)."""
        if self._n_tokens is None:
            from PIL import Image

            pv = self.pixels(Image.new("RGB", (32, 32)))
            p = int(self.adapter.model.config.vision_config.patch_size)
            self._n_tokens = (int(pv.shape[-2]) // p) * (int(pv.shape[-1]) // p)
        return self._n_tokens

    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            tok = self.tokenizer
            vocab = "none"
            if tok is not None and hasattr(tok, "get_vocab"):
                items = sorted(tok.get_vocab().items(), key=lambda kv: (kv[1], kv[0]))
                vocab = hashlib.sha256(json.dumps(items).encode()).hexdigest()[:16]
            elif tok is not None:
                vocab = f"{type(tok).__module__}.{type(tok).__qualname__}:{len(getattr(tok, 'vocab', {}))}"
            cfg = self.adapter.model.config.to_json_string(use_diff=False)
            self._fingerprint = _key([model_fingerprint(self.adapter.model), hashlib.sha256(cfg.encode()).hexdigest(),
                                      vocab, self.prompt_format, getattr(self.pixels, "key", repr(self.pixels))])
        return self._fingerprint

    def prompt_ids(self, question: str) -> list[int]:
        """Prompt token ids with one ``<image>`` id (the adapter expands it to the N image tokens)."""
        tok = self.tokenizer
        if tok is None:
            raise CapabilityError("the model has no tokenizer; pass LlavaAdapter(model, processor=...) or tokenizer=...")
        if self.prompt_format == "toyllava":
            return list(prompt_ids(tok, question))
        system = VICUNA_SYSTEM if self.prompt_format == "llava_v1" else None
        prompt = build_prompt(question, self.prompt_format, system)
        return tokenize_with_image(tok, prompt, self.adapter.parts.image_token_id, 1)

    def question_prompt(self, question: str) -> str:
        """The instruction for a POPE question: LLaVA-1.5 appends its short-answer suffix; ToyLLaVA was trained on
        the bare question."""
        return question if self.prompt_format == "toyllava" else f"{question}\n{LLAVA_SHORT_ANSWER}"


class _Pixels:
    """Image preprocessing as a picklable callable with a cache key (processor class + config)."""

    def __init__(self, image_processor=None, size: int | None = None, pad: bool = False):
        self.ip = image_processor
        self.size = size
        self.pad = bool(pad and image_processor is not None and hasattr(image_processor, "do_pad"))
        if image_processor is not None:
            conf = image_processor.to_json_string() if hasattr(image_processor, "to_json_string") else repr(image_processor)
            self.key = f"{type(image_processor).__name__}:{hashlib.sha256(conf.encode()).hexdigest()[:12]}:pad={self.pad}"
        else:
            self.key = f"resize{size}:clip-norm"

    def __call__(self, image) -> torch.Tensor:
        if self.ip is not None:
            kw = {"do_pad": True} if self.pad else {}
            return self.ip(images=[image], return_tensors="pt", **kw)["pixel_values"]
        # No processor (tiny test models): resize, scale to 0..1, normalise with CLIP's mean/std.
        mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(3, 1, 1)
        std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(3, 1, 1)
        arr = np.asarray(image.convert("RGB").resize((self.size, self.size), resample=3), dtype=np.float32) / 255.0
        x = torch.from_numpy(arr).permute(2, 0, 1)
        return ((x - mean) / std)[None]


def _is_toyllava_config(config) -> bool:
    return getattr(config, "toyllava_vocab_digest", None) is not None


def from_adapter(adapter, prompt_format: str | None = None, name: str = "adapter") -> GenerationModel:
    """Wrap a :class:`~prunelab.models.adapter.LlavaAdapter`. Prompt format: ToyLLaVA's when the config carries its
    vocabulary digest or the tokenizer its chat template, else ``llava_v1``. Pixels: the adapter's processor
    (``do_pad`` for llava_v1) or, without one, a plain resize + CLIP normalisation to the tower's image size."""
    if prompt_format is None:
        tok = adapter.tokenizer
        toy = _is_toyllava_config(adapter.model.config) or getattr(tok, "chat_template", None) == CHAT_TEMPLATE
        prompt_format = "toyllava" if toy else "llava_v1"
    if prompt_format not in PROMPT_FORMATS:
        raise UnknownNameError(f"unknown prompt format {prompt_format!r}; known: {', '.join(PROMPT_FORMATS)}")
    ip = getattr(adapter.processor, "image_processor", adapter.processor) if adapter.processor is not None else None
    size = int(adapter.model.config.vision_config.image_size)
    return GenerationModel(adapter, prompt_format, _Pixels(ip, size, pad=prompt_format == "llava_v1"), name=name)


def _has_tower_weights(folder: Path) -> bool:
    from safetensors import SafetensorError, safe_open

    files = sorted(folder.glob("*.safetensors"))
    for f in files:
        try:
            with safe_open(str(f), "pt") as fh:
                if any(".vision_tower." in k or k.startswith("vision_tower.") for k in fh.keys()):
                    return True
        except (SafetensorError, OSError) as err:
            raise AssetError(f"model weights {f} cannot be read ({str(err).splitlines()[0][:120]}); copy the "
                             "checkpoint's weight files again") from None
    return False


def load_generation_model(model: str = "toyllava", device: str = "auto", dtype=None) -> GenerationModel:
    """Load ``model`` (see the module docstring) onto ``device`` for :func:`run_generation`.

    Errors are one line: unknown name or weights not on this machine (:class:`AssetError`, with the fix), a
    CUDA device asked for but absent (:class:`DeviceError`). Nothing is downloaded.
    """
    dev = resolve_device(device)
    folder = check_model(model)
    if dtype is None:
        dtype = torch.float16 if dev.type == "cuda" and model not in EMBEDDED_MODELS else torch.float32
    import transformers
    from transformers import LlavaConfig

    try:
        cfg = LlavaConfig.from_pretrained(str(folder))
    except (OSError, ValueError) as err:
        raise AssetError(f"cannot read a LLaVA config from {folder} ({str(err).splitlines()[0][:120]}); pass a "
                         "LlavaForConditionalGeneration folder or HF id") from None
    if model in EMBEDDED_MODELS or (_is_toyllava_config(cfg) and not _has_tower_weights(folder)):
        net, processor = load_toyllava(folder, device="cpu", dtype=dtype)
        fmt = "toyllava"
    else:
        from safetensors import SafetensorError

        try:  # use_safetensors: never fall back to unpickling a .bin (check_model has refused pickle-only folders)
            net = transformers.LlavaForConditionalGeneration.from_pretrained(str(folder), dtype=dtype,
                                                                            use_safetensors=True)
            processor = transformers.AutoProcessor.from_pretrained(str(folder))
        except (OSError, ValueError, SafetensorError) as err:
            raise AssetError(f"cannot load the LLaVA model in {folder} ({str(err).splitlines()[0][:120]}); check that "
                             "the folder holds config, weights, tokenizer and processor files") from None
        fmt = "toyllava" if _is_toyllava_config(cfg) else "llava_v1"
    adapter = LlavaAdapter(net, processor=processor, device=dev)
    gm = from_adapter(adapter, fmt, name=str(model))
    if fmt == "toyllava":
        gm.describe_prompt = tt.DESCRIBE_PROMPT  # the toy world's prompt, which the model was trained on
    return gm


def _as_generation_model(model, device) -> GenerationModel:
    if isinstance(model, GenerationModel):
        return model
    if isinstance(model, LlavaAdapter):
        return from_adapter(model)
    if isinstance(model, (str, Path)):
        return load_generation_model(str(model), device=device)
    raise UnknownNameError(f"model must be a name such as 'toyllava', an HF id or folder, a GenerationModel or a "
                           f"LlavaAdapter, got {type(model).__name__}")


def model_fingerprint(model: torch.nn.Module, full_limit: int = 1 << 22, sample: int = 1 << 16) -> str:
    """SHA-256 (16 hex) of a model's weights: every tensor with up to ``full_limit`` elements in full, larger ones
    (7B-scale layers) by ``sample`` evenly strided elements, plus every name, shape and dtype."""
    h = hashlib.sha256()
    with torch.no_grad():
        for name, t in sorted(model.state_dict().items()):
            t = t.detach()
            h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
            flat = t.reshape(-1)
            if flat.numel() > full_limit:
                flat = flat[:: max(1, flat.numel() // sample)]
            h.update(flat.to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------------------------------------------
# Methods


@dataclass
class _Spec:
    label: str
    pruner: Any  # None = unpruned
    family: str

    def key(self) -> dict:
        if self.pruner is None:
            return {"label": self.label, "name": "full"}
        return {"label": self.label, "name": self.pruner.name, "params": _jsonable(self.pruner.params())}


def _is_vanilla(m) -> bool:
    return m is None or (isinstance(m, str) and m.strip().lower() in _VANILLA_NAMES)


def resolve_generation_methods(methods) -> list[_Spec]:
    """Method specs (labels unique): :func:`prunelab.study.runner.resolve_methods` items, plus ``None`` / ``"Vanilla"``
    / ``"full"`` for the unpruned model (label ``"Vanilla"``, family ``"base"``)."""
    if methods is None or isinstance(methods, (str, dict)) or not isinstance(methods, (list, tuple)):
        methods = [methods]
    specs: list[_Spec] = []
    for m in methods:
        if _is_vanilla(m):
            specs.append(_Spec(VANILLA, None, "base"))
        else:
            (s,) = resolve_methods([m])
            specs.append(_Spec(s.label, s.pruner, s.pruner.family))
    labels = [s.label for s in specs]
    dup = sorted({x for x in labels if labels.count(x) > 1})
    if dup:
        raise UnknownNameError(f"method label(s) {', '.join(dup)} given twice; drop the duplicate or pass distinct labels")
    return specs


def spec_input_erank(ctx, spec: ErankStatsSpec) -> float:
    """The input erank of ``ctx`` with the options of a method's :meth:`~prunelab.methods.base.Pruner.erank_stats_spec`
    (what the consuming method computes)."""
    return float(input_erank(ctx.space(spec.features), center=spec.center, row_normalize=spec.row_normalize,
                             spectrum=spec.spectrum))


# --------------------------------------------------------------------------------------------------------------
# Ground truth and questions


def ground_truth_for(items, set_name: str):
    """The ground truth of the selected images, keyed by ``ImageItem.id``: toy world (exact scene categories,
    :func:`prunelab.eval.groundtruth.toyworld_ground_truth`), photos (:func:`~prunelab.eval.groundtruth.photos_ground_truth`)
    or COCO (:class:`~prunelab.eval.groundtruth.CocoGroundTruth` from ``instances_val2014.json`` +
    ``captions_val2014.json`` found in ``<dir>/../annotations``, ``<dir>/..`` or ``<dir>``)."""
    kind = set_name.split(":", 1)[0]
    if kind == "toyworld" and all("scene" in it.meta for it in items):
        return G.toyworld_ground_truth(labels={it.id: list(it.meta["scene"].categories) for it in items})
    if kind == "photos":
        gt = G.photos_ground_truth()
        return G.MappingGroundTruth({it.id: set(gt.objects(it.id)) for it in items}, name="photos")
    if kind == "coco":
        folder = Path(set_name.split(":", 1)[1]).expanduser()
        for ann in (folder.parent / "annotations", folder.parent, folder):
            if (ann / "instances_val2014.json").is_file() and (ann / "captions_val2014.json").is_file():
                ids = [it.meta.get("coco_id") for it in items]
                if any(i is None for i in ids):
                    raise AssetError(f"some files in {folder} are not named like COCO_val2014_<id>.jpg; CHAIR needs the COCO ids")
                gt = G.CocoGroundTruth.from_dir(ann, image_ids=ids)
                return G.MappingGroundTruth({it.id: set(gt.objects(it.meta["coco_id"])) for it in items}, name="coco2014",
                                            source=str(ann))
        raise AssetError(f"no COCO annotations (instances_val2014.json, captions_val2014.json) next to {folder}; put them "
                         f"in {folder.parent / 'annotations'}")
    if all(it.labels for it in items):
        return G.MappingGroundTruth({it.id: set(it.labels) for it in items}, name=set_name)
    raise AssetError(f"no ground truth known for image set {set_name!r}; use toyworld:<split>, photos or coco:<dir>")


@dataclass(frozen=True)
class Question:
    setting: str
    question_id: str
    question: str
    object: str
    label: str  # "yes" | "no"


def pope_questions_for(items, set_name: str, settings: Sequence[str] = ("random", "popular", "adversarial"),
                       seed: int = 0) -> dict[str, list[Question]]:
    """POPE questions per image id. Toy world: each scene's own balanced questions per setting
    (:func:`prunelab.toyworld.text.pope_questions`, the ones ToyLLaVA's evaluation uses). Otherwise
    :func:`prunelab.eval.pope.build_pope` on the selected images with >= 3 objects (others get no question)."""
    for s in settings:
        if s not in P.SETTINGS:
            raise UnknownNameError(f"unknown POPE setting {s!r}; use some of {', '.join(P.SETTINGS)}")
    out: dict[str, list[Question]] = {it.id: [] for it in items}
    if set_name.startswith("toyworld") and all("scene" in it.meta for it in items):
        for it in items:
            for s in settings:
                for k, q in enumerate(tt.pope_questions(it.meta["scene"], s)):
                    out[it.id].append(Question(s, f"{s}-{k}", q["question"], q["object"], q["answer"]))
        return out
    gt = ground_truth_for(items, set_name)
    eligible = [it.id for it in items if len(gt.objects(it.id)) >= 3]
    if not eligible:
        raise P.PopeError(f"no selected image of {set_name!r} has >= 3 ground-truth objects; use more images (n) or toyworld")
    for s, qs in P.build_pope(gt, settings=settings, image_ids=eligible, seed=seed).items():
        for q in qs:
            out[q.image_id].append(Question(s, f"{s}-{q.question_id}", q.text, q.object, q.label))
    return out


# --------------------------------------------------------------------------------------------------------------
# Cache helpers


def _code_hash() -> str:
    return code_hash(_CODE_FILES)


def _write_entry(df: pd.DataFrame, path: Path) -> None:
    write_table(df, path)


def _read_entry(path: Path, task: str) -> pd.DataFrame | None:
    """An entry's cached rows, or ``None`` (missing, not intact or lacking a column: generate it again)."""
    return read_table(path, BASE_COLUMNS + (POPE_QUESTION_COLUMNS if task == "pope" else []))


def _normalize(df: pd.DataFrame) -> pd.DataFrame:
    """The same dtypes whether rows were just generated or read back from CSV."""
    df = df.copy()
    for col in ("image_id", "text", "method_stats"):
        df[col] = df[col].map(lambda v: "" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v))
    df["complexity"] = df["complexity"].astype(object).where(df["complexity"].notna(), None)
    for col in ("budget", "seed", "n_tokens", "n_kept", "prompt_len", "n_generated"):
        df[col] = df[col].astype("int64")
    df["hit_max_new_tokens"] = df["hit_max_new_tokens"].astype(bool)
    for col in ("erank_kept_vision", "erank_kept_projected", "attention_mass_kept", "equivalent_tokens"):
        df[col] = pd.to_numeric(df[col], errors="coerce").astype(float)
    if "question_id" in df:
        df["question_id"] = df["question_id"].astype(str)
    return df


#: Tower outputs of pass 1 (image statistics) kept for pass 2 (generation) up to this many bytes; beyond it an
#: image is encoded again when its entries are generated (same tensors, more time). ToyLLaVA's DINOv2 output with
#: two q/k layers is ~5 MB per image; a 7B checkpoint's CLIP-L ~12 MB.
KEEP_ENCODINGS_BYTES = 1 << 30


def _nbytes(obj) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_nbytes(v) for v in obj.values())
    return 0


def _qk_layers_for(specs: list[_Spec], adapter) -> tuple[int, ...]:
    layers: set[int] = set()
    for s in specs:
        if s.pruner is not None and getattr(s.pruner, "stage", "pre_llm") != "in_llm":
            layers |= parse_requires(getattr(s.pruner, "requires", ()))[0]
    return tuple(sorted(layers))


def _scalars(rec: dict) -> str:
    keep = {}
    for k, v in rec.items():
        if k in _RECORD_KEYS or k in _RECORD_SKIP:
            continue
        if isinstance(v, torch.Tensor):
            v = v.item() if v.numel() == 1 else None
        if isinstance(v, (bool, int, float, str)) or v is None:
            keep[k] = v
    return json.dumps(keep, sort_keys=True, default=str)


# --------------------------------------------------------------------------------------------------------------
# The loop


def _validate_budgets(budgets) -> list[int]:
    return check_budgets(budgets, None)  # integers >= 1 now; checked against N once the model is known


def run_generation(
    model,
    image_set,
    methods,
    budgets: Sequence[int],
    *,
    task: str = "describe",
    n: int | None = None,
    seed: int = 0,
    max_new_tokens: int | None = None,
    device: str = "auto",
    erank_stats: dict | None = None,
    cache_dir: str | Path | bool | None = None,
    progress: bool | None = None,
    pope_settings: Sequence[str] = ("random", "popular", "adversarial"),
    chair_parser=None,
    refresh: bool = False,
    pope_batch_size: int = 32,
) -> pd.DataFrame:
    """Generate under every method x budget on every image of ``image_set`` and score the outputs.

    Parameters
    ----------
    model: ``"toyllava"``, an HF id / folder of a llava-hf checkpoint, a :class:`GenerationModel` or a
        :class:`~prunelab.models.adapter.LlavaAdapter` (see the module docstring).
    image_set: a :func:`prunelab.study.data.load_image_set` spec (``"toyworld:test"``, ``"photos"``, ``"coco:<dir>"``)
        or a list of :class:`prunelab.study.data.ImageItem`.
    methods: method names / specs (:func:`resolve_generation_methods`); ``None`` or ``"Vanilla"`` = unpruned.
    budgets: absolute numbers of kept visual tokens (``1..N``).
    task: ``"describe"`` (captions + CHAIR) or ``"pope"`` (yes/no questions + POPE).
    n, seed: a nested seeded subset of ``n`` images (``None``: all); ``seed`` also seeds COCO/photo POPE questions.
    max_new_tokens: generation limit (default 512 for describe, the OPERA/PAI CHAIR setting; 8 for pope).
    device: ``"auto"`` / ``"cpu"`` / ``"cuda"`` (used when ``model`` is loaded here).
    erank_stats: ``{"mean", "min", "max", ...}`` for erank-calibrated methods; default: calibrated on the image set.
    cache_dir: where entries go (default ``<prunelab cache>/generation``); ``False`` disables caching.
    progress: tqdm bars (default: on a terminal). pope_settings: which POPE negative settings to ask.
    chair_parser: a :class:`prunelab.eval.mentions.CaptionParser` (default: built with its defaults).
    refresh: ignore cached entries (they are overwritten).
    pope_batch_size: POPE questions of one image decoded together (left padding) after one shared selection
        (:meth:`~prunelab.models.adapter.LlavaAdapter.run_shared_image`); ``1`` decodes them one by one. Part of
        the cache key.

    ``df.attrs``: ``model`` (fingerprint), ``model_name``, ``prompt_format``, ``task``, ``prompt``,
    ``max_new_tokens``, ``image_set``, ``erank_stats`` (per erank option set), ``chair_config`` (describe).
    """
    from tqdm.auto import tqdm

    if task not in TASKS:
        raise UnknownNameError(f"unknown task {task!r}; use one of {', '.join(TASKS)}")
    if isinstance(methods, (list, tuple)) and not methods:
        raise UnknownNameError("methods is empty; pass at least one, e.g. methods=['Vanilla', 'FasterVLM']")
    specs = resolve_generation_methods(methods)
    budgets = _validate_budgets(budgets)
    seed, n = check_seed(seed), check_n_images(n, "n")
    if max_new_tokens is None:
        max_new_tokens = DEFAULT_MAX_NEW_TOKENS[task]
    if isinstance(pope_batch_size, bool) or not isinstance(pope_batch_size, int) or pope_batch_size < 1:
        raise UnknownNameError(f"pope_batch_size must be a positive integer, got {pope_batch_size!r}; pass e.g. 32")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise UnknownNameError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}; pass e.g. 512")
    if isinstance(image_set, str):
        check_image_set(image_set)
    resolve_device(device)  # a missing CUDA device fails here, before any loading
    gm = _as_generation_model(model, device)
    n_img = gm.n_image_tokens
    budgets = [check_budget(b, n_img) for b in budgets]
    set_name, items = _items_of(image_set, n, seed)
    adapter = gm.adapter
    dev = adapter.device
    dtype = next(adapter.model.parameters()).dtype
    eos = getattr(gm.tokenizer, "eos_token_id", None)
    use_cache = cache_dir is not False
    root = Path(cache_dir) if cache_dir not in (None, False, True) else _cache_dir("generation")
    code = _code_hash()
    vroot = root / version_dir(CACHE_FORMAT, code)
    disable = None if progress is None else not progress
    qk_layers = _qk_layers_for(specs, adapter)

    # Prompts.
    questions: dict[str, list[Question]] = {}
    if task == "describe":
        gt = ground_truth_for(items, set_name)  # before any generation: a set without ground truth fails now
        prompt = gm.describe_prompt
        describe_ids = gm.prompt_ids(prompt)
    else:
        prompt = None
        questions = pope_questions_for(items, set_name, pope_settings, seed)
        q_ids: dict[str, list[int]] = {}
        for qs in questions.values():
            for q in qs:
                if q.question not in q_ids:
                    q_ids[q.question] = gm.prompt_ids(gm.question_prompt(q.question))
    decode = {"greedy": True, "num_beams": 1, "batch_size": 1 if task == "describe" else int(pope_batch_size),
              "max_new_tokens": int(max_new_tokens), "device": dev.type, "dtype": str(dtype), "eos": eos}
    base_key = [CACHE_FORMAT, gm.fingerprint, code, task, decode]

    # Pass 1: image-level statistics (tower once per image; cached), which also calibrate the erank statistics.
    need_specs = sorted({s for sp in specs if sp.pruner is not None and (s := sp.pruner.erank_stats_spec()) is not None})
    img_dir = vroot / "images" / _key([CACHE_FORMAT, gm.fingerprint, code, dev.type, str(dtype)])
    per_image: dict[str, dict] = {}
    encodings: dict[str, tuple[torch.Tensor, dict, float]] = {}
    kept_bytes = 0  # tower outputs kept from pass 1 for pass 2, up to KEEP_ENCODINGS_BYTES (else re-encoded)

    def encode(it):
        pv = gm.pixels(it.image)
        synchronize(dev)
        t0 = time.perf_counter()
        enc = adapter.encode_images(pv, qk_layers)
        synchronize(dev)
        return pv, enc, time.perf_counter() - t0

    def image_entry(it, enc) -> dict:
        ctx = adapter.context(enc, 0, image_id=it.id)
        st = image_stats(ctx)
        for sp in need_specs:
            st[sp.name] = spec_input_erank(ctx, sp)
        return st

    def ipath(it):
        return img_dir / f"{_key([it.source, it.id])}.json"

    todo = []
    for it in items:
        p = ipath(it)
        st = read_entry(p) if use_cache and not refresh else None
        if isinstance(st, dict) and all(k in st for k in _IMAGE_COLUMNS + [sp.name for sp in need_specs]):
            per_image[it.id] = st
            continue
        todo.append(it)
    for it in tqdm(todo, desc="image stats", unit="img", disable=disable or not todo):
        pv, enc, secs = encode(it)
        per_image[it.id] = image_entry(it, enc)
        if use_cache:
            write_entry(ipath(it), per_image[it.id])
        size = _nbytes(enc) + pv.numel() * pv.element_size()
        if kept_bytes + size <= KEEP_ENCODINGS_BYTES:
            kept_bytes += size
            encodings[it.id] = (pv, enc, secs)
        else:
            it.release()

    stats_by_spec: dict[ErankStatsSpec, dict] = {}
    if need_specs:
        for sp in need_specs:
            stats_by_spec[sp] = dict(erank_stats) if erank_stats is not None else erank_stats_from(
                per_image[it.id][sp.name] for it in items)

    # Pass 2: generation entries (cached per image x method x budget).
    entries = []  # (item, spec, budget)
    for it in items:
        for sp in specs:
            for b in ([n_img] if sp.pruner is None else budgets):
                entries.append((it, sp, b))

    def entry_path(it, sp, b):
        es = sp.pruner.erank_stats_spec() if sp.pruner is not None else None
        parts = base_key + [[it.source, it.id], sp.key(), b, stats_by_spec.get(es) if es else None]
        if task == "describe":
            parts.append(describe_ids)
        else:
            parts.append([[q.setting, q.question_id, q_ids[q.question], q.label] for q in questions[it.id]])
        return vroot / "entries" / f"{_key(parts)}.json"

    frames: dict[tuple, pd.DataFrame] = {}
    missing: dict[str, list] = {}
    for it, sp, b in entries:
        path = entry_path(it, sp, b)
        cached = _read_entry(path, task) if use_cache and not refresh else None
        if cached is not None:
            frames[(it.id, sp.label, b)] = cached
        else:
            missing.setdefault(it.id, []).append((sp, b, path))

    n_todo = sum(len(v) for v in missing.values())
    with tqdm(total=n_todo, desc=f"generate [{task}]", unit="run", disable=disable or not n_todo) as bar:
        for it in items:
            if it.id not in missing:
                continue
            pv, enc, secs = encodings.pop(it.id, None) or encode(it)
            img = per_image[it.id]
            with adapter.reuse_encoding(pv, enc):
                for sp, b, path in missing[it.id]:
                    es = sp.pruner.erank_stats_spec() if sp.pruner is not None else None
                    stats = stats_by_spec.get(es) if es else None
                    prompts = [(None, describe_ids)] if task == "describe" else [(q, q_ids[q.question]) for q in questions[it.id]]
                    budget_arg = None if sp.pruner is None else b
                    try:
                        if task == "describe":
                            out = adapter.run([torch.tensor(describe_ids)], pv, sp.pruner, budget_arg,
                                              max_new_tokens=max_new_tokens, erank_stats=stats, image_ids=[it.id],
                                              eos_token_id=eos)
                        else:  # one selection for all of the image's questions, decoded together
                            out = adapter.run_shared_image([torch.tensor(ids) for _, ids in prompts], pv, sp.pruner,
                                                           budget_arg, max_new_tokens=max_new_tokens,
                                                           batch_size=pope_batch_size, erank_stats=stats,
                                                           image_id=it.id, eos_token_id=eos)
                    except PrunelabError as err:
                        raise type(err)(f"{sp.label} at T={b} on image {it.id}: {err}") from None
                    rows = []
                    for k, (q, _ids) in enumerate(prompts):
                        rec = out.records[k]
                        seq = out.sequences[k]
                        text = out.texts[k] if out.texts is not None else " ".join(map(str, seq))
                        row = {"image_set": set_name, "image_id": it.id, "complexity": it.complexity, "task": task,
                               "method": sp.label, "family": sp.family, "budget": int(b), "seed": int(seed)}
                        row.update({k: img[k] for k in _IMAGE_COLUMNS})
                        row.update({k: rec.get(k, math.nan) for k in _RECORD_KEYS if k != "text"})
                        row["text"] = text
                        row["vision_s"] = secs
                        row["kept_indices"] = [int(i) for i in rec.get("kept_indices", [])]
                        row["hit_max_new_tokens"] = bool(len(seq) >= max_new_tokens and (eos is None or not seq or seq[-1] != eos))
                        row["method_stats"] = _scalars(rec)
                        if sp.pruner is None:  # all N tokens: the kept set is the full set
                            row.update(erank_kept_vision=img["erank_full_vision"],
                                       erank_kept_projected=img["erank_full_projected"], attention_mass_kept=1.0)
                        if q is not None:
                            row.update(setting=q.setting, question_id=q.question_id, question=q.question,
                                       object=q.object, label=q.label)
                        rows.append(row)
                    cols = BASE_COLUMNS + (POPE_QUESTION_COLUMNS if task == "pope" else [])
                    frame = pd.DataFrame(rows, columns=cols)
                    if use_cache:
                        _write_entry(frame, path)
                    frames[(it.id, sp.label, b)] = frame
                    bar.update(1)
            it.release()

    cols = BASE_COLUMNS + (POPE_QUESTION_COLUMNS if task == "pope" else [])
    parts = [frames[(it.id, sp.label, b)] for it, sp, b in entries]
    parts = [p for p in parts if len(p)]
    df = pd.concat(parts, ignore_index=True)[cols] if parts else pd.DataFrame(columns=cols)
    df["seed"] = int(seed)  # rows read from the cache keep this call's seed (it never changes generated text)
    df = _normalize(df)
    attrs = dict(model=gm.fingerprint, model_name=gm.name, prompt_format=gm.prompt_format, task=task,
                 max_new_tokens=int(max_new_tokens), image_set=set_name,
                 erank_stats={k.name: v for k, v in stats_by_spec.items()})
    if task == "describe":
        df, config = score_chair(df, gt, parser=chair_parser)
        attrs.update(prompt=prompt, chair_config=config)
    else:
        df = score_pope(df)
    df.attrs.update(attrs)
    return df


# --------------------------------------------------------------------------------------------------------------
# Scoring


def score_chair(df: pd.DataFrame, ground_truth, parser=None) -> tuple[pd.DataFrame, dict]:
    """Add the per-caption CHAIR columns (:data:`CHAIR_COLUMNS`) to a describe table with
    :func:`prunelab.eval.chair.evaluate_chair` (``on_bad="flag"``: an empty caption is scored as the reference scores
    it — no mentions, zero length, its ground truth counted in Recall — and flagged ``empty_caption``).
    Returns ``(table, chair config)``."""
    parser = parser or CaptionParser()
    res = evaluate_chair([(iid, str(t)) for iid, t in zip(df["image_id"], df["text"])], ground_truth,
                         parser=parser, on_bad="flag")
    out = df.copy()
    sc = res.captions
    out["caption"] = out["text"]
    out["n_words"] = [len(str(t).split()) for t in out["text"]]
    out["length"] = [c.length for c in sc]
    out["n_mentions"] = [c.n_mentions for c in sc]
    out["n_hallucinated"] = [c.n_hallucinated for c in sc]
    out["chair_s"] = [c.chair_s for c in sc]
    out["chair_i"] = [c.chair_i for c in sc]
    out["n_gt"] = [len(c.gt_objects) for c in sc]
    out["n_gt_covered"] = [len(c.recalled) for c in sc]
    out["recall"] = [c.recall for c in sc]
    out["mentioned"] = [[m.category for m in c.mentions] for c in sc]
    out["hallucinated_words"] = [[m.word for m in c.hallucinated] for c in sc]
    out["gt_objects"] = [list(c.gt_objects) for c in sc]
    out["recalled"] = [list(c.recalled) for c in sc]
    out["chair_tokens"] = [list(c.tokens) for c in sc]
    out["mentions"] = [[[m.word, m.category, m.index] for m in c.mentions] for c in sc]
    out["hallucinated"] = [[[m.word, m.category, m.index] for m in c.hallucinated] for c in sc]
    out["chair_flag"] = [c.flag for c in sc]
    out["chair_text_path"] = res.text_path  # "reference" | "fallback" (prunelab.eval.textproc)
    return out, res.config


def caption_scores(df: pd.DataFrame) -> list:
    """The :class:`prunelab.eval.chair.CaptionScore` of every row of a scored describe table, rebuilt exactly from its
    columns (also after :func:`prunelab.study.runner.save_table` and ``pd.read_csv``: list columns may be JSON text).
    Captions flagged ``not_a_string`` / ``no_ground_truth`` are ``included=False``, as in the evaluator."""
    def lst(v):
        return json.loads(v) if isinstance(v, str) else list(v)

    out = []
    for r in df.itertuples(index=False):
        flag = r.chair_flag if isinstance(r.chair_flag, str) and r.chair_flag else None
        out.append(CaptionScore(
            r.image_id, r.caption, tokens=lst(r.chair_tokens), mentions=[Mention(*m) for m in lst(r.mentions)],
            hallucinated=[Mention(*m) for m in lst(r.hallucinated)], gt_objects=lst(r.gt_objects),
            recalled=lst(r.recalled), flag=flag, included=flag not in ("not_a_string", "no_ground_truth"),
        ))
    return out


def _chair_metric_parts(metric: str) -> tuple[str, str | None]:
    parts = {"CHAIR_s": ("chair_s", None), "CHAIR_i": ("n_hallucinated", "n_mentions"),
             "Recall": ("n_gt_covered", "n_gt"), "Len": ("length", None)}
    if metric not in parts:
        raise UnknownNameError(f"unknown CHAIR metric {metric!r}; use one of {', '.join(parts)}")
    return parts[metric]


def chair_table(df: pd.DataFrame, by: Sequence[str] = ("method", "budget"), *, ci: float | None = None,
                n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """The paper's CHAIR layout per group of ``by`` (default method x budget; add ``"complexity"`` to split):
    ``CHAIR_s``, ``CHAIR_i``, ``Recall`` (x100) and ``Len`` (mean merged tokens), from
    :class:`prunelab.eval.chair.ChairResult` over the group's captions (ratios of sums, flagged captions excluded as the
    evaluator does), plus ``n_captions``, ``n_mentions``, ``family``. With ``ci`` (e.g. 0.95), seeded percentile
    bootstrap intervals over the group's captions (= images) for each metric (``<metric>_low/_high``). The last
    column, ``text_path``, says which CHAIR text path scored the group (also ``table.attrs["text_path"]``); a
    table not wholly on OPERA's reference path warns (:func:`prunelab.eval.chair.combined_text_path`)."""
    by = list(by)
    if "chair_s" not in df:
        raise UnknownNameError("the table has no CHAIR columns; pass the output of run_generation(task='describe')")
    rows = []
    for key, g in df.groupby(by, sort=False, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        res = ChairResult(caption_scores(g), {})
        s = res.summary(ndigits=None)
        row = {**dict(zip(by, key))}
        if "family" in g and "family" not in by:
            row["family"] = g["family"].iloc[0]
        row.update({m: s[m] for m in ("CHAIR_s", "CHAIR_i", "Recall", "Len")})
        row.update(n_captions=res.n_captions, n_mentions=res.n_mentions, n_hallucinated=res.n_hallucinated)
        if ci is not None:
            inc = g[g["chair_flag"].map(lambda f: f not in ("not_a_string", "no_ground_truth"))]
            for m in ("CHAIR_s", "CHAIR_i", "Recall", "Len"):
                num, den = _chair_metric_parts(m)
                _, lo, hi = S.ratio_ci(inc[num].to_numpy(float), inc[den].to_numpy(float) if den else None,
                                       n_boot=n_boot, ci=ci, seed=seed)
                scale = 1.0 if m == "Len" else 100.0
                row[f"{m}_low"], row[f"{m}_high"] = lo * scale, hi * scale
        row["text_path"] = combined_text_path(g.get("chair_text_path", ()))
        rows.append(row)
    out = pd.DataFrame(rows)
    if "method" in by:
        rank = {m: i for i, m in enumerate(method_order(df))}
        out = out.sort_values([c for c in ("budget", "method") if c in by] + [c for c in by if c not in ("budget", "method")],
                              key=lambda c: c.map(rank) if c.name == "method" else c, kind="stable").reset_index(drop=True)
    out.attrs["text_path"] = combined_text_path(out["text_path"] if len(out) else (), warn="CHAIR table")
    return out


def paired_chair(df: pd.DataFrame, a: str, b: str, metric: str, *, by: Sequence[str] = ("budget",),
                 n_boot: int = 2000, ci: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """Difference ``metric(a) - metric(b)`` between two methods on the same images, per group of ``by``, with a
    seeded paired bootstrap over images (both methods' captions of an image resampled together;
    :func:`prunelab.eval.stats.paired_ratio_diff`). ``metric`` is computed as CHAIR defines it (ratio of sums; x100
    except Len) over every caption of the two methods, flagged ones included (:func:`prunelab.study.paired.compare`
    leaves them out). Columns ``by + [a, b, value_a, value_b, diff, ci_low, ci_high, n]``."""
    num, den = _chair_metric_parts(metric)
    scale = 1.0 if metric == "Len" else 100.0
    rows = []
    for key, g in df.groupby(list(by), sort=False, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        cols = [num] + ([den] if den else [])
        A = g[g["method"] == a].set_index("image_id")[cols]
        B = g[g["method"] == b].set_index("image_id")[cols]
        ids = sorted(set(A.index) & set(B.index))
        if not ids:
            continue
        A, B = A.loc[ids], B.loc[ids]
        r = S.paired_ratio_diff(A[num], A[den] if den else None, B[num], B[den] if den else None, n_boot=n_boot,
                                ci=ci, seed=seed)
        rows.append({**dict(zip(by, key)), "a": a, "b": b, "value_a": r.value_a * scale, "value_b": r.value_b * scale,
                     "diff": r.diff * scale, "ci_low": r.ci_low * scale, "ci_high": r.ci_high * scale, "n": len(ids)})
    return pd.DataFrame(rows, columns=list(by) + ["a", "b", "value_a", "value_b", "diff", "ci_low", "ci_high", "n"])


def score_pope(df: pd.DataFrame, parser: str = "reference") -> pd.DataFrame:
    """Add ``answer`` (the generated text), ``pred`` (:func:`prunelab.eval.pope.parse_yes_no`: ``"yes"``/``"no"``/None;
    default POPE's own rule, ``parser="robust"`` for the reading that can say "cannot tell") and ``correct``
    (``pred == label``; False when unparsed) to a POPE table."""
    out = df.copy()
    out["answer"] = out["text"]
    out["pred"] = [parse_yes_no(t, parser) for t in out["text"]]
    out["correct"] = [p == lab for p, lab in zip(out["pred"], out["label"])]
    return out


def pope_table(df: pd.DataFrame, by: Sequence[str] = ("method", "budget", "setting"), *, parser: str = "reference",
               on_unparsed: str = "exclude") -> pd.DataFrame:
    """POPE metrics per group (default method x budget x setting) with :func:`prunelab.eval.pope.pope_metrics` on the
    group's labels and generated answers: ``Accuracy``, ``Precision``, ``Recall``, ``F1``, ``Yes-ratio`` (x100),
    ``n``, ``n_unparsed``."""
    if "label" not in df:
        raise UnknownNameError("the table has no POPE columns; pass the output of run_generation(task='pope')")
    rows = []
    for key, g in df.groupby(list(by), sort=False, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        r = pope_metrics(list(g["label"]), list(g["text"]), parser=parser, on_unparsed=on_unparsed)
        rows.append({**dict(zip(by, key)), **r.summary(ndigits=None)})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------------------------
# Display


def caption_spans(caption: str, ground_truth_objects, parser=None) -> list[tuple[int, int, str, str]]:
    """Character spans of the CHAIR object mentions in ``caption``: ``(start, end, category, "hallucinated" |
    "correct")``. The caption is parsed exactly as :meth:`prunelab.eval.mentions.CaptionParser.parse` does (tokenise,
    lemmatise, merge pairs, map synonyms); tokens are then located in the lower-cased text left to right. A
    mention whose token cannot be located (a tokenizer rewrite such as quotes) is left out."""
    parser = parser or CaptionParser()
    lower = caption.lower()
    raw = parser.text.tokenize(lower)
    lemmas = parser.text.lemmatize(raw)
    spans: list[tuple[int, int] | None] = []
    pos = 0
    for tok in raw:
        k = lower.find(tok, pos)
        if k < 0:
            spans.append(None)
            continue
        spans.append((k, k + len(tok)))
        pos = k + len(tok)
    merged: list[str] = []
    merged_spans: list[tuple[int, int] | None] = []
    i = 0
    while i < len(lemmas):
        rep = parser.merges.get(f"{lemmas[i]} {lemmas[i + 1]}") if i + 1 < len(lemmas) else None
        if rep is not None:
            a, b = spans[i], spans[i + 1]
            merged.append(rep)
            merged_spans.append((a[0], b[1]) if a and b else None)
            i += 2
        else:
            merged.append(lemmas[i])
            merged_spans.append(spans[i])
            i += 1
    gt = set(ground_truth_objects)
    out = []
    for m in parser.mentions_from_tokens(merged):
        sp = merged_spans[m.index]
        if sp is not None:
            out.append((sp[0], sp[1], m.category, "correct" if m.category in gt else "hallucinated"))
    return out


HIGHLIGHT = {"hallucinated": "background-color:#f4a6a6;font-weight:bold", "correct": "background-color:#c7e9c0"}


def highlight_caption(caption: str, ground_truth_objects, parser=None) -> str:
    """HTML of ``caption`` with hallucinated object mentions in red and correct ones in green (title = category)."""
    import html

    out, last = [], 0
    for s, e, cat, kind in caption_spans(caption, ground_truth_objects, parser):
        out.append(html.escape(caption[last:s]))
        out.append(f'<span style="{HIGHLIGHT[kind]}" title="{html.escape(cat)} ({kind})">{html.escape(caption[s:e])}</span>')
        last = e
    out.append(html.escape(caption[last:]))
    return "".join(out)


__all__ = [
    "TASKS", "VANILLA", "BASE_COLUMNS", "POPE_QUESTION_COLUMNS", "CHAIR_COLUMNS", "POPE_COLUMNS",
    "GenerationModel", "from_adapter", "load_generation_model", "model_fingerprint", "resolve_generation_methods",
    "spec_input_erank", "ground_truth_for", "Question", "pope_questions_for", "run_generation", "score_chair",
    "caption_scores", "chair_table", "paired_chair", "score_pope", "pope_table", "caption_spans", "highlight_caption",
]

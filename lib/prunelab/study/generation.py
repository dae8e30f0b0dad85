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
  included), ``n_words``, ``mentioned``, ``hallucinated_words``, ``gt_objects``. :func:`prunelab.study.scoring.chair_table` aggregates
  them per method x budget into the paper's CHAIR_s / CHAIR_i / Recall / Len as ratios of sums, by building the
  same :class:`prunelab.eval.chair.ChairResult` the evaluator builds.
* ``task="pope"``: **one row per image x question x method x budget** (POPE, Li et al. 2023): the toy world's own
  balanced questions per setting (``prunelab.toyworld.text.pope_questions``: random / popular / adversarial
  negatives) or, for COCO and the photos, :func:`prunelab.eval.pope.build_pope` on the selected images; the answer is
  read with :func:`prunelab.eval.pope.parse_yes_no`. :func:`prunelab.study.scoring.pope_table` gives accuracy / precision / recall / F1 /
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

import math
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import torch

from prunelab.device import bars_off, resolve_device
from prunelab.errors import PrunelabError, UnknownNameError, check_budget
from prunelab.methods.adaptive import input_erank
from prunelab.methods.base import ErankStatsSpec
from prunelab.models.loader import CHAIR_PROTOCOL_LIMIT, as_generation_model
from prunelab.models.parts import parse_requires
from prunelab.study.params import check_budgets, check_image_set, check_n_images, check_seed
from prunelab.study.questions import Question, ground_truth_for, pope_questions_for
from prunelab.study.runner import (
    RUN_COLUMNS,
    MethodSpec,
    _items_of,
    check_family,
    check_unique_labels,
    erank_stats_from,
    image_stats,
    resolve_methods,
    scalar_json,
)
from prunelab.study.scoring import score_chair, score_pope
from prunelab.study.shard import check_cache, gather, per_item, sharding, table_reader
from prunelab.study.tablecache import RunCache, key as _key

CACHE_FORMAT = 2  # bump when the meaning of a cached column or the entry layout changes (2: checked entries)
TASKS = ("describe", "pope")
VANILLA = "Vanilla"
_VANILLA_NAMES = ("vanilla", "full", "none", "unpruned")
DEFAULT_MAX_NEW_TOKENS = {"describe": CHAIR_PROTOCOL_LIMIT, "pope": 8}  # OPERA/PAI CHAIR setting; POPE: one word
# Code whose change must invalidate cached generations (not the scorers: they run on every call).
_CODE_FILES = (
    "study/generation.py",
    "study/questions.py",
    "eval/metrics.py",
    "methods/*.py",
    "models/adapter.py",
    "models/parts.py",
    "models/decoder_edit.py",
    "models/tower.py",
    "models/loader.py",
    "models/hooks.py",
    "models/prompts.py",
    "models/toyllava.py",
    "models/qwen*.py",
    "models/llava_next.py",
    "models/next_loading.py",
    "models/processors.py",
)

#: Columns of every row, both tasks (POPE rows add :data:`POPE_QUESTION_COLUMNS`).
BASE_COLUMNS = [
    "image_set",
    "image_id",
    "complexity",
    "task",
    *RUN_COLUMNS,
    "equivalent_tokens",
    "prompt_len",
    "n_generated",
    "hit_max_new_tokens",
    "text",
    "erank_kept_vision",
    "erank_kept_projected",
    "attention_mass_kept",
    "erank_full_vision",
    "erank_full_projected",
    "attention_entropy",
    "attention_entropy_norm",
    "vision_s",
    "select_s",
    "prefill_s",
    "decode_s",
    "flops_vision",
    "flops_prefill",
    "flops_decode",
    "kept_indices",
    "method_stats",
]
POPE_QUESTION_COLUMNS = ["setting", "question_id", "question", "object", "label"]
_IMAGE_COLUMNS = [
    "n_tokens",
    "erank_full_vision",
    "erank_full_projected",
    "attention_entropy",
    "attention_entropy_norm",
]
#: Adapter record keys that become columns (the rest of the scalars go to method_stats): every column but the
#: entry's own keys, the image-level numbers and what the loop derives.
_RECORD_KEYS = set(BASE_COLUMNS) - set(_IMAGE_COLUMNS) - {
    "image_set", "image_id", "complexity", "task", "method", "family", "budget", "seed", "hit_max_new_tokens",
    "method_stats",
}  # fmt: skip
_RECORD_SKIP = {
    "sample",
    "image_id",
    "method",
    "budget",
    "params",
    "stage",
    "n_image_tokens",
    "order",
    "positions",
    "batch_size",
    "selection",
    "assemble_s",
    "prompt_len_unpruned",
    "visual_tokens_per_layer",
    "kv_len_per_layer",
}


# --------------------------------------------------------------------------------------------------------------
# Methods


def _is_vanilla(m) -> bool:
    return m is None or (isinstance(m, str) and m.strip().lower() in _VANILLA_NAMES)


def resolve_generation_methods(methods) -> list[MethodSpec]:
    """Method specs (labels unique): :func:`prunelab.study.runner.resolve_methods` items, plus ``None`` / ``"Vanilla"``
    / ``"full"`` for the unpruned model (label ``"Vanilla"``, family ``"base"``)."""
    if methods is None or isinstance(methods, (str, dict)) or not isinstance(methods, (list, tuple)):
        methods = [methods]
    specs: list[MethodSpec] = []
    for m in methods:
        if _is_vanilla(m):
            specs.append(MethodSpec(VANILLA, None))
        else:
            (s,) = resolve_methods([m])
            specs.append(s)
    return check_unique_labels(specs)


def spec_input_erank(ctx, spec: ErankStatsSpec) -> float:
    """The input erank of ``ctx`` with the options of a method's :meth:`~prunelab.methods.base.Pruner.erank_stats_spec`
    (what the consuming method computes)."""
    return float(
        input_erank(
            ctx.space(spec.features), center=spec.center, row_normalize=spec.row_normalize, spectrum=spec.spectrum
        )
    )


# --------------------------------------------------------------------------------------------------------------
# Cache helpers


def _entry_columns(task: str) -> list[str]:
    """The columns a cached entry of ``task`` must hold (one lacking any is generated again)."""
    return BASE_COLUMNS + (POPE_QUESTION_COLUMNS if task == "pope" else [])


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
    if isinstance(obj, (list, tuple)):
        return sum(_nbytes(v) for v in obj)
    return int(getattr(obj, "nbytes", 0))  # e.g. QwenImages


def _qk_layers_for(specs: list[MethodSpec], adapter) -> tuple[int, ...]:
    layers: set[int] = set()
    for s in specs:
        if s.pruner is not None and getattr(s.pruner, "stage", "pre_llm") != "in_llm":
            layers |= parse_requires(getattr(s.pruner, "requires", ()))[0]
    return tuple(sorted(layers))


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
    pope_prefix_cache: bool = False,
    describe_batch_size: int = 1,
    shard=None,
) -> pd.DataFrame:
    """Generate under every method x budget on every image of ``image_set`` and score the outputs.

    Parameters
    ----------
    model: ``"toyllava"``, an HF id / folder of a llava-hf checkpoint (LLaVA-1.5 or LLaVA-NeXT) or of
        Qwen2.5-VL, a :class:`GenerationModel` or a :class:`~prunelab.models.adapter.LlavaAdapter` (see the module
        docstring and :func:`~prunelab.models.loader.load_generation_model`).
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
    pope_prefix_cache: also prefill the questions' shared prefix (text before the image + kept visual rows) once
        and reuse its KV cache (``run_shared_image(prefix_cache=True)``): the same answers up to floating-point
        rounding, 3-6x faster on ToyLLaVA-S. Off by default, so the default tables stay bit for bit; part of the
        cache key when on.
    describe_batch_size: ``1`` (default, LLaVA-1.5's protocol): each description decoded alone. ``k > 1``: the
        descriptions of one image under all its method x budget selections are decoded ``k`` at a time with left
        padding (:meth:`~prunelab.models.adapter.LlavaAdapter.run_selections`: the tower runs once, prompts grouped
        by length with a stable sort). The batches then follow from the parameters (the method list, budgets and
        ``k``), so results stay deterministic, and an entry's key holds the image's whole selection list: another
        method list is another batch, hence another entry. In fp32 the texts equal batch-1 texts up to rounding
        (6 of 6 identical on ToyLLaVA-S, 4.4x faster at ``k = 8``; ``prunelab.benchmarks.describe_batching``).
    shard: images over ranks (:mod:`prunelab.study.shard`; ``None``: torchrun's env); every rank returns all rows.

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
    if isinstance(describe_batch_size, bool) or not isinstance(describe_batch_size, int) or describe_batch_size < 1:
        raise UnknownNameError(
            f"describe_batch_size must be a positive integer, got {describe_batch_size!r}; pass 1 (one by one) or e.g. 8"
        )
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise UnknownNameError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}; pass e.g. 512")
    if isinstance(image_set, str):
        check_image_set(image_set)
    shard, device = sharding(shard, device)  # this rank's images and GPU
    resolve_device(device)  # a missing CUDA device fails here, before any loading
    gm = as_generation_model(model, device)
    n_img = gm.n_image_tokens
    budgets = [check_budget(b, n_img) for b in budgets]
    set_name, items = _items_of(image_set, n, seed)
    adapter = gm.adapter
    check_family(getattr(adapter, "refusal", None), specs)  # before any image is encoded
    dev = adapter.device
    dtype = next(adapter.model.parameters()).dtype
    eos = getattr(gm.tokenizer, "eos_token_id", None)
    cache = RunCache(cache_dir, "generation", _CODE_FILES, CACHE_FORMAT, refresh)
    check_cache(shard, cache)
    code, vroot = cache.code, cache.root
    disable = bars_off(progress)
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
    decode = {
        "greedy": True,
        "num_beams": 1,
        "batch_size": int(describe_batch_size) if task == "describe" else int(pope_batch_size),
        "max_new_tokens": int(max_new_tokens),
        "device": dev.type,
        "dtype": str(dtype),
        "eos": eos,
    }
    if pope_prefix_cache and task == "pope":
        decode["prefix_cache"] = True  # only when on: the default keys (and cached entries) stay as they were
    base_key = [CACHE_FORMAT, gm.fingerprint, code, task, decode]

    # Pass 1: image-level statistics (tower once per image; cached), which also calibrate the erank statistics.
    need_specs = sorted(
        {s for sp in specs if sp.pruner is not None and (s := sp.pruner.erank_stats_spec()) is not None}
    )
    img_dir = vroot / "images" / _key([CACHE_FORMAT, gm.fingerprint, code, dev.type, str(dtype)])
    encodings: dict[str, tuple[torch.Tensor, dict, float]] = {}
    kept_bytes = 0  # tower outputs kept from pass 1 for pass 2, up to KEEP_ENCODINGS_BYTES (else re-encoded)

    def encode(it):
        pv = gm.pixels(it.image)
        enc, secs = adapter.encode_timed(pv, qk_layers)
        return pv, enc, secs

    def image_entry(it, enc) -> dict:
        ctx = adapter.context(enc, 0, image_id=it.id)
        st = image_stats(ctx)
        for sp in need_specs:
            st[sp.name] = spec_input_erank(ctx, sp)
        return st

    def ipath(it):
        return img_dir / f"{_key([it.source, it.id])}.json"

    def compute(batch):
        nonlocal kept_bytes
        (it,) = batch
        pv, enc, secs = encode(it)
        size = _nbytes(enc) + _nbytes(pv)
        if kept_bytes + size <= KEEP_ENCODINGS_BYTES:
            kept_bytes += size
            encodings[it.id] = (pv, enc, secs)
        else:
            it.release()
        return [image_entry(it, enc)]

    required, calibrate = _IMAGE_COLUMNS + [sp.name for sp in need_specs], bool(need_specs) and erank_stats is None
    per_image = per_item(shard, cache, items, ipath, compute, required, calibrate, disable=disable)

    stats_by_spec: dict[ErankStatsSpec, dict] = {}
    if need_specs:
        for sp in need_specs:
            stats_by_spec[sp] = (
                dict(erank_stats)
                if erank_stats is not None
                else erank_stats_from(per_image[it.id][sp.name] for it in items)
            )

    # Pass 2: generation entries (cached per image x method x budget).
    entries = []  # (item, spec, budget)
    for it in items:
        for sp in specs:
            for b in [n_img] if sp.pruner is None else budgets:
                entries.append((it, sp, b))
    batched = task == "describe" and describe_batch_size > 1
    # batched descriptions: the image's selection list fixes the batches, so it is part of every entry's key
    selections_key = [[sp.key(), b] for sp in specs for b in ([n_img] if sp.pruner is None else budgets)]

    def stats_for(sp):
        es = sp.pruner.erank_stats_spec() if sp.pruner is not None else None
        return stats_by_spec.get(es) if es else None

    def entry_path(it, sp, b):
        parts = base_key + [[it.source, it.id], sp.key(), b, stats_for(sp)]
        if task == "describe":
            parts.append(describe_ids)
            if batched:
                parts.append(selections_key)
        else:
            parts.append([[q.setting, q.question_id, q_ids[q.question], q.label] for q in questions[it.id]])
        return vroot / "entries" / f"{_key(parts)}.json"

    frames: dict[tuple, pd.DataFrame] = {}
    missing: dict[str, list] = {}
    paths_of: dict[str, list] = {}  # image id -> [(spec, budget, path)], every selection, in entries order
    for it, sp, b in entries:
        path = entry_path(it, sp, b)
        paths_of.setdefault(it.id, []).append((sp, b, path))
        cached = cache.read(path, _entry_columns(task))
        if cached is not None:
            frames[(it.id, sp.label, b)] = cached
        else:
            missing.setdefault(it.id, []).append((sp, b, path))

    def store(it, sp, b, path, rows_of, out, img, secs):
        """Write the entry of (image, selection) from the adapter output rows ``rows_of`` = ``[(question, k)]``."""
        rows = []
        for q, k in rows_of:
            rec = out.records[k]
            seq = out.sequences[k]
            text = out.texts[k] if out.texts is not None else " ".join(map(str, seq))
            row = {
                "image_set": set_name,
                "image_id": it.id,
                "complexity": it.complexity,
                "task": task,
                "method": sp.label,
                "family": sp.family,
                "budget": int(b),
                "seed": int(seed),
            }
            row.update({k: img[k] for k in _IMAGE_COLUMNS})
            row.update({k: rec.get(k, math.nan) for k in _RECORD_KEYS if k != "text"})
            row["text"] = text
            row["vision_s"] = secs
            row["kept_indices"] = [int(i) for i in rec.get("kept_indices", [])]
            row["hit_max_new_tokens"] = bool(len(seq) >= max_new_tokens and (eos is None or not seq or seq[-1] != eos))
            row["method_stats"] = scalar_json(rec, _RECORD_KEYS | _RECORD_SKIP)
            if sp.pruner is None:  # all N tokens: the kept set is the full set
                row.update(
                    erank_kept_vision=img["erank_full_vision"],
                    erank_kept_projected=img["erank_full_projected"],
                    attention_mass_kept=1.0,
                )
            if q is not None:
                row.update({c: getattr(q, c) for c in POPE_QUESTION_COLUMNS})
            rows.append(row)
        cols = BASE_COLUMNS + (POPE_QUESTION_COLUMNS if task == "pope" else [])
        frame = pd.DataFrame(rows, columns=cols)
        cache.write(frame, path)
        frames[(it.id, sp.label, b)] = frame

    n_todo = sum(len(missing.get(it.id, ())) for it in shard.mine(items))  # this rank's share
    with tqdm(total=n_todo, desc=f"generate [{task}]", unit="run", disable=disable or not n_todo) as bar:
        for it in shard.mine(items):
            if it.id not in missing:
                continue
            pv, enc, secs = encodings.pop(it.id, None) or encode(it)
            img = per_image[it.id]
            with adapter.reuse_encoding(pv, enc):
                if batched:  # every selection of the image, decoded together (see describe_batch_size)
                    todo = paths_of[it.id]
                    try:
                        out = adapter.run_selections(
                            torch.tensor(describe_ids),
                            pv,
                            [(sp.pruner, None if sp.pruner is None else b) for sp, b, _ in todo],
                            max_new_tokens=max_new_tokens,
                            batch_size=describe_batch_size,
                            erank_stats=[stats_for(sp) for sp, _, _ in todo],
                            image_id=it.id,
                            eos_token_id=eos,
                        )
                    except PrunelabError as err:
                        raise type(err)(f"describing image {it.id} under {len(todo)} selections: {err}") from None
                    for k, (sp, b, path) in enumerate(todo):
                        store(it, sp, b, path, [(None, k)], out, img, secs)
                    bar.update(len(missing[it.id]))
                else:
                    for sp, b, path in missing[it.id]:
                        prompts = (
                            [(None, describe_ids)]
                            if task == "describe"
                            else [(q, q_ids[q.question]) for q in questions[it.id]]
                        )
                        budget_arg = None if sp.pruner is None else b
                        try:
                            if task == "describe":
                                out = adapter.run(
                                    [torch.tensor(describe_ids)],
                                    pv,
                                    sp.pruner,
                                    budget_arg,
                                    max_new_tokens=max_new_tokens,
                                    erank_stats=stats_for(sp),
                                    image_ids=[it.id],
                                    eos_token_id=eos,
                                )
                            else:  # one selection for all of the image's questions, decoded together
                                out = adapter.run_shared_image(
                                    [torch.tensor(ids) for _, ids in prompts],
                                    pv,
                                    sp.pruner,
                                    budget_arg,
                                    max_new_tokens=max_new_tokens,
                                    batch_size=pope_batch_size,
                                    erank_stats=stats_for(sp),
                                    image_id=it.id,
                                    eos_token_id=eos,
                                    prefix_cache=bool(pope_prefix_cache),
                                )
                        except PrunelabError as err:
                            raise type(err)(f"{sp.label} at T={b} on image {it.id}: {err}") from None
                        store(it, sp, b, path, [(q, k) for k, (q, _) in enumerate(prompts)], out, img, secs)
                        bar.update(1)
            it.release()

    rest = {(it.id, sp.label, b): entry_path(it, sp, b) for it, sp, b in entries if (it.id, sp.label, b) not in frames}
    frames.update(gather(shard, rest, table_reader(_entry_columns(task)), "generation"))  # the other ranks' entries
    cols = BASE_COLUMNS + (POPE_QUESTION_COLUMNS if task == "pope" else [])
    parts = [frames[(it.id, sp.label, b)] for it, sp, b in entries]
    parts = [p for p in parts if len(p)]
    df = pd.concat(parts, ignore_index=True)[cols] if parts else pd.DataFrame(columns=cols)
    df["seed"] = int(seed)  # rows read from the cache keep this call's seed (it never changes generated text)
    df = _normalize(df)
    attrs = dict(
        model=gm.fingerprint,
        model_name=gm.name,
        prompt_format=gm.prompt_format,
        task=task,
        max_new_tokens=int(max_new_tokens),
        image_set=set_name,
        erank_stats={k.name: v for k, v in stats_by_spec.items()},
    )
    if task == "describe":
        df, config = score_chair(df, gt, parser=chair_parser)
        attrs.update(prompt=prompt, chair_config=config)
    else:
        df = score_pope(df)
    df.attrs.update(attrs)
    return df


__all__ = [
    "TASKS",
    "VANILLA",
    "BASE_COLUMNS",
    "POPE_QUESTION_COLUMNS",
    "resolve_generation_methods",
    "spec_input_erank",
    "ground_truth_for",
    "Question",
    "pope_questions_for",
    "run_generation",
]

"""Loading a model for the study: which folder a model name means, its weights checked before anything loads, and
the :class:`GenerationModel` (adapter + prompt format + image preprocessing + fingerprint) the study loop runs.

Model names: an embedded ToyLLaVA variant (:data:`EMBEDDED_MODELS`, weights under ``data/models/``), a local folder
of a llava-hf checkpoint, or an HF id already in the local cache; nothing is ever downloaded and no pickle is ever
loaded (:func:`check_weights` reads safetensors headers). Prompts: ToyLLaVA's own chat format for the embedded
model (no system prompt: it was trained without one); the LLaVA-1.5 protocol (Vicuna system message, images padded
to square when the processor can, LLaVA's short-answer suffix for POPE) for llava-hf checkpoints. A folder whose
``config.json`` says ``model_type`` ``qwen2_5_vl`` or ``llava_next`` loads through
:mod:`prunelab.models.qwen_loading` / :mod:`prunelab.models.next_loading` (each family's processor and prompt).
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from prunelab.device import resolve_device
from prunelab.errors import AssetError, CapabilityError, UnknownNameError
from prunelab.models.adapter import LlavaAdapter
from prunelab.models.prompts import VICUNA_SYSTEM, build_prompt, tokenize_with_image
from prunelab.models.toyllava import CHAT_TEMPLATE, load_toyllava, prompt_ids
from prunelab.toyworld import text as tt

EMBEDDED_MODELS = ("toyllava", "toyllava-subset")
#: Embedded models packaged as deltas over an installed base model (assembled at load time).
DELTA_MODELS = ("toyllava-s",)
PROMPT_FORMATS = ("toyllava", "chatml", "llava_v1", "hf_chat", "qwen_chatml", "processor_chat")
#: LLaVA-1.5's POPE instruction suffix (``haotian-liu/LLaVA`` ``playground/data/eval/pope/llava_pope_test.jsonl``).
LLAVA_SHORT_ANSWER = "Answer the question using a single word or phrase."


def _key(obj) -> str:
    # the same digest as prunelab.study.tablecache.key, so fingerprints (cache keys) are unchanged
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:24]


# --------------------------------------------------------------------------------------------------------------
# Model folders


def _looks_like_path(model: str) -> bool:
    """True when ``model`` cannot be a Hugging Face repo id (``name`` or ``org/name``), so it must be a folder."""
    if model.startswith(("/", "~", ".")) or "\\" in model or model.endswith("/") or model.count("/") > 1:
        return True
    try:
        from huggingface_hub.utils import HFValidationError, validate_repo_id
    except ImportError:  # pragma: no cover - huggingface_hub comes with transformers
        return False
    try:
        validate_repo_id(model)
    except HFValidationError:
        return True
    return False


def _check_safetensors(path: Path) -> None:
    """Read the header of one safetensors file (the 8-byte length, the JSON table, the data extent) without
    loading tensors, so a truncated or overwritten file fails here with its name rather than deep in a loader.
    Format: https://github.com/huggingface/safetensors (README, "Format")."""
    size = path.stat().st_size
    problem = None
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            problem = f"{size} bytes, shorter than a safetensors header"
        else:
            (n,) = struct.unpack("<Q", head)
            if n > size - 8:
                problem = f"header length {n} exceeds the file size {size}"
            else:
                try:
                    table = json.loads(fh.read(n))
                    ends = [int(v["data_offsets"][1]) for k, v in table.items() if k != "__metadata__"]
                except (ValueError, KeyError, TypeError, IndexError, AttributeError):
                    problem = "unreadable header"
                else:
                    if max(ends, default=0) > size - 8 - n:
                        problem = f"tensor data ends at byte {8 + n + max(ends)} but the file has {size} (truncated)"
    if problem:
        raise AssetError(f"model weights {path} are corrupt ({problem}); copy the checkpoint's weight files again")


_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def check_weights(folder: str | os.PathLike) -> Path:
    """The folder, once its weights are found loadable: ``*.safetensors`` files with sound headers (all shards an
    index names). Pickle-only checkpoints (``pytorch_model.bin``) are refused: unpickling runs code (guide:
    "safetensors and from_pretrained only"), so they have to be converted once on a trusted machine."""
    folder = Path(folder)
    files = sorted(folder.glob("*.safetensors"))
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError):
            raise AssetError(f"weight index {index} is unreadable; copy the checkpoint's files again") from None
        missing = [s for s in shards if not (folder / s).is_file()]
        if missing:
            raise AssetError(
                f"model folder {folder} lacks {len(missing)} weight shard(s) its index names "
                f"({', '.join(missing[:3])}); copy the missing files"
            )
    if not files:
        pickles = sorted(p.name for p in folder.iterdir() if p.suffix in _PICKLE_SUFFIXES) if folder.is_dir() else []
        if pickles:
            raise AssetError(
                f"model folder {folder} holds only pickle weights ({', '.join(pickles[:3])}), which prunelab never "
                "loads (unpickling can run code); convert them once on a machine you trust, e.g. "
                "LlavaForConditionalGeneration.from_pretrained(folder).save_pretrained(out, safe_serialization=True), "
                "and pass the new folder"
            )
        raise AssetError(
            f"model folder {folder} has no *.safetensors weights; copy the checkpoint's weight files there"
        )
    for f in files:
        _check_safetensors(f)
    return folder


def check_model(model: str) -> Path:
    """The folder of ``model``: an embedded ToyLLaVA variant, a local folder, or an HF id already in the local
    HF cache, after :func:`check_weights`. Raises :class:`AssetError` (with the fix) when its weights are not on
    this machine or cannot be read."""
    if not isinstance(model, (str, os.PathLike)) or not str(model).strip():
        raise UnknownNameError(f"model must be a name such as 'toyllava' or 'llava-hf/llava-1.5-7b-hf', got {model!r}")
    model = str(model)
    if model in DELTA_MODELS:
        from prunelab.models import toyllava_s

        d = toyllava_s.default_dir()
        if not (d / toyllava_s.DELTAS_FILE).exists():
            raise AssetError(f"{model!r} has no deltas at {d}; check out data/models/ or run `make toy-model-s`")
        return d
    if model in EMBEDDED_MODELS:
        from prunelab.models.toyllava import default_dir

        d = default_dir(model)
        if not (d / "config.json").exists() or not (d / "model.safetensors").exists():
            raise AssetError(
                f"the embedded model {model!r} has no weights at {d}; run `make toy-model` (or check out data/models/)"
            )
        return check_weights(d)
    p = Path(model).expanduser()
    if p.exists():
        if not p.is_dir() or not (p / "config.json").exists():
            raise AssetError(
                f"model folder {p} has no config.json; point model= at a LlavaForConditionalGeneration folder"
            )
        return check_weights(p)
    if _looks_like_path(model):
        raise AssetError(
            f"model folder {p} does not exist; check the path (or pass a cached HF id such as "
            "'llava-hf/llava-1.5-7b-hf')"
        )
    try:
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(model, local_files_only=True, allow_patterns=["config.json"]))
    except Exception:  # not cached / not a valid id: the same fix either way
        raise AssetError(
            f"model {model!r} is neither an embedded model ({', '.join(EMBEDDED_MODELS)}), a local folder, nor in the "
            "local Hugging Face cache; download it on a machine with internet (huggingface-cli download "
            f"{model}) and copy the cache, or pass the folder path"
        ) from None
    return check_weights(folder)


#: New tokens of a description under the OPERA / PAI CHAIR protocol (any model but the embedded ones).
CHAIR_PROTOCOL_LIMIT = 512


def description_limit(model, model_path=None) -> int:
    """The default ``max_new_tokens`` of a description for ``model``: an embedded ToyLLaVA's own evaluation limit
    (read from its folder, :func:`prunelab.models.toyllava.generation_limit`: 144), ToyLLaVA-S's
    (:data:`prunelab.models.toyllava_s.GENERATION_LIMIT`: 96), else :data:`CHAIR_PROTOCOL_LIMIT`."""
    from prunelab.models import toyllava, toyllava_s

    if str(model) in DELTA_MODELS:
        return toyllava_s.GENERATION_LIMIT
    if str(model) in EMBEDDED_MODELS:
        return toyllava.generation_limit(model_path)
    return CHAIR_PROTOCOL_LIMIT


def is_toy_model(model) -> bool:
    """Whether ``model`` names ToyLLaVA: an embedded variant, or a folder whose ``config.json`` carries ToyLLaVA's
    vocabulary digest (what ``python -m prunelab.train.toyllava train --out`` writes). Never raises."""
    if not isinstance(model, (str, os.PathLike)):
        return False
    if str(model) in EMBEDDED_MODELS:
        return True
    try:
        cfg = json.loads((Path(model).expanduser() / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(cfg, dict) and cfg.get("toyllava_vocab_digest") is not None


def check_toy_model(model) -> None:
    """Refuse a model that is not ToyLLaVA, for the chapter that describes ToyLLaVA itself."""
    if not is_toy_model(model):
        raise UnknownNameError(
            f"model={model!r} is not ToyLLaVA; this chapter describes the embedded toy model only, pass model="
            f"{EMBEDDED_MODELS[0]!r} or a folder written by `python -m prunelab.train.toyllava train --out` "
            "(the build skips it for other models)"
        )


# --------------------------------------------------------------------------------------------------------------
# Models


@dataclass
class GenerationModel:
    """A LLaVA model ready for :func:`run_generation`: adapter, prompt format, image preprocessing, fingerprint.

    ``prompt_format``: ``"toyllava"`` (ToyLLaVA's chat template, no system prompt), ``"chatml"`` (ToyLLaVA-S:
    SmolLM2's ChatML with its system turn, as trained), ``"llava_v1"`` (Vicuna system message +
    ``USER: <image>\\n... ASSISTANT:``), ``"hf_chat"`` (llava-hf chat format, no system prompt) or
    ``"qwen_chatml"`` (Qwen2.5-VL's own chat prompt, :mod:`prunelab.models.qwen_loading`) or ``"processor_chat"``
    (the chat template a LLaVA-NeXT folder's processor ships, :mod:`prunelab.models.next_loading`).
    ``pixels``: ``callable(PIL image) -> (1, 3, H, W)`` tensor (Qwen2.5-VL: a
    :class:`~prunelab.models.qwen2_5_vl.QwenImages`; LLaVA-NeXT: a
    :class:`~prunelab.models.llava_next.NextImages`). ``name``: what the model was loaded from. ``probe_size``: the
    side of the blank image whose token count is :attr:`n_image_tokens`.
    """

    adapter: Any
    prompt_format: str
    pixels: Callable[[Any], torch.Tensor]
    name: str = "model"
    describe_prompt: str = "Please describe this image in detail."
    probe_size: int = 32
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

            pv = self.pixels(Image.new("RGB", (self.probe_size, self.probe_size)))
            self._n_tokens = int(self.adapter.tokens_for(pv))
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
            self._fingerprint = _key(
                [
                    model_fingerprint(self.adapter.model),
                    hashlib.sha256(cfg.encode()).hexdigest(),
                    vocab,
                    self.prompt_format,
                    getattr(self.pixels, "key", repr(self.pixels)),
                ]
            )
        return self._fingerprint

    def prompt_ids(self, question: str) -> list[int]:
        """Prompt token ids with one ``<image>`` id (the adapter expands it to the N image tokens)."""
        tok = self.tokenizer
        if tok is None:
            raise CapabilityError(
                "the model has no tokenizer; pass LlavaAdapter(model, processor=...) or tokenizer=..."
            )
        if self.prompt_format == "toyllava":
            return list(prompt_ids(tok, question))
        if self.prompt_format == "chatml":
            from prunelab.models import toyllava_s

            return toyllava_s.prompt_ids(tok, question)
        if self.prompt_format == "qwen_chatml":
            from prunelab.models import qwen_loading

            return qwen_loading.prompt_ids(tok, question, self.adapter.parts.image_token_id)
        if self.prompt_format == "processor_chat":
            from prunelab.models import next_loading

            return next_loading.prompt_ids(self.adapter, question)
        system = VICUNA_SYSTEM if self.prompt_format == "llava_v1" else None
        prompt = build_prompt(question, self.prompt_format, system)
        return tokenize_with_image(tok, prompt, self.adapter.parts.image_token_id, 1)

    def question_prompt(self, question: str) -> str:
        """The instruction for a POPE question: LLaVA-1.5 appends its short-answer suffix; ToyLLaVA was trained on
        the bare question."""
        return question if self.prompt_format in ("toyllava", "chatml") else f"{question}\n{LLAVA_SHORT_ANSWER}"


class _Pixels:
    """Image preprocessing as a picklable callable with a cache key (processor class + config)."""

    def __init__(self, image_processor=None, size: int | None = None, pad: bool = False):
        self.ip = image_processor
        self.size = size
        self.pad = bool(pad and image_processor is not None and hasattr(image_processor, "do_pad"))
        if image_processor is not None:
            conf = (
                image_processor.to_json_string()
                if hasattr(image_processor, "to_json_string")
                else repr(image_processor)
            )
            self.key = (
                f"{type(image_processor).__name__}:{hashlib.sha256(conf.encode()).hexdigest()[:12]}:pad={self.pad}"
            )
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
        from prunelab.models import toyllava_s

        toy = _is_toyllava_config(adapter.model.config) or getattr(tok, "chat_template", None) == CHAT_TEMPLATE
        chatml = getattr(tok, "chat_template", None) == toyllava_s.CHAT_TEMPLATE
        prompt_format = "toyllava" if toy else "chatml" if chatml else "llava_v1"
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
            raise AssetError(
                f"model weights {f} cannot be read ({str(err).splitlines()[0][:120]}); copy the "
                "checkpoint's weight files again"
            ) from None
    return False


def _model_type(folder: Path) -> str | None:
    """``model_type`` of the folder's ``config.json`` (``None`` when unreadable: the LLaVA path reports it)."""
    try:
        cfg = json.loads((Path(folder) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return cfg.get("model_type") if isinstance(cfg, dict) else None


def load_generation_model(model: str = "toyllava", device: str = "auto", dtype=None) -> GenerationModel:
    """Load ``model`` (see the module docstring) onto ``device`` for :func:`run_generation`.

    Errors are one line: unknown name or weights not on this machine (:class:`AssetError`, with the fix), a
    CUDA device asked for but absent (:class:`DeviceError`). Nothing is downloaded.
    """
    dev = resolve_device(device)
    if str(model) in DELTA_MODELS:  # ToyLLaVA-S: deltas over SmolLM2, trained on the toy world's prompts
        from prunelab.models import toyllava_s

        net, processor = toyllava_s.load_toyllava_s(check_model(model), dtype=dtype or torch.float32)
        gm = from_adapter(LlavaAdapter(net, processor=processor, device=dev), "chatml", name=str(model))
        gm.describe_prompt = tt.DESCRIBE_PROMPT
        return gm
    folder = check_model(model)
    if _model_type(folder) == "qwen2_5_vl":
        from prunelab.models import qwen_loading

        adapter, pixels = qwen_loading.load_qwen(folder, dev, dtype)
        return GenerationModel(adapter, "qwen_chatml", pixels, name=str(model), probe_size=qwen_loading.PROBE_SIZE)
    if _model_type(folder) == "llava_next":
        from prunelab.models import next_loading

        adapter, pixels, fmt = next_loading.load_llava_next(folder, dev, dtype)
        return GenerationModel(adapter, fmt, pixels, name=str(model), probe_size=next_loading.PROBE_SIZE)
    if dtype is None:
        dtype = torch.float16 if dev.type == "cuda" and model not in EMBEDDED_MODELS else torch.float32
    import transformers
    from transformers import LlavaConfig

    try:
        cfg = LlavaConfig.from_pretrained(str(folder))
    except (OSError, ValueError) as err:
        raise AssetError(
            f"cannot read a LLaVA config from {folder} ({str(err).splitlines()[0][:120]}); pass a "
            "LlavaForConditionalGeneration folder or HF id"
        ) from None
    if model in EMBEDDED_MODELS or (_is_toyllava_config(cfg) and not _has_tower_weights(folder)):
        net, processor = load_toyllava(folder, device="cpu", dtype=dtype)
        fmt = "toyllava"
    else:
        from safetensors import SafetensorError

        try:  # use_safetensors: never fall back to unpickling a .bin (check_model has refused pickle-only folders)
            net = transformers.LlavaForConditionalGeneration.from_pretrained(
                str(folder), dtype=dtype, use_safetensors=True
            )
            processor = transformers.AutoProcessor.from_pretrained(str(folder))
        except (OSError, ValueError, SafetensorError) as err:
            raise AssetError(
                f"cannot load the LLaVA model in {folder} ({str(err).splitlines()[0][:120]}); check that "
                "the folder holds config, weights, tokenizer and processor files"
            ) from None
        fmt = "toyllava" if _is_toyllava_config(cfg) else "llava_v1"
    adapter = LlavaAdapter(net, processor=processor, device=dev)
    gm = from_adapter(adapter, fmt, name=str(model))
    if fmt == "toyllava":
        gm.describe_prompt = tt.DESCRIBE_PROMPT  # the toy world's prompt, which the model was trained on
    return gm


def as_generation_model(model, device) -> GenerationModel:
    if isinstance(model, GenerationModel):
        return model
    if isinstance(model, LlavaAdapter):
        return from_adapter(model)
    if isinstance(model, (str, Path)):
        return load_generation_model(str(model), device=device)
    raise UnknownNameError(
        f"model must be a name such as 'toyllava', an HF id or folder, a GenerationModel or a "
        f"LlavaAdapter, got {type(model).__name__}"
    )


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


__all__ = [
    "EMBEDDED_MODELS",
    "description_limit",
    "CHAIR_PROTOCOL_LIMIT",
    "DELTA_MODELS",
    "PROMPT_FORMATS",
    "LLAVA_SHORT_ANSWER",
    "check_weights",
    "check_model",
    "is_toy_model",
    "check_toy_model",
    "GenerationModel",
    "from_adapter",
    "load_generation_model",
    "as_generation_model",
    "model_fingerprint",
]

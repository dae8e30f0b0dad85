"""Image processors of the families :func:`prunelab.models.loader.load_generation_model` loads by ``model_type``
(Qwen2.5-VL, LLaVA-NeXT): the PIL backend read from a folder, and the picklable ``PIL image -> images object``
callable with a cache key that a :class:`~prunelab.models.loader.GenerationModel` holds as ``pixels``.

transformers 5.x names the PIL/numpy backend ``<Name>Pil``; its default backend needs torchvision, which prunelab
does not install. In 4.x the slow processor is the default class under ``<Name>``.
"""

from __future__ import annotations

import hashlib
import importlib
from pathlib import Path

__all__ = ["pil_image_processor", "ProcessorPixels"]


def pil_image_processor(folder: Path, name: str):
    """``transformers.<name>Pil`` (else ``<name>``) loaded from ``folder``'s preprocessor config, local files only."""
    import transformers

    cls = getattr(transformers, f"{name}Pil", None) or getattr(transformers, name)
    return cls.from_pretrained(str(folder), local_files_only=True)


class ProcessorPixels:
    """PIL image -> ``images_class(out[keys[0]], out[keys[1]])`` of the processor's output for that one image, with
    a cache key naming the processor class and its config. ``images_class`` is ``"module:Class"`` (imported on
    use, so the callable pickles without the family's modules)."""

    def __init__(self, image_processor, images_class: str, keys: tuple[str, str]):
        self.ip = image_processor
        self.images_class = images_class
        self.keys = tuple(keys)
        conf = image_processor.to_json_string()
        self.key = f"{type(image_processor).__name__}:{hashlib.sha256(conf.encode()).hexdigest()[:12]}"

    def __call__(self, image):
        mod, name = self.images_class.split(":")
        cls = getattr(importlib.import_module(mod), name)
        out = self.ip(images=[image.convert("RGB")], return_tensors="pt")
        return cls(out[self.keys[0]], out[self.keys[1]])


def load_family(folder, device, dtype, model_class: str, image_processor: str, what: str, then=None):
    """``(model, tokenizer, image processor, then(...))`` of the checkpoint in ``folder`` (weights already checked
    by :func:`prunelab.models.loader.check_model`): ``transformers.<model_class>`` from safetensors only (never
    unpickling a .bin), in fp16 on CUDA and fp32 on the CPU unless ``dtype`` is given, and the PIL
    ``image_processor``; ``then(folder, image_processor, tokenizer)`` builds anything more from them (``None``
    without it). A folder that does not load fails in one line naming ``what`` (the family's name)."""
    import torch
    import transformers
    from safetensors import SafetensorError

    from prunelab.errors import AssetError

    folder = Path(folder)
    if dtype is None:
        dtype = torch.float16 if device.type == "cuda" else torch.float32
    try:
        net = getattr(transformers, model_class).from_pretrained(
            str(folder), dtype=dtype, use_safetensors=True, local_files_only=True
        )
        tok = transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        ip = pil_image_processor(folder, image_processor)
        more = then(folder, ip, tok) if then is not None else None
    except (OSError, ValueError, SafetensorError) as err:
        raise AssetError(
            f"cannot load the {what} model in {folder} ({str(err).splitlines()[0][:120]}); check that the "
            "folder holds config, weights, tokenizer and the image processor config"
        ) from None
    return net, tok, ip, more

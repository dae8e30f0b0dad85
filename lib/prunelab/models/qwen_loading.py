"""What :func:`prunelab.models.loader.load_generation_model` needs of a Qwen2.5-VL folder (issue #14): the PIL image
processor, Qwen's own ChatML prompt and the :class:`~prunelab.models.qwen2_5_vl.QwenVLAdapter`.

* Image processor: ``Qwen2VLImageProcessorPil`` (transformers 5.x's PIL/numpy backend; the default backend needs
  torchvision, which prunelab does not install), read from the folder's ``preprocessor_config.json``, so the
  folder's ``min_pixels`` / ``max_pixels`` (``size.shortest_edge`` / ``size.longest_edge``) decide how
  ``smart_resize`` scales an image, hence how many visual tokens it gets.
* Prompt (``prompt_format="qwen_chatml"``): the chat template Qwen2.5-VL-Instruct ships
  (``chat_template.json`` of ``Qwen/Qwen2.5-VL-7B-Instruct``), written out for one image and one user turn::

      <|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n<|im_start|>user\\n
      <|vision_start|><|image_pad|><|vision_end|>{question}<|im_end|>\\n<|im_start|>assistant\\n

  with one ``<|image_pad|>`` id that the adapter expands to the image's N tokens. POPE questions get LLaVA-1.5's
  short-answer suffix, as for llava-hf checkpoints (:meth:`GenerationModel.question_prompt`).
* ``GenerationModel.n_image_tokens`` is the count of a 336 x 336 image (the toy world's size, :data:`PROBE_SIZE`);
  Qwen's count follows each image's size, and the adapter checks every budget against the image it prunes.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from prunelab.errors import AssetError, CapabilityError

__all__ = ["QWEN_SYSTEM", "PROBE_SIZE", "QwenPixels", "prompt_text", "prompt_ids", "load_qwen"]

QWEN_SYSTEM = "You are a helpful assistant."
PROBE_SIZE = 336
IMAGE_RUN = "<|vision_start|><|image_pad|><|vision_end|>"


def prompt_text(question: str, system: str = QWEN_SYSTEM) -> str:
    """Qwen2.5-VL's chat prompt for one image and one user turn, ready for the assistant's answer."""
    return (
        f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{IMAGE_RUN}{question}<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def prompt_ids(tokenizer, question: str, image_token_id: int) -> list[int]:
    """Token ids of :func:`prompt_text` with exactly one image id (no BOS: Qwen's tokenizer adds none)."""
    ids = list(tokenizer(prompt_text(question), add_special_tokens=False)["input_ids"])
    if ids.count(int(image_token_id)) != 1:
        raise CapabilityError(
            f"the tokenizer turns '<|image_pad|>' into {ids.count(int(image_token_id))} image ids (id "
            f"{image_token_id}), not one; pass the tokenizer saved with the Qwen2.5-VL checkpoint"
        )
    return ids


class QwenPixels:
    """Image preprocessing as a picklable callable with a cache key: PIL image -> :class:`QwenImages`."""

    def __init__(self, image_processor):
        self.ip = image_processor
        conf = image_processor.to_json_string()
        self.key = f"{type(image_processor).__name__}:{hashlib.sha256(conf.encode()).hexdigest()[:12]}"

    def __call__(self, image):
        from prunelab.models.qwen2_5_vl import QwenImages

        out = self.ip(images=[image.convert("RGB")], return_tensors="pt")
        return QwenImages(out["pixel_values"], out["image_grid_thw"])


def _pil_image_processor(folder: Path):
    try:  # transformers >= 5: the PIL backend by name (the default one needs torchvision)
        from transformers import Qwen2VLImageProcessorPil as ImageProcessor
    except ImportError:  # pragma: no cover - 4.x, where the slow processor is the default class
        from transformers import Qwen2VLImageProcessor as ImageProcessor
    return ImageProcessor.from_pretrained(str(folder), local_files_only=True)


def load_qwen(folder, device, dtype=None):
    """``(adapter, pixels)`` of the Qwen2.5-VL checkpoint in ``folder`` (weights already checked by
    :func:`prunelab.models.loader.check_model`; ``load_generation_model`` wraps the pair in a ``GenerationModel``):
    fp16 on CUDA, fp32 on the CPU unless ``dtype`` is given."""
    import transformers
    from safetensors import SafetensorError

    from prunelab.models.qwen2_5_vl import QwenVLAdapter

    folder = Path(folder)
    if dtype is None:
        dtype = torch.float16 if device.type == "cuda" else torch.float32
    try:  # use_safetensors: never fall back to unpickling a .bin
        net = transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(
            str(folder), dtype=dtype, use_safetensors=True, local_files_only=True
        )
        tok = transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        ip = _pil_image_processor(folder)
    except (OSError, ValueError, SafetensorError) as err:
        raise AssetError(
            f"cannot load the Qwen2.5-VL model in {folder} ({str(err).splitlines()[0][:120]}); check that the "
            "folder holds config, weights, tokenizer and preprocessor_config.json"
        ) from None
    # The adapter holds the image processor itself: transformers' Qwen2_5_VLProcessor wrapper insists on a video
    # processor, whose classes need torchvision.
    return QwenVLAdapter(net, processor=ip, tokenizer=tok, device=device), QwenPixels(ip)

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

from prunelab.errors import CapabilityError
from prunelab.models.processors import ProcessorPixels, load_family

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


def QwenPixels(image_processor) -> ProcessorPixels:
    """Image preprocessing as a picklable callable with a cache key: PIL image -> a :class:`QwenImages`."""
    return ProcessorPixels(image_processor, "prunelab.models.qwen2_5_vl:QwenImages", ("pixel_values", "image_grid_thw"))


def load_qwen(folder, device, dtype=None):
    """``(adapter, pixels)`` of the Qwen2.5-VL checkpoint in ``folder`` (weights already checked by
    :func:`prunelab.models.loader.check_model`; ``load_generation_model`` wraps the pair in a ``GenerationModel``):
    fp16 on CUDA, fp32 on the CPU unless ``dtype`` is given."""
    from prunelab.models.qwen2_5_vl import QwenVLAdapter

    net, tok, ip, _ = load_family(
        folder, device, dtype, "Qwen2_5_VLForConditionalGeneration", "Qwen2VLImageProcessor", "Qwen2.5-VL"
    )
    # The adapter holds the image processor itself: transformers' Qwen2_5_VLProcessor wrapper insists on a video
    # processor, whose classes need torchvision.
    return QwenVLAdapter(net, processor=ip, tokenizer=tok, device=device), QwenPixels(ip)

"""What :func:`prunelab.models.loader.load_generation_model` needs of a LLaVA-NeXT folder (issue #14): the PIL image
processor with ``image_sizes``, the prompt format and the :class:`~prunelab.models.llava_next.LlavaNextAdapter`.

* Image processor: ``LlavaNextImageProcessorPil`` (transformers 5.x's PIL/numpy backend; the default backend needs
  torchvision, which prunelab does not install), read from the folder, so the folder's ``image_grid_pinpoints`` and
  tile size decide the tiles. Its ``pixel_values`` and ``image_sizes`` travel together as a
  :class:`~prunelab.models.llava_next.NextImages`. No ``do_pad`` here: anyres keeps the aspect ratio itself.
* Prompt: the chat template the folder's processor ships (llava-hf's llava-v1.6 checkpoints carry one: Vicuna's
  ``USER: <image>\\n... ASSISTANT:`` or Mistral's ``[INST] <image>\\n... [/INST]``), rendered for one user turn with
  one image (``prompt_format="processor_chat"``); a folder without one gets LLaVA-1.5's ``vicuna_v1`` prompt
  (``"llava_v1"``, :mod:`prunelab.models.prompts`). POPE questions get LLaVA-1.5's short-answer suffix, as for
  llava-hf checkpoints (:meth:`GenerationModel.question_prompt`).
* ``GenerationModel.n_image_tokens`` is the count of a 336 x 336 image (the toy world's size, :data:`PROBE_SIZE`),
  newlines not counted; other sizes get other tile grids, and the adapter checks every budget against the image it
  prunes.
"""

from __future__ import annotations

from prunelab.models.processors import ProcessorPixels, load_family
from prunelab.models.prompts import IMAGE_PLACEHOLDER, tokenize_with_image

__all__ = ["PROBE_SIZE", "NextPixels", "prompt_ids", "load_llava_next"]

PROBE_SIZE = 336


def prompt_ids(adapter, question: str) -> list[int]:
    """Token ids of the processor's chat template for one image and ``question``, with one ``<image>`` id (the
    adapter expands it to the packed run). A template that writes the BOS text itself is tokenized without a
    second BOS."""
    conv = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    text = adapter.processor.apply_chat_template(conv, add_generation_prompt=True, tokenize=False)
    tok = adapter.tokenizer
    bos = getattr(tok, "bos_token", None)
    if bos and text.startswith(bos):
        text = text[len(bos) :].lstrip()  # tokenize_with_image adds the tokenizer's own BOS
    token = getattr(adapter.processor, "image_token", None) or IMAGE_PLACEHOLDER
    return tokenize_with_image(tok, text.replace(token, IMAGE_PLACEHOLDER), adapter.parts.image_token_id, 1)


def NextPixels(image_processor) -> ProcessorPixels:
    """Image preprocessing as a picklable callable with a cache key: PIL image -> a :class:`NextImages` of one."""
    return ProcessorPixels(image_processor, "prunelab.models.llava_next:NextImages", ("pixel_values", "image_sizes"))


def _processor(folder, ip, tok):
    """The processor wrapper, for its chat template, built from the PIL image processor (never the fast one)."""
    from transformers import LlavaNextProcessor

    return LlavaNextProcessor.from_pretrained(str(folder), image_processor=ip, tokenizer=tok, local_files_only=True)


def load_llava_next(folder, device, dtype=None):
    """``(adapter, pixels, prompt_format)`` of the LLaVA-NeXT checkpoint in ``folder`` (weights already checked by
    :func:`prunelab.models.loader.check_model`): fp16 on CUDA, fp32 on the CPU unless ``dtype`` is given."""
    from prunelab.models.llava_next import LlavaNextAdapter

    net, _tok, ip, processor = load_family(
        folder, device, dtype, "LlavaNextForConditionalGeneration", "LlavaNextImageProcessor", "LLaVA-NeXT", _processor
    )
    fmt = "processor_chat" if getattr(processor, "chat_template", None) else "llava_v1"
    return LlavaNextAdapter(net, processor=processor, device=device), NextPixels(ip), fmt

"""Prompts and decoding settings of the LLaVA-1.5 evaluation protocol (methods-spec §3.3, §4.6).

LLaVA-1.5 evaluates with conversation template ``vicuna_v1`` (``llava/conversation.py`` in
``haotian-liu/LLaVA``; used by ``llava/eval/model_vqa_loader.py``): the Vicuna system message, then
``USER: <image>\\n{question} ASSISTANT:`` with a single space as separator. The llava-hf chat template drops the
system message (``USER: <image>\\n... ASSISTANT:``), which moves the image from index 35 to index 5 — the adapter
finds image tokens by id, so both work, but only the first is the protocol the published numbers used.
Decoding: greedy (``do_sample=False``, ``num_beams=1``), batch 1; CHAIR uses ``max_new_tokens=512`` (OPERA/PAI).
"""

from __future__ import annotations

from dataclasses import dataclass

from prunelab.errors import UnknownNameError

VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
IMAGE_PLACEHOLDER = "<image>"
CHAIR_PROMPT = "Please describe this image in detail."
TEMPLATES = ("llava_v1", "hf_chat")


def build_prompt(question: str, template: str = "llava_v1", system: str | None = VICUNA_SYSTEM) -> str:
    """The text prompt with one ``<image>`` placeholder.

    ``template="llava_v1"``: ``"{system} USER: <image>\\n{question} ASSISTANT:"`` (LLaVA-1.5 evaluation).
    ``template="hf_chat"``: ``"USER: <image>\\n{question} ASSISTANT:"`` (llava-hf model card; ToyLLaVA's chat
    template), ``system`` ignored.
    """
    q = question.strip()
    if template == "llava_v1":
        head = f"{system} " if system else ""
        return f"{head}USER: {IMAGE_PLACEHOLDER}\n{q} ASSISTANT:"
    if template == "hf_chat":
        return f"USER: {IMAGE_PLACEHOLDER}\n{q} ASSISTANT:"
    raise UnknownNameError(f"unknown prompt template {template!r}; known: {', '.join(TEMPLATES)}")


def tokenize_with_image(tokenizer, prompt: str, image_token_id: int, n_image_tokens: int = 1) -> list[int]:
    """Token ids of ``prompt`` with its ``<image>`` placeholder replaced by ``n_image_tokens`` image ids.

    Like LLaVA's ``tokenizer_image_token`` (``llava/mm_utils.py``): the text chunks around the placeholder are
    tokenised separately (the first with the tokenizer's special prefix such as BOS, the others without), so
    the placeholder never merges with neighbouring characters.
    """
    chunks = prompt.split(IMAGE_PLACEHOLDER)
    if len(chunks) != 2:
        raise UnknownNameError(
            f"prompt must contain exactly one {IMAGE_PLACEHOLDER!r} placeholder, found {len(chunks) - 1}; "
            "build it with prunelab.models.prompts.build_prompt"
        )
    first = tokenizer(chunks[0], add_special_tokens=True)["input_ids"]
    second = tokenizer(chunks[1], add_special_tokens=False)["input_ids"]
    return list(first) + [int(image_token_id)] * int(n_image_tokens) + list(second)


@dataclass(frozen=True)
class DecodeSettings:
    """Greedy decoding as in LLaVA-1.5 evaluation. ``batch_size`` 1 is the faithful default; larger batches
    use left padding (same text, faster)."""

    max_new_tokens: int = 512
    batch_size: int = 1

    def generate_kwargs(self) -> dict:
        return {"max_new_tokens": int(self.max_new_tokens), "do_sample": False, "num_beams": 1}


__all__ = [
    "VICUNA_SYSTEM",
    "IMAGE_PLACEHOLDER",
    "CHAIR_PROMPT",
    "build_prompt",
    "tokenize_with_image",
    "DecodeSettings",
]

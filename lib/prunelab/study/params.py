"""Up-front validation of notebook parameters (issue 5: "validated up front with one clear error").

Every study notebook calls :func:`validate` (through :func:`prunelab.study.chapter.setup`, which passes the
notebooks' ``image_set`` on as ``image_sets``) in its first code cell after ``parameters``, so a bad value fails in
one line naming the problem and the fix, before any model is loaded or any image encoded::

    P = setup(model=model, image_set=image_set, n_images=n_images, methods=methods, budgets=budgets,
              seed=seed, device=device, results_dir=results_dir)

The notebooks share one parameter vocabulary (:data:`VOCABULARY`); ``python -m prunelab.book.build`` checks the values
of these names with :func:`check_values` before it runs any notebook.

Checks: model (:func:`prunelab.models.loader.check_model`: ``"toyllava"`` needs its committed weights; another value must be a local folder or an HF id found
in the local cache, with readable safetensors weights — nothing is ever downloaded, no pickle is ever loaded),
image set specs (``coco:<dir>`` must be an existing folder), method names (a non-empty list; ``None`` only where the
notebook reads it as "every method"), budgets (positive integers no larger than the image token count), ``seed``,
``n_images``, ``max_new_tokens``, ``results_dir``, device (``cuda`` must exist). Returns the normalised values
(device resolved, methods/budgets as lists).
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prunelab.errors import AssetError, BudgetError, UnknownNameError, check_budget
from prunelab.models.loader import check_model, check_toy_model
from prunelab.study.data import IMAGE_SETS
from prunelab.toyworld.splits import SPLIT_SIZES as SPLITS

#: The parameter names the notebooks share, with what each means; a notebook declares those it can use.
VOCABULARY = {
    "model": "'toyllava' or a llava-hf checkpoint (local folder or cached HF id)",
    "image_set": "'toyworld:<split>', 'photos' or 'coco:<val2014 dir>' (chapter 01 also takes a list of them)",
    "n_images": "images per set (a nested seeded subset), or None for all",
    "methods": "a list of method names",
    "budgets": "absolute numbers of kept visual tokens T, e.g. [64, 128]",
    "seed": "a non-negative integer",
    "device": "'auto', 'cpu', 'cuda' or 'cuda:N'",
    "max_new_tokens": "generation limit, or None for the model's default",
    "results_dir": "folder for the result tables, or None to write nothing",
}
#: Vocabulary entries that hold lists: a build parameter given as the string ``"64,128"`` is split at commas.
LIST_PARAMETERS = ("budgets", "methods")
_NOT_GIVEN: Any = object()


@dataclass
class Params:
    model: str | None = None
    model_path: Path | None = None
    image_sets: list[str] = field(default_factory=list)
    methods: list[str] | None = None
    budgets: list[int] = field(default_factory=list)
    device: str = "cpu"
    seed: int = 0
    n_images: int | None = None
    max_new_tokens: int | None = None
    results_dir: Path | None = None


# --------------------------------------------------------------------------------------------------------------
# Image sets, methods, budgets and the scalar parameters


def check_image_set(spec: str) -> str:
    """A valid image-set spec (see :mod:`prunelab.study.data`); ``coco:<dir>`` must name an existing folder."""
    if not isinstance(spec, str) or not spec:
        raise UnknownNameError(f"image set must be a string, got {spec!r}; known: {', '.join(IMAGE_SETS)}")
    kind, _, arg = spec.partition(":")
    if kind == "photos" and not arg:
        return spec
    if kind == "toyworld":
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


def check_methods(methods: Sequence[str] | str | None, *, required: bool = False) -> list[str] | None:
    """Registered method names. ``None`` means the notebook's default list ("every method") and is refused when
    ``required``; an empty list is always refused (it would run nothing, or crash at the first mean)."""
    if methods is None:
        if required:
            raise UnknownNameError(
                "methods is null; pass a list of method names, e.g. methods=['FasterVLM', 'DivPrune']"
            )
        return None
    if isinstance(methods, str):
        methods = [methods]
    if not isinstance(methods, (list, tuple)):
        raise UnknownNameError(
            f"methods must be a list of method names, got {methods!r}; pass e.g. ['FasterVLM', 'DivPrune']"
        )
    if not methods:
        raise UnknownNameError(
            "methods is empty; pass at least one method name, e.g. methods=['FasterVLM', 'DivPrune']"
        )
    from prunelab.methods import get_pruner

    return [get_pruner(m).name for m in methods]


def _budget_int(b) -> int:
    """``b`` as an ``int`` if it is an integral number (``64``, ``64.0``, ``np.int64(64)``); bools, strings and
    ``1.5`` are refused, never truncated (the rule of :func:`prunelab.errors.check_budget`, without its range)."""
    if isinstance(b, numbers.Integral) and not isinstance(b, bool):
        return int(b)
    if isinstance(b, float) and b.is_integer():
        return int(b)
    raise BudgetError(
        f"budget must be an integer number of tokens, got {b!r}; pass e.g. budgets=[64, 128] (absolute T, not a ratio)"
    )


def check_budgets(budgets, n_tokens: int | None = 576) -> list[int]:
    """Budgets as a list of integers ``1..n_tokens`` (``n_tokens=None``: any positive integer, for callers that
    learn the token count later). A single number is one budget; strings, bools and non-integral numbers are
    refused rather than read (``"64"`` would otherwise be taken character by character, ``1.5`` truncated)."""
    if isinstance(budgets, (str, bytes)):
        raise BudgetError(
            f"budgets must be a list of integers, got the string {budgets!r}; pass e.g. budgets=[64, 128]"
        )
    if isinstance(budgets, numbers.Number):
        budgets = [budgets]
    if budgets is None or not isinstance(budgets, Iterable):
        raise BudgetError(f"budgets must be a list of integers, got {budgets!r}; pass e.g. budgets=[64, 128]")
    budgets = list(budgets)
    if not budgets:
        raise UnknownNameError("budgets is empty; pass e.g. budgets=[64, 128]")
    out = []
    for b in budgets:
        t = _budget_int(b)
        if t < 1:
            where = f"1..{n_tokens}" if n_tokens is not None else "positive integers"
            raise BudgetError(
                f"budget T={t} keeps no visual token; budgets are numbers of kept tokens ({where}), "
                "e.g. budgets=[64, 128]"
            )
        out.append(t if n_tokens is None else check_budget(t, n_tokens))
    return out


def _is_int(x) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def check_seed(seed) -> int:
    if not _is_int(seed) or int(seed) < 0:
        raise UnknownNameError(f"seed must be a non-negative integer, got {seed!r}; pass e.g. seed=0")
    return int(seed)


def check_n_images(n, name: str = "n_images") -> int | None:
    if n is None:
        return None
    if not _is_int(n) or int(n) < 1:
        raise UnknownNameError(
            f"{name} must be a positive integer or None (every image), got {n!r}; pass e.g. {name}=32"
        )
    return int(n)


def check_max_new_tokens(m) -> int | None:
    """``None`` (the caller's default) or a positive integer; ``0`` is refused, not read as "the default"."""
    if m is None:
        return None
    if not _is_int(m) or int(m) < 1:
        raise UnknownNameError(
            f"max_new_tokens must be a positive integer or None (the model's default), got {m!r}; "
            "pass e.g. max_new_tokens=512"
        )
    return int(m)


def check_results_dir(d) -> Path | None:
    """``None`` or a folder that exists or can be created (its nearest existing parent is a writable folder)."""
    if d is None:
        return None
    if not isinstance(d, (str, os.PathLike)) or not str(d).strip():
        raise UnknownNameError(f"results_dir must be a folder path or None, got {d!r}")
    p = Path(d).expanduser()
    if p.exists() and not p.is_dir():
        raise AssetError(f"results_dir {p} is a file, not a folder; pass a folder (it is created when missing)")
    anc = p
    while not anc.exists():
        anc = anc.parent
    if not anc.is_dir() or not os.access(anc, os.W_OK | os.X_OK):
        raise AssetError(
            f"results_dir {p} cannot be written ({anc} is not a writable folder); pass a folder you can write"
        )
    return p


def check_values(values: dict[str, Any], defaults: dict[str, Any] | None = None) -> None:
    """Check the :data:`VOCABULARY` entries of ``values`` (other names are left to the notebook) without loading
    anything heavy: what the build runs before any notebook. ``defaults`` are the notebook's declared values; a
    ``methods`` default of ``None`` means the notebook reads ``None`` as "every method"."""
    from prunelab.device import resolve_device

    defaults = defaults or {}
    for name, value in values.items():
        if name == "model":
            check_model(value)
        elif name == "image_set":
            for spec in value if isinstance(value, (list, tuple)) else [value]:
                check_image_set(spec)
            if isinstance(value, (list, tuple)) and not value:
                raise UnknownNameError("image_set is empty; pass e.g. image_set='toyworld:test'")
        elif name == "methods":
            check_methods(value, required=defaults.get("methods", []) is not None)
        elif name == "budgets":
            check_budgets(value, None)
        elif name == "seed":
            check_seed(value)
        elif name == "n_images":
            check_n_images(value)
        elif name == "max_new_tokens":
            check_max_new_tokens(value)
        elif name == "results_dir":
            check_results_dir(value)
        elif name == "device":
            resolve_device(value)


def split_list(name: str, value):
    """A :data:`LIST_PARAMETERS` value given as one string (``-p budgets=64,128``) as a list; items that read as
    integers become integers. Anything else is returned unchanged."""
    if name not in LIST_PARAMETERS or not isinstance(value, str):
        return value
    out: list = []
    for part in value.strip().strip("[]").split(","):
        part = part.strip().strip("'\"")
        if part:
            out.append(int(part) if part.lstrip("+-").isdigit() else part)
    return out


def validate(
    *,
    model: str | None = None,
    image_sets: Sequence[str] | str | None = None,
    methods=None,
    budgets=None,
    device: str = "auto",
    n_tokens: int = 576,
    seed=_NOT_GIVEN,
    n_images=_NOT_GIVEN,
    max_new_tokens=_NOT_GIVEN,
    results_dir=_NOT_GIVEN,
    methods_required: bool = False,
    toy_only: bool = False,
) -> Params:
    """Check every given notebook parameter; see the module docstring. Returns :class:`Params`.

    ``methods_required``: ``None`` is refused (the notebook has no "every method" default). ``toy_only``: the
    model must be ToyLLaVA (:func:`check_toy_model`). The scalar checks run first: they cost nothing, and a typo
    in ``seed`` should not wait for a model folder to be read."""
    from prunelab.device import resolve_device

    p = Params()
    if seed is not _NOT_GIVEN:
        p.seed = check_seed(seed)
    if n_images is not _NOT_GIVEN:
        p.n_images = check_n_images(n_images)
    if max_new_tokens is not _NOT_GIVEN:
        p.max_new_tokens = check_max_new_tokens(max_new_tokens)
    if results_dir is not _NOT_GIVEN:
        p.results_dir = check_results_dir(results_dir)
    if budgets is not None:
        p.budgets = check_budgets(budgets, n_tokens)
    p.methods = check_methods(methods, required=methods_required)
    if image_sets is not None:
        p.image_sets = [check_image_set(s) for s in ([image_sets] if isinstance(image_sets, str) else image_sets)]
    p.device = str(resolve_device(device))
    if model is not None:
        if toy_only:
            check_toy_model(model)
        p.model, p.model_path = model, check_model(model)
    return p


__all__ = [
    "Params",
    "validate",
    "check_image_set",
    "check_methods",
    "check_budgets",
    "check_seed",
    "check_n_images",
    "check_max_new_tokens",
    "check_results_dir",
    "check_values",
    "split_list",
    "VOCABULARY",
    "LIST_PARAMETERS",
]

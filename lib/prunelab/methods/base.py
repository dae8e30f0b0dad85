"""The one interface every pruning method implements, and the method registry.

A *pre-LLM* pruner is a pure function of a :class:`VisualContext` (what the vision tower and projector give
for one image) and an absolute budget ``T``; it returns a :class:`PruneResult`. The interface follows the shape
proposed in methods-spec §5 (``select(ctx, budget) -> PruneResult``), itself distilled from llmc's
``TokenReductionModule`` and UniPruneBench's ``register_prune``, but with explicit parameters (no env vars,
DivPrune issue #2) and budgets as absolute token counts (never ratios).

Conventions
-----------
* ``N`` patch tokens in raster order (row-major over the ``grid``), CLS excluded from ``features``.
* Feature spaces: ``"vision"`` = tower layer -2 patch features (CLIP penultimate in LLaVA, DINOv2 layer -2 in
  ToyLLaVA), ``"projected"`` = projector output of those rows (what the LLM receives).
* Order policies: ``"raster"`` (kept indices sorted), ``"attention"`` (descending score, PruMerge),
  ``"cls_first_raster"`` (VisionZip: CLS, dominant in raster order, then contextual tokens).
* Position policies: ``"contiguous"`` (pre-LLM methods: the LLM renumbers 0..L'-1) or ``"original"``
  (FastV / DART keep original position ids).
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from prunelab.device import synchronize
from prunelab.errors import CapabilityError, UnknownNameError, check_budget
from prunelab.eval.metrics import erank

ORDER_POLICIES = ("raster", "attention", "cls_first_raster")
POSITION_POLICIES = ("contiguous", "original")
FEATURE_SPACES = ("vision", "projected")

#: The one order of method families (tables and figures sort and colour methods by it). ``random`` and ``base``
#: are the study's reference rows (random subsets; the unpruned model and the erank-greedy reference). ``in_llm``
#: comes last: unlisted families sorted last before it was added, so every existing order and colour stays.
FAMILY_ORDER = ("attention", "diversity", "hybrid", "adaptive", "text", "random", "base", "in_llm")
#: The label of the unpruned model in every study table (``prunelab.study.generation.VANILLA``).
UNPRUNED = "Vanilla"


@dataclass
class VisualContext:
    """Everything a pre-LLM pruner may read for ONE image (no batch dimension).

    Attributes
    ----------
    features: ``(N, C)`` tower layer -2 patch features, CLS dropped (LLaVA's ``hidden_states[-2][:, 1:]``).
    cls_attention: ``(N,)`` head-mean [CLS]->patch attention of the layer whose output is ``features``
        (``attentions[-2][:, :, 0, 1:].mean(1)``).
    cls_attention_heads: ``(H, N)`` the same per head (optional).
    cls_feature: ``(C,)`` the CLS hidden state at layer -2 (VisionZip passes it to the LLM; optional).
    projected: ``(N, D)`` projector output of ``features`` (optional; see :meth:`space`).
    projector: callable mapping ``(M, C) -> (M, D)``; used for merged tokens and to fill ``projected`` lazily.
    queries / keys: ``{layer: (H, N+1, d_head)}`` per-head q/k *projections* (before any scaling), CLS at
        row 0, for the layers a method asks for (negative layer indices as in ``attentions[layer]``).
    grid: ``(rows, cols)`` of the patch grid, ``rows*cols == N``.
    text_embeds: ``(L, D)`` embedded instruction tokens (text-conditioned methods; optional).
    erank_stats: dataset statistics of the input erank (``{"mean": .., "min": .., "max": ..}``) for AgilePruner
        and the erank-guided hybrids; ``None`` means "not calibrated" and those methods say so.
    image_id: free-form identifier carried into stats.
    """

    features: torch.Tensor
    cls_attention: torch.Tensor
    cls_attention_heads: torch.Tensor | None = None
    cls_feature: torch.Tensor | None = None
    projected: torch.Tensor | None = None
    projector: Callable[[torch.Tensor], torch.Tensor] | None = None
    queries: dict[int, torch.Tensor] = field(default_factory=dict)
    keys: dict[int, torch.Tensor] = field(default_factory=dict)
    grid: tuple[int, int] | None = None
    text_embeds: torch.Tensor | None = None
    erank_stats: dict[str, float] | None = None
    image_id: str | None = None

    def __post_init__(self):
        if self.features.ndim != 2:
            raise ValueError(f"features must be (N, C), got shape {tuple(self.features.shape)}")
        n = self.features.shape[0]
        if self.cls_attention.shape != (n,):
            raise ValueError(f"cls_attention must be ({n},), got {tuple(self.cls_attention.shape)}")
        if self.grid is None:
            side = int(round(n**0.5))
            self.grid = (side, side) if side * side == n else (1, n)

    @property
    def n_tokens(self) -> int:
        return int(self.features.shape[0])

    def space(self, name: str) -> torch.Tensor:
        """Token matrix ``(N, ·)`` in feature space ``name`` (``"vision"`` or ``"projected"``).

        ``"projected"`` uses ``projected`` if given, else applies ``projector`` (and caches it). A context
        without either cannot serve ``"projected"``: that raises :class:`CapabilityError` rather than
        silently switching spaces.
        """
        if name == "vision":
            return self.features
        if name == "projected":
            if self.projected is None:
                if self.projector is None:
                    raise CapabilityError(
                        "this context has no projector, so feature space 'projected' is unavailable; "
                        "pass features='vision' or build the context from a model with a projector"
                    )
                w = next(self.projector.parameters(), None) if isinstance(self.projector, torch.nn.Module) else None
                with torch.no_grad():  # a model's own projector may hold fp16 / bf16 weights: feed its dtype
                    out = self.projector(self.features if w is None else self.features.to(w.dtype))
                self.projected = out if w is None else out.float()
            return self.projected
        raise UnknownNameError(f"unknown feature space {name!r}; known: {', '.join(FEATURE_SPACES)}")

    def has_space(self, name: str) -> bool:
        return name == "vision" or (name == "projected" and (self.projected is not None or self.projector is not None))

    def require_qk(self, layer: int, kind: str = "keys") -> torch.Tensor:
        store = self.keys if kind == "keys" else self.queries
        if layer not in store:
            raise CapabilityError(
                f"this method needs the vision tower's {kind} of layer {layer}, which the context lacks; "
                f"build the context with qk_layers including {layer}"
            )
        return store[layer]


@dataclass(frozen=True, order=True)
class ErankStatsSpec:
    """The input-erank options of the dataset statistics (``ctx.erank_stats``: mean / min / max over a calibration
    set) a method reads: the arguments of :func:`prunelab.methods.adaptive.input_erank` on feature space
    ``features``. The study calibrates once per distinct spec (:meth:`Pruner.erank_stats_spec`)."""

    features: str = "vision"
    center: bool = False
    row_normalize: bool = False
    spectrum: str = "singular"

    @property
    def name(self) -> str:
        """The statistic's column name in the study's per-image cache (its format keeps cached entries valid)."""
        return f"input_erank[{self.features}|c={self.center}|rn={self.row_normalize}|{self.spectrum}]"


@dataclass
class PruneResult:
    """What a pre-LLM pruner returns.

    indices: ``(T',)`` long tensor of patch indices in output order (for merging methods: the anchor/target
        patch of each output token; ``-1`` marks output tokens with no single source patch, such as VisionZip's
        CLS or PruMerge's extra EViT token).
    tokens: ``(T', D)`` merged/constructed tokens in ``token_space``, or ``None`` when the output is simply the
        rows ``indices`` of the chosen space (pure selection).
    token_space: feature space of ``tokens`` (``"vision"``: they go through the projector; ``"projected"``:
        they bypass it).
    order / positions: the order and position policies (see module docstring).
    stats: per-image numbers (floats/ints/lists) the runner stores, e.g. ``tau_max_used``.
    select_s: wall seconds of the method's own selection, set by :func:`prune` (the standard statistics it adds
    afterwards are not counted).
    """

    indices: torch.Tensor
    tokens: torch.Tensor | None = None
    token_space: str = "vision"
    order: str = "raster"
    positions: str = "contiguous"
    stats: dict[str, Any] = field(default_factory=dict)
    select_s: float | None = None

    def __post_init__(self):
        if self.order not in ORDER_POLICIES:
            raise ValueError(f"order must be one of {ORDER_POLICIES}, got {self.order!r}")
        if self.positions not in POSITION_POLICIES:
            raise ValueError(f"positions must be one of {POSITION_POLICIES}, got {self.positions!r}")
        if self.token_space not in FEATURE_SPACES:
            raise ValueError(f"token_space must be one of {FEATURE_SPACES}, got {self.token_space!r}")
        self.indices = torch.as_tensor(self.indices, dtype=torch.long)

    @property
    def n_kept(self) -> int:
        return int(self.tokens.shape[0]) if self.tokens is not None else int(self.indices.numel())

    @property
    def patch_indices(self) -> torch.Tensor:
        """Distinct real patch indices that contribute directly (``-1`` placeholders dropped), sorted."""
        idx = self.indices[self.indices >= 0]
        return torch.unique(idx)

    def output_tokens(self, ctx: VisualContext, space: str = "projected") -> torch.Tensor:
        """The token rows the LLM receives (``space="projected"``) or their pre-projector version."""
        if self.tokens is None:
            return ctx.space(space)[self.indices]
        if self.token_space == space:
            return self.tokens
        if self.token_space == "vision" and space == "projected":
            if ctx.projector is None:
                raise CapabilityError("merged vision-space tokens need ctx.projector to be projected")
            with torch.no_grad():
                return ctx.projector(self.tokens)
        raise CapabilityError(f"cannot map tokens from space {self.token_space!r} back to {space!r}")


class Pruner:
    """Base class of pre-LLM pruners. Subclasses set the class attributes and implement :meth:`select`.

    Constructor keyword arguments are the method's parameters (validated by the subclass); :meth:`params`
    returns them for provenance. ``adaptive`` methods may return a number of tokens that differs from ``T``.
    """

    name: str = "base"  # the registered name: the method's one display name in every table and figure
    paper_name: str | None = None  # the name the AgilePruner paper's tables use (data/paper_results.csv), if any
    family: str = "base"  # one of FAMILY_ORDER
    stage: str = "pre_llm"  # pre_llm | in_llm
    requires: tuple[str, ...] = ()  # subset of: attention, projected, keys[L], queries[L], cls_feature, text
    adaptive: bool = False
    order: str = "raster"
    positions: str = "contiguous"
    source: str = ""  # paper + repository file/function this implementation follows

    def __init__(self, **params):
        self._params = dict(params)

    def params(self) -> dict[str, Any]:
        sig = inspect.signature(type(self).__init__)
        out = {}
        for k, p in sig.parameters.items():
            if k in ("self",) or p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
                continue
            out[k] = getattr(self, k, p.default)
        return out

    def __call__(self, ctx: VisualContext, budget: int) -> PruneResult:
        t = check_budget(budget, ctx.n_tokens)
        res = self.select(ctx, t)
        res.stats.setdefault("method", self.name)
        res.stats.setdefault("budget", t)
        return res

    def select(self, ctx: VisualContext, budget: int) -> PruneResult:  # pragma: no cover - abstract
        raise NotImplementedError

    def erank_stats_spec(self) -> ErankStatsSpec | None:
        """The dataset input-erank statistics this configuration reads from ``ctx.erank_stats``, or ``None`` when
        it needs none (the default; also for erank-guided methods given their statistics as parameters)."""
        return None

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({args})"


_REGISTRY: dict[str, type[Pruner]] = {}


def register(name: str):
    """Class decorator: make a :class:`Pruner` available as ``get_pruner(name)``."""

    def deco(cls):
        key = name.lower()
        if key in _REGISTRY and _REGISTRY[key] is not cls:
            raise ValueError(f"method name {name!r} registered twice")
        cls.name = name
        _REGISTRY[key] = cls
        return cls

    return deco


def available_methods(stage: str | None = None) -> list[str]:
    """Registered method names (optionally only ``stage`` = ``'pre_llm'`` or ``'in_llm'``), sorted."""
    _load_builtin_methods()
    return sorted(c.name for c in _REGISTRY.values() if stage is None or c.stage == stage)


def get_pruner(name: str, **params) -> Pruner:
    """Instantiate the registered method ``name`` (case-insensitive) with ``params``."""
    _load_builtin_methods()
    cls = _REGISTRY.get(str(name).lower())
    if cls is None:
        raise UnknownNameError(f"unknown pruning method {name!r}; known methods: {', '.join(available_methods())}")
    try:
        return cls(**params)
    except TypeError as err:
        raise UnknownNameError(
            f"bad parameters for method {cls.name!r}: {err}; see help(prunelab.methods.{cls.__module__.rsplit('.', 1)[-1]}.{cls.__name__})"
        ) from None


#: Modules of the methods package that hold no method family (helpers, the test factories).
_NOT_FAMILIES = frozenset({"base", "testing", "projector", "clustering"})
_loaded = False


def family_modules() -> list[str]:
    """Names of the family modules of :mod:`prunelab.methods`, discovered: every module of the package except
    the helpers (:data:`_NOT_FAMILIES`, names starting with ``_``)."""
    return sorted(
        m.name
        for m in pkgutil.iter_modules([str(Path(__file__).parent)])
        if not m.ispkg and not m.name.startswith("_") and m.name not in _NOT_FAMILIES
    )


def _load_builtin_methods() -> None:
    # Imported on first use so that `base` has no import cycle with the family modules that register themselves.
    global _loaded
    if not _loaded:
        for mod in family_modules():
            importlib.import_module(f"{__package__}.{mod}")
        _loaded = True


def base_label(label: str) -> str:
    """A method label without its parameters: ``"DivPrune(features=vision)"`` -> ``"DivPrune"``."""
    return str(label).split("(")[0].strip()


def paper_name(label: str) -> str | None:
    """The name the AgilePruner paper's tables (``data/paper_results.csv``) give the method behind a study label:
    the registered method's :attr:`Pruner.paper_name` (``"PruMerge+fixed"`` -> ``"PruMerge+"``, ``"BAT+erank"``
    -> ``"BAT+adaptive"``), ``"Vanilla"`` for the unpruned model, ``None`` for methods the paper does not report.
    Parameters in the label are dropped (``"DivPrune(features=vision)"`` -> ``"DivPrune"``): the caller decides
    whether a run with other parameters may be set against the paper's row. Names are matched exactly."""
    base = base_label(label)
    if base == UNPRUNED:
        return UNPRUNED
    _load_builtin_methods()
    cls = _REGISTRY.get(base.lower())
    return cls.paper_name if cls is not None and cls.name == base else None


def prune(ctx: VisualContext, method: str | Pruner, budget: int, **params) -> PruneResult:
    """Run ``method`` on ``ctx`` at budget ``T`` and attach the standard per-image statistics.

    Stats added: ``n_kept``, ``attention_mass_kept`` (share of [CLS] attention on directly kept patches),
    ``erank_kept_vision`` (erank of the kept tokens' pre-projector rows) and, when a projector is available,
    ``erank_kept_projected`` (erank of the rows the LLM receives) — methods-spec §3.1.
    """
    pruner = method if isinstance(method, Pruner) else get_pruner(method, **params)
    device = ctx.features.device
    synchronize(device)
    t0 = time.perf_counter()
    res = pruner(ctx, budget)
    synchronize(device)
    res.select_s = time.perf_counter() - t0
    a = ctx.cls_attention.double()
    pi = res.patch_indices
    res.stats["n_kept"] = res.n_kept
    res.stats["attention_mass_kept"] = float(a[pi].sum() / a.sum()) if pi.numel() else 0.0
    vis = res.output_tokens(ctx, "vision") if (res.tokens is None or res.token_space == "vision") else None
    if vis is not None:
        res.stats["erank_kept_vision"] = float(erank(vis))
    if ctx.has_space("projected"):
        res.stats["erank_kept_projected"] = float(erank(res.output_tokens(ctx, "projected")))
    return res


def replace_params(pruner: Pruner, **changes) -> Pruner:
    """A copy of ``pruner`` with some parameters changed."""
    p = pruner.params()
    p.update(changes)
    return type(pruner)(**p)


def catalog(names=None, stage: str | None = None):
    """One row per method: ``method, family, stage, adaptive, order, positions, features, requires, source``
    (a pandas DataFrame; the study's methods page and notebook 00 show it). ``names`` default: every registered
    method of ``stage``. ``features`` is the space a diversity/hybrid step measures distances in (``"-"`` when
    the method uses none)."""
    import pandas as pd

    rows = []
    for n in names if names is not None else available_methods(stage):
        p = get_pruner(n)
        rows.append(
            {
                "method": p.name,
                "family": p.family,
                "stage": p.stage,
                "adaptive": bool(p.adaptive),
                "order": p.order,
                "positions": p.positions,
                "features": getattr(p, "features", None) or "-",
                "requires": ", ".join(p.requires) or "-",
                "source": p.source,
            }
        )
    return pd.DataFrame(rows)


__all__ = [
    "FAMILY_ORDER",
    "UNPRUNED",
    "ErankStatsSpec",
    "base_label",
    "family_modules",
    "paper_name",
    "catalog",
    "VisualContext",
    "PruneResult",
    "Pruner",
    "register",
    "available_methods",
    "get_pruner",
    "prune",
    "replace_params",
]

"""Where ``model`` and ``methods`` travel in the study loop: ``python -m prunelab.benchmarks.dataflow``.

Runs :func:`prunelab.study.generation.run_generation` (describe and POPE) and
:func:`prunelab.study.runner.run_vision` on a seeded tiny LLaVA under a ``sys.settrace`` hook, and records every
prunelab function call that receives the model (a ``GenerationModel``, ``LlavaAdapter`` or the HF model) or the
methods (a ``Pruner``, a method spec, or a list of them) as an argument. It prints, per parameter, the prunelab
modules the parameter passes through and the calls that climb a layer: a function in a lower layer (by the
import-linter ``layers`` contract in ``pyproject.toml``) calling one in a higher layer, which imports cannot do and
only callbacks can. The redesign issue's bar: at most half the modules of the pre-redesign loop, and no climbs.

The layer of a module is that of its package folder; ``--layout flat`` maps a pre-redesign flat module
(``prunelab.generation``) to the folder its file lives in now, so the same tool measures an old checkout.
"""

from __future__ import annotations

import argparse
import sys
import tomllib
from collections import Counter
from pathlib import Path

from prunelab.paths import REPO_ROOT


def layer_ranks(pyproject: Path = REPO_ROOT / "pyproject.toml") -> dict[str, int]:
    """``{package: rank}`` from the ``layers`` contract (0 = the top layer)."""
    conf = tomllib.loads(pyproject.read_text())
    for c in conf["tool"]["importlinter"]["contracts"]:
        if c.get("type") == "layers":
            return {p.strip(): i for i, group in enumerate(c["layers"]) for p in group.split("|")}
    raise KeyError("no layers contract in pyproject.toml")


def rank_of(module: str, ranks: dict[str, int], flat: dict[str, str] | None = None) -> int | None:
    """The layer of ``module`` (the longest package prefix in ``ranks``); ``flat`` renames old flat modules."""
    name = (flat or {}).get(module, module)
    parts = name.split(".")
    for k in range(len(parts), 0, -1):
        r = ranks.get(".".join(parts[:k]))
        if r is not None:
            return r
    return None


def flat_map(lib: Path = REPO_ROOT / "lib" / "prunelab") -> dict[str, str]:
    """``prunelab.<file stem>`` -> its module in today's folders, for every module file under a folder."""
    out = {}
    for f in lib.glob("*/*.py"):
        if f.stem != "__init__":
            out[f"prunelab.{f.stem}"] = f"prunelab.{f.parent.name}.{f.stem}"
    return out


def _kinds(value, model_ids: set[int], method_types) -> set[str]:
    items = value if isinstance(value, (list, tuple)) else (value,)
    out = set()
    for v in items[:64]:
        if id(v) in model_ids or (isinstance(v, str) and v == _MODEL_NAME[0]):
            out.add("model")
        elif isinstance(v, method_types) or (isinstance(v, str) and v in _METHOD_NAMES):
            out.add("methods")
    return out


_METHOD_NAMES: set[str] = set()
_MODEL_NAME = [None]  # the model's name when the loop is given a name (the chapters' path)


def _import(new: str, old: str):
    """A module by today's name, or by its pre-redesign flat name (``--layout flat``)."""
    import importlib

    try:
        return importlib.import_module(new)
    except ImportError:
        return importlib.import_module(old)


def _prunelab_calls(root: str):
    """``call_of(frame, event)``, what both tracers ask of an event: ``None`` unless it is a call into a prunelab
    module (under ``root``, the benchmarks excluded), else ``(module, caller frame, caller module)``: the caller is
    the nearest prunelab frame below, through torch / transformers frames (``None`` and ``None`` if there is none)."""

    def module_of(frame) -> str | None:
        name = frame.f_globals.get("__name__", "")
        return name if name.startswith("prunelab") and frame.f_code.co_filename.startswith(root) else None

    def call_of(frame, event):
        if event != "call":
            return None
        mod = module_of(frame)
        if mod is None or mod.startswith("prunelab.benchmarks"):
            return None
        caller = frame.f_back
        while caller is not None and module_of(caller) is None and caller.f_back is not None:
            caller = caller.f_back
        return mod, caller, module_of(caller) if caller is not None else None

    return call_of


def trace_calls(fn, pyproject: Path | None = None) -> dict:
    """Run ``fn()`` under a trace of prunelab-to-prunelab calls: ``edges`` (Counter of ``(caller module, callee
    module)``) and ``climbs`` (each call up a layer, ``"caller:function -> callee:function"``)."""
    import prunelab

    ranks = layer_ranks(pyproject or REPO_ROOT / "pyproject.toml")
    call_of = _prunelab_calls(str(Path(prunelab.__file__).parent))
    edges: Counter = Counter()
    climbs: list[str] = []

    def tracer(frame, event, arg):
        call = call_of(frame, event)
        if call is None or call[2] is None:
            return None
        mod, caller, cmod = call
        edges[(cmod, mod)] += 1
        r, rc = rank_of(mod, ranks), rank_of(cmod, ranks)
        if r is not None and rc is not None and r < rc:
            climbs.append(f"{cmod}:{caller.f_code.co_name} -> {mod}:{frame.f_code.co_name}")
        return None

    sys.settrace(tracer)
    try:
        fn()
    finally:
        sys.settrace(None)
    return {"edges": edges, "climbs": climbs}


def trace_loop(
    work: Path,
    flat: bool = False,
    pyproject: Path | None = None,
    lib: Path | None = None,
    model_name: str | None = None,
) -> dict[str, dict]:
    """Run the loops under a trace; per parameter: ``modules`` (Counter of calls) and ``climbs`` (list of calls up a
    layer that hand it over); ``"callbacks"``: every prunelab call up a layer, whatever it carries."""
    import torch
    from PIL import Image

    import prunelab

    base = _import("prunelab.methods.base", "prunelab.methods.base")
    LlavaAdapter = _import("prunelab.models.adapter", "prunelab.adapter").LlavaAdapter
    tiny = _import("prunelab.models.tiny", "prunelab.tiny")
    G = _import("prunelab.study.generation", "prunelab.generation")
    L = _import("prunelab.models.loader", "prunelab.generation")
    R = _import("prunelab.study.runner", "prunelab.runner")
    ImageItem = _import("prunelab.study.data", "prunelab.data").ImageItem
    spec_types = tuple(t for t in (getattr(R, "MethodSpec", None), getattr(G, "_Spec", None)) if t is not None)
    method_types = (base.Pruner, *spec_types)
    _METHOD_NAMES.update(base.available_methods())
    ranks = layer_ranks(pyproject or REPO_ROOT / "pyproject.toml")
    renames = flat_map(lib or REPO_ROOT / "lib" / "prunelab") if flat else None
    root = str(Path(prunelab.__file__).parent)
    seen = {"model": Counter(), "methods": Counter()}
    climbs = {"model": [], "methods": []}
    callbacks: list[str] = []

    call_of = _prunelab_calls(root)

    def tracer(frame, event, arg):
        call = call_of(frame, event)
        if call is None:
            return None
        mod, caller, cmod = call
        code = frame.f_code
        r, rc = rank_of(mod, ranks, renames), rank_of(cmod, ranks, renames) if cmod else None
        up = r is not None and rc is not None and r < rc
        if up:
            callbacks.append(f"{cmod}:{caller.f_code.co_name} -> {mod}:{code.co_name}")
        names = code.co_varnames[: code.co_argcount + code.co_kwonlyargcount]
        # an object's own methods do not count: a parameter passes through a module when it is handed to it
        args = [frame.f_locals.get(n) for n in names if n not in ("self", "cls")]
        got = set().union(*(_kinds(a, model_ids, method_types) for a in args)) if args else set()
        if not got:
            return None
        for k in got:
            seen[k][mod] += 1
            if up:
                climbs[k].append(callbacks[-1])
        return None

    model = tiny.tiny_llava("clip", seed=0, image_size=56)
    words = (
        "USER: ASSISTANT: Please describe this image in detail. Is there a dog cat cup car person bus in the image?"
        " yes no"
    ).split()
    gm = L.from_adapter(
        LlavaAdapter(model, tokenizer=tiny.ToyTokenizer(model, words + [f"w{i}" for i in range(200)]), device="cpu"),
        "hf_chat",
    )
    model_ids = {id(gm), id(gm.adapter), id(model)}
    gen = torch.Generator().manual_seed(0)
    labels = (
        ["dog", "cat", "cup"],
        ["car", "person", "bus"],
        ["cup", "bus", "cat", "chair"],
        ["bicycle", "kite", "clock"],
    )
    items = [
        ImageItem(
            id=f"img{i}",
            source="synthetic",
            labels=lab,
            complexity=("simple", "complex")[i % 2],
            loader=(lambda i=i: Image.fromarray((torch.rand(56, 56, 3, generator=gen) * 255).byte().numpy())),
        )
        for i, lab in enumerate(labels)
    ]
    methods = ["FasterVLM", "DivPrune", "AgilePruner", "FastV"]
    _MODEL_NAME[0] = model_name
    if model_name is not None:  # by name, as the chapters pass it: loaded inside the loop, on the toy world
        gm = model_name
        items = _import("prunelab.study.data", "prunelab.data").load_image_set("toyworld:test", n=4, seed=0)
        methods[-1] = ("FastV", {"k": 1})  # the embedded ToyLLaVA has 2 decoder layers
    sys.settrace(tracer)
    try:
        for task in ("describe", "pope"):
            G.run_generation(
                gm, items, methods, [4], task=task, max_new_tokens=2, cache_dir=work / task, progress=False
            )
        enc = _import("prunelab.models.encoders", "prunelab.runner").PixelPatchEncoder(grid=4, patch=14)
        R.run_vision(items, methods[:3], [4], encoder=enc, cache_dir=work / "vision", progress=False)
    finally:
        sys.settrace(None)
    out = {k: {"modules": seen[k], "climbs": climbs[k]} for k in seen}
    out["callbacks"] = {"modules": Counter(c.split(" -> ")[1].split(":")[0] for c in callbacks), "climbs": callbacks}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--layout",
        choices=("folders", "flat"),
        default="folders",
        help="flat: a pre-redesign checkout whose modules sat side by side in prunelab/",
    )
    ap.add_argument("--work", default=None, help="cache folder for the runs (default: a temporary folder)")
    ap.add_argument(
        "--model",
        default=None,
        help="pass this model name to the loop (e.g. toyllava: loaded inside it, as the chapters do) "
        "instead of a loaded tiny model",
    )
    ap.add_argument("--pyproject", default=None, help="the pyproject.toml whose layers to use (default: this one)")
    ap.add_argument("--lib", default=None, help="today's lib/prunelab, for --layout flat (default: this one)")
    args = ap.parse_args(argv)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        res = trace_loop(
            Path(args.work or tmp),
            flat=args.layout == "flat",
            pyproject=Path(args.pyproject) if args.pyproject else None,
            lib=Path(args.lib) if args.lib else None,
            model_name=args.model,
        )
    for k, r in res.items():
        mods = sorted(r["modules"])
        print(f"{k}: {len(mods)} modules, {len(r['climbs'])} calls up a layer")
        for m in mods:
            print(f"  {m} ({r['modules'][m]} calls)")
        for c in sorted(set(r["climbs"])):
            print(f"  climbs: {c} (x{r['climbs'].count(c)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

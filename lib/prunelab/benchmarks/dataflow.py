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


def _kinds(value, model_types, method_types) -> set[str]:
    items = value if isinstance(value, (list, tuple)) else (value,)
    out = set()
    for v in items[:64]:
        if isinstance(v, model_types):
            out.add("model")
        elif isinstance(v, method_types):
            out.add("methods")
    return out


def trace_loop(work: Path, flat: bool = False) -> dict[str, dict]:
    """Run the loops under a trace; per parameter: ``modules`` (Counter of calls) and ``climbs`` (list)."""
    import torch
    from PIL import Image

    import prunelab
    from prunelab.methods.base import Pruner
    from prunelab.models.adapter import LlavaAdapter
    from prunelab.models.tiny import ToyTokenizer, tiny_llava
    from prunelab.study import generation as G, runner as R
    from prunelab.study.data import ImageItem

    spec_types = tuple(t for t in (getattr(R, "MethodSpec", None), getattr(G, "_Spec", None)) if t is not None)
    model_types = (G.GenerationModel, LlavaAdapter, torch.nn.Module)
    method_types = (Pruner, *spec_types)
    ranks = layer_ranks()
    renames = flat_map() if flat else None
    root = str(Path(prunelab.__file__).parent)
    seen = {"model": Counter(), "methods": Counter()}
    climbs = {"model": [], "methods": []}

    def module_of(frame) -> str | None:
        name = frame.f_globals.get("__name__", "")
        return name if name.startswith("prunelab") and frame.f_code.co_filename.startswith(root) else None

    def tracer(frame, event, arg):
        if event != "call":
            return None
        mod = module_of(frame)
        if mod is None or mod.startswith("prunelab.benchmarks"):
            return None
        code = frame.f_code
        args = [frame.f_locals.get(n) for n in code.co_varnames[: code.co_argcount + code.co_kwonlyargcount]]
        got = set().union(*(_kinds(a, model_types, method_types) for a in args)) if args else set()
        if not got:
            return None
        caller = frame.f_back
        while caller is not None and module_of(caller) is None and caller.f_back is not None:
            caller = caller.f_back  # through torch / transformers frames to the prunelab code that called them
        cmod = module_of(caller) if caller is not None else None
        for k in got:
            seen[k][mod] += 1
            r, rc = rank_of(mod, ranks, renames), rank_of(cmod, ranks, renames) if cmod else None
            if r is not None and rc is not None and r < rc:
                climbs[k].append(f"{cmod}:{caller.f_code.co_name} -> {mod}:{code.co_name}")
        return None

    model = tiny_llava("clip", seed=0, image_size=56)
    words = "USER: ASSISTANT: Please describe this image in detail. Is there a dog cat in the image? yes no".split()
    gm = G.from_adapter(LlavaAdapter(model, tokenizer=ToyTokenizer(model, words + [f"w{i}" for i in range(200)]),
                                     device="cpu"), "hf_chat")
    gen = torch.Generator().manual_seed(0)
    items = [ImageItem(id=f"img{i}", source="synthetic", labels=["dog", "cat"], complexity="simple",
                       loader=(lambda i=i: Image.fromarray((torch.rand(56, 56, 3, generator=gen) * 255).byte().numpy())))
             for i in range(2)]
    methods = ["FasterVLM", "DivPrune", "AgilePruner", "FastV"]
    sys.settrace(tracer)
    try:
        for task in ("describe", "pope"):
            G.run_generation(gm, items, methods, [4], task=task, max_new_tokens=2, cache_dir=work / task,
                             progress=False)
        R.run_vision(items, methods[:3], [4], encoder=R.PixelPatchEncoder(grid=4, patch=14)
                     if hasattr(R, "PixelPatchEncoder") else _pixel_encoder(), cache_dir=work / "vision",
                     progress=False)
    finally:
        sys.settrace(None)
    return {k: {"modules": seen[k], "climbs": climbs[k]} for k in seen}


def _pixel_encoder():
    from prunelab.models.encoders import PixelPatchEncoder

    return PixelPatchEncoder(grid=4, patch=14)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layout", choices=("folders", "flat"), default="folders",
                    help="flat: a pre-redesign checkout whose modules sat side by side in prunelab/")
    ap.add_argument("--work", default=None, help="cache folder for the runs (default: a temporary folder)")
    args = ap.parse_args(argv)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        res = trace_loop(Path(args.work or tmp), flat=args.layout == "flat")
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

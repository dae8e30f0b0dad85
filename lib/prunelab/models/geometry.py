"""How many visual tokens each model family makes from an image, from its config alone (no weights).

The first piece of the per-family layout (issue #14): a budget ``T`` means a different share of the image in each
family, and the adapter must know where the visual run is before it can prune it.

* **LLaVA-1.5** (``llava``): the processor resizes (and pads) every image to the tower's square input, so the count
  is ``(image_size / patch_size)^2`` (576 at 336 px / 14), ``+ 1`` with the ``"full"`` strategy ([CLS] kept).
* **LLaVA-NeXT** (``llava_next``, "anyres"): one base tile of the whole image plus a grid of tiles at the best
  resolution among ``image_grid_pinpoints`` (:func:`best_resolution`, the rule of ``haotian-liu/LLaVA``
  ``llava/mm_utils.py select_best_resolution``); the grid's feature map is un-padded back to the image's aspect
  ratio and one newline token ends each of its rows (``llava/model/llava_arch.py``, ``unpad_image`` and the
  ``spatial_unpad`` branch). 640x480 -> base 576 + grid 36x48 + 36 newlines = 2,340.
* **Qwen2.5-VL** (``qwen2_5_vl``): the image is resized to multiples of ``patch_size * spatial_merge_size`` (28)
  within ``[min_pixels, max_pixels]`` (:func:`qwen_resize`, Qwen2-VL's ``smart_resize``), and every 2x2 block of
  patches becomes one token: ``(H' / 28) * (W' / 28)``, between ``<|vision_start|>`` and ``<|vision_end|>``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from prunelab.errors import CapabilityError, ImageError

#: Qwen2.5-VL's pixel bounds: ``min_pixels`` as every Qwen2-VL processor; ``max_pixels`` as the released
#: Qwen2.5-VL-7B-Instruct ``preprocessor_config.json`` sets it (12,845,056) [UNVERIFIED: no model hub here], where the
#: transformers class default is ``28 * 28 * 1280``; both are parameters. Images up to ~1 MP give the same count.
QWEN_MIN_PIXELS = 56 * 56
QWEN_MAX_PIXELS = 28 * 28 * 16384


@dataclass(frozen=True)
class TokenLayout:
    """The visual tokens of one image: ``total`` of them, ``base`` from the whole-image tile, ``grid`` (rows, cols)
    of the high-resolution feature map after un-padding, and ``newlines`` (one per grid row; LLaVA-NeXT only)."""

    total: int
    base: int
    grid: tuple[int, int] = (0, 0)
    newlines: int = 0


def _hw(image_hw) -> tuple[int, int]:
    h, w = (int(x) for x in image_hw)
    if h < 1 or w < 1:
        raise ImageError(f"image size {image_hw!r} must be two positive integers (height, width)")
    return h, w


def best_resolution(image_hw, pinpoints) -> tuple[int, int]:
    """The ``(height, width)`` among ``pinpoints`` that keeps most of the image's pixels when it is scaled to fit,
    the least padding breaking ties (first one wins a full tie)."""
    h, w = _hw(image_hw)
    best, best_eff, best_waste = None, 0, math.inf
    for ph, pw in pinpoints:
        scale = min(pw / w, ph / h)
        eff = min(int(w * scale) * int(h * scale), w * h)
        waste = pw * ph - eff
        if eff > best_eff or (eff == best_eff and waste < best_waste):
            best, best_eff, best_waste = (int(ph), int(pw)), eff, waste
    return best


def llava_layout(config, image_hw=None) -> TokenLayout:
    """LLaVA-1.5: the tower's square grid whatever the image size (``image_hw`` is accepted for symmetry)."""
    vc = config.vision_config
    n = (vc.image_size // vc.patch_size) ** 2
    n += int(getattr(config, "vision_feature_select_strategy", "default") == "full")
    return TokenLayout(total=n, base=n)


def llava_next_layout(config, image_hw) -> TokenLayout:
    """LLaVA-NeXT anyres: base tile + un-padded grid of the best-resolution tiles + one newline per grid row."""
    h, w = _hw(image_hw)
    vc = config.vision_config
    side = vc.image_size // vc.patch_size
    ph, pw = best_resolution((h, w), config.image_grid_pinpoints)
    rows, cols = side * (ph // vc.image_size), side * (pw // vc.image_size)
    if w / h > cols / rows:  # wider than the grid: the un-padded map loses rows
        rows -= 2 * ((rows - int(round(h * (cols / w), 7))) // 2)
    else:
        cols -= 2 * ((cols - int(round(w * (rows / h), 7))) // 2)
    base = side * side + int(getattr(config, "vision_feature_select_strategy", "default") == "full")
    return TokenLayout(total=base + rows * cols + rows, base=base, grid=(rows, cols), newlines=rows)


def qwen_resize(
    height: int, width: int, factor: int = 28, min_pixels: int = QWEN_MIN_PIXELS, max_pixels: int = QWEN_MAX_PIXELS
) -> tuple[int, int]:
    """Qwen2-VL's ``smart_resize``: both sides rounded to multiples of ``factor``, the area brought into
    ``[min_pixels, max_pixels]`` keeping the aspect ratio; more than 200:1 is refused as the source refuses it."""
    h, w = _hw((height, width))
    if max(h, w) / min(h, w) > 200:
        raise ImageError(f"image {h}x{w} has an aspect ratio over 200, which Qwen2.5-VL refuses; crop it")
    hb, wb = round(h / factor) * factor, round(w / factor) * factor
    if hb * wb > max_pixels:
        beta = math.sqrt(h * w / max_pixels)
        hb, wb = (
            max(factor, math.floor(h / beta / factor) * factor),
            max(factor, math.floor(w / beta / factor) * factor),
        )
    elif hb * wb < min_pixels:
        beta = math.sqrt(min_pixels / (h * w))
        hb, wb = math.ceil(h * beta / factor) * factor, math.ceil(w * beta / factor) * factor
    return hb, wb


def qwen2_5_vl_layout(
    config, image_hw, min_pixels: int = QWEN_MIN_PIXELS, max_pixels: int = QWEN_MAX_PIXELS
) -> TokenLayout:
    """Qwen2.5-VL: one token per merged 2x2 patch block of the resized image (``grid`` = token rows, cols)."""
    vc = config.vision_config
    factor = vc.patch_size * vc.spatial_merge_size
    hb, wb = qwen_resize(*_hw(image_hw), factor=factor, min_pixels=min_pixels, max_pixels=max_pixels)
    rows, cols = hb // factor, wb // factor
    return TokenLayout(total=rows * cols, base=0, grid=(rows, cols))


LAYOUTS = {"llava": llava_layout, "llava_next": llava_next_layout, "qwen2_5_vl": qwen2_5_vl_layout}


def token_layout(config, image_hw) -> TokenLayout:
    """The :class:`TokenLayout` of an image of ``image_hw`` = (height, width) pixels under ``config``'s family."""
    family = getattr(config, "model_type", None)
    if family not in LAYOUTS:
        raise CapabilityError(f"no token layout for model family {family!r}; known: {', '.join(LAYOUTS)}")
    return LAYOUTS[family](config, image_hw)


__all__ = [
    "TokenLayout",
    "best_resolution",
    "llava_layout",
    "llava_next_layout",
    "qwen_resize",
    "qwen2_5_vl_layout",
    "token_layout",
    "LAYOUTS",
    "QWEN_MIN_PIXELS",
    "QWEN_MAX_PIXELS",
]

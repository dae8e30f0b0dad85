"""Seeded emoji scenes with exact ground truth, and their rendering to 336x336 RGB images.

A scene is a pure function of ``(split, index, seed, complexity)``: :func:`make_scene` samples a context, the
objects (category, emoji variant, size, mirror, box), distractors and a background description from one
NumPy ``SeedSequence``; :func:`render` turns that record into pixels. Rendering draws every emoji once at the
font's native 109 px, crops it to its opaque pixels and caches resized copies, so a scene renders in a few ms.

Complexity levels (the toy analogue of the paper's simple vs complex images):

========  =========  ==================  ==============================================  ===========
level     objects    object size (px)    background                                      distractors
========  =========  ==================  ==============================================  ===========
simple    1-2        105-190             plain colour or soft two-colour gradient        none
medium    3-5        64-112              gradient, blotchy noise, soft texture, shapes   0-2
complex   6-11       38-76               texture, object-free photo crop, noise, shapes  2-6
========  =========  ==================  ==============================================  ===========

Object boxes are tight around the glyph's opaque pixels, in pixels ``(x0, y0, x1, y1)`` with ``x1``/``y1``
exclusive. Objects never overlap another object or a distractor by more than :data:`MAX_OVERLAP` of the
smaller box, so every ground-truth object stays visible.
"""

from __future__ import annotations

import dataclasses
import functools
import zlib
from collections import Counter
from dataclasses import dataclass

import numpy as np

from prunelab.errors import AssetError, UnknownNameError
from prunelab.toyworld import categories as C
from prunelab.toyworld.font import NATIVE_SIZE, load_emoji_font

CANVAS = 336
PATCH = 14
GRID = CANVAS // PATCH  # 24
COMPLEXITIES = ("simple", "medium", "complex")
MAX_OVERLAP = 0.05

#: Named background colours (none of them a COCO word: no "orange").
COLOURS: dict[str, tuple[int, int, int]] = {
    "white": (250, 250, 248),
    "light grey": (214, 214, 214),
    "beige": (232, 220, 196),
    "cream": (250, 244, 222),
    "pale yellow": (250, 240, 170),
    "pale green": (200, 232, 196),
    "mint green": (178, 236, 214),
    "pale blue": (196, 220, 245),
    "sky blue": (140, 196, 240),
    "lavender": (214, 200, 240),
    "pink": (246, 196, 212),
    "peach": (250, 210, 180),
    "grey": (150, 150, 155),
    "dark blue": (40, 60, 110),
    "dark green": (40, 90, 60),
    "teal": (50, 130, 135),
    "brown": (120, 85, 60),
    "black": (25, 25, 28),
}

#: Object-free regions of photographs bundled with scikit-image (rows y0:y1, cols x0:x1), checked by eye.
PHOTOS: dict[str, tuple[str, tuple[int, int, int, int], str]] = {
    "space": ("hubble_deep_field", (0, 872, 0, 1000), "a photo of deep space"),
    "moon": ("moon", (0, 512, 0, 512), "a grey photo of the lunar surface"),
    "launch pad": ("rocket", (0, 427, 0, 640), "a photo of a rocket launch pad at dusk"),
    "field": ("camera", (0, 470, 400, 512), "a black and white photo of a field"),
    "wood": ("coffee", (0, 90, 430, 600), "a photo of a wooden surface"),
    "tissue": ("immunohistochemistry", (0, 512, 0, 512), "a microscope image of stained tissue"),
    "retina": ("retina", (350, 1050, 350, 1050), "a reddish photo of a retina"),
    "coins": ("coins", (0, 303, 0, 384), "a grey photo of old coins"),
    "formulas": ("text", (0, 172, 0, 448), "a photo of handwritten formulas"),
}

TEXTURES: dict[str, tuple[tuple[int, int, int], str]] = {
    "brick": ((190, 110, 90), "a brick wall"),
    "grass": ((110, 170, 80), "grass"),
    "gravel": ((170, 160, 140), "gravel"),
}

_BG_KINDS = {
    "simple": (("plain", 0.6), ("gradient", 0.4)),
    "medium": (("gradient", 0.3), ("noise", 0.25), ("soft texture", 0.25), ("shapes", 0.2)),
    "complex": (("texture", 0.3), ("photo", 0.3), ("noise", 0.2), ("shapes", 0.2)),
}


# --------------------------------------------------------------------------------------------- glyphs
@functools.cache
def _base_glyph(codepoint: str) -> np.ndarray:
    """The emoji drawn once at the font's native size, cropped to its opaque pixels (RGBA uint8)."""
    from PIL import Image, ImageDraw

    font = load_emoji_font(NATIVE_SIZE)
    ch = "".join(chr(int(c, 16)) for c in codepoint.split("+"))
    im = Image.new("RGBA", (160, 160), (0, 0, 0, 0))
    ImageDraw.Draw(im).text((8, 8), ch, font=font, embedded_color=True)
    bbox = im.getbbox()
    if bbox is None:
        raise AssetError(
            f"the emoji font has no glyph for U+{codepoint}; install fonts-noto-color-emoji 2.042 or newer"
        )
    return np.asarray(im.crop(bbox))


def glyph(codepoint: str, size: int, flip: bool = False) -> np.ndarray:
    """RGBA uint8 array of the emoji scaled so that its longer side is ``size`` px, tight-cropped, optionally mirrored."""
    g = _scaled_glyph(codepoint, int(size))
    return g[:, ::-1] if flip else g


# About 4k cached sizes (~40 MB) cover most of what a split asks for; misses cost ~0.5 ms.
@functools.lru_cache(maxsize=4096)
def _scaled_glyph(codepoint: str, size: int) -> np.ndarray:
    from PIL import Image

    base = _base_glyph(codepoint)
    h, w = base.shape[:2]
    s = size / max(h, w)
    nw, nh = max(1, round(w * s)), max(1, round(h * s))
    # Resize premultiplied so transparent pixels do not bleed dark fringes into the edge.
    im = Image.fromarray(base, "RGBA").convert("RGBa").resize((nw, nh), Image.Resampling.LANCZOS).convert("RGBA")
    arr = np.asarray(im)
    ys, xs = np.nonzero(arr[..., 3] > 0)
    out = arr[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    out.setflags(write=False)
    return out


# --------------------------------------------------------------------------------------------- records
@dataclass(frozen=True)
class SceneObject:
    """One drawn emoji: a COCO ``category`` (or a distractor's word), its codepoint, tight box, size, mirror."""

    category: str
    codepoint: str
    box: tuple[int, int, int, int]
    size: int
    flip: bool = False

    @property
    def center(self) -> tuple[float, float]:
        x0, y0, x1, y1 = self.box
        return (x0 + x1) / 2, (y0 + y1) / 2

    @property
    def area(self) -> int:
        x0, y0, x1, y1 = self.box
        return (x1 - x0) * (y1 - y0)

    def to_record(self) -> dict:
        return {
            "category": self.category,
            "codepoint": self.codepoint,
            "box": list(self.box),
            "size": self.size,
            "flip": self.flip,
        }

    @classmethod
    def from_record(cls, r: dict) -> SceneObject:
        return cls(r["category"], r["codepoint"], tuple(int(v) for v in r["box"]), int(r["size"]), bool(r["flip"]))


@dataclass(frozen=True)
class Scene:
    """Exact ground truth of one toy image; :func:`render` draws it."""

    id: str
    split: str
    index: int
    seed: int
    complexity: str
    context: str
    background: dict
    objects: tuple[SceneObject, ...]
    distractors: tuple[SceneObject, ...] = ()
    mirrored: bool = False

    @property
    def counts(self) -> dict[str, int]:
        """Objects per category, in order of first appearance."""
        return dict(Counter(o.category for o in self.objects))

    @property
    def categories(self) -> list[str]:
        return list(self.counts)

    def hflip(self) -> Scene:
        """The mirror image (boxes mirrored): ``render(s.hflip())`` equals ``render(s)`` flipped left-right.

        Use this for flip augmentation so descriptions that say "on the left" stay true.
        """

        def mirror(o: SceneObject) -> SceneObject:
            x0, y0, x1, y1 = o.box
            return dataclasses.replace(o, box=(CANVAS - x1, y0, CANVAS - x0, y1), flip=not o.flip)

        return dataclasses.replace(
            self,
            objects=tuple(map(mirror, self.objects)),
            distractors=tuple(map(mirror, self.distractors)),
            mirrored=not self.mirrored,
        )

    def to_record(self) -> dict:
        """A JSON-serialisable dict; :meth:`from_record` inverts it."""
        return {
            "id": self.id,
            "split": self.split,
            "index": self.index,
            "seed": self.seed,
            "complexity": self.complexity,
            "context": self.context,
            "background": dict(self.background),
            "objects": [o.to_record() for o in self.objects],
            "distractors": [o.to_record() for o in self.distractors],
            "counts": self.counts,
            "mirrored": self.mirrored,
        }

    @classmethod
    def from_record(cls, r: dict) -> Scene:
        return cls(
            r["id"],
            r["split"],
            int(r["index"]),
            int(r["seed"]),
            r["complexity"],
            r["context"],
            dict(r["background"]),
            tuple(SceneObject.from_record(o) for o in r["objects"]),
            tuple(SceneObject.from_record(o) for o in r["distractors"]),
            bool(r.get("mirrored", False)),
        )


# --------------------------------------------------------------------------------------------- sampling
def scene_rng(split: str, index: int, seed: int, stream: str = "scene") -> np.random.Generator:
    """The generator for one scene: independent streams per (seed, split, index, purpose)."""
    key = [int(seed) & 0xFFFFFFFF, zlib.crc32(split.encode()), int(index), zlib.crc32(stream.encode())]
    return np.random.default_rng(np.random.SeedSequence(key))


def _choice(rng: np.random.Generator, items, probs=None):
    if probs is not None:
        p = np.asarray(probs, dtype=float)
        return items[int(rng.choice(len(items), p=p / p.sum()))]
    return items[int(rng.integers(len(items)))]


def _overlap_ok(box, placed, max_overlap: float) -> bool:
    x0, y0, x1, y1 = box
    a = (x1 - x0) * (y1 - y0)
    for b in placed:
        iw = min(x1, b[2]) - max(x0, b[0])
        ih = min(y1, b[3]) - max(y0, b[1])
        if iw > 0 and ih > 0:
            if iw * ih > max_overlap * min(a, (b[2] - b[0]) * (b[3] - b[1])):
                return False
    return True


def _place(rng, codepoint, size, flip, placed, *, margin=2, tries=60, shrink=0.85, rounds=3):
    """Rejection-sample a position whose box keeps the overlap rule; shrink and retry, else ``None``."""
    for _ in range(rounds):
        g = glyph(codepoint, size, flip)
        h, w = g.shape[:2]
        if w + 2 * margin < CANVAS and h + 2 * margin < CANVAS:
            for _ in range(tries):
                x = int(rng.integers(margin, CANVAS - margin - w + 1))
                y = int(rng.integers(margin, CANVAS - margin - h + 1))
                box = (x, y, x + w, y + h)
                if _overlap_ok(box, placed, MAX_OVERLAP):
                    return box, size
        size = max(16, int(size * shrink))
    return None


def _sample_categories(rng, context: str, n: int, repeat_p: float) -> list[str]:
    dist = C.context_distribution(context)
    names = list(dist)
    probs = np.array([dist[c] for c in names])
    out: list[str] = []
    for _ in range(n):
        if out and rng.random() < repeat_p:
            cand = _choice(rng, out)
            if out.count(cand) < 4 and C.BY_NAME[cand].countable:
                out.append(cand)
                continue
        for _ in range(20):
            cand = _choice(rng, names, probs)
            if out.count(cand) < (4 if C.BY_NAME[cand].countable else 1):
                break
        else:
            continue
        out.append(cand)
    return out


def _sample_background(rng, complexity: str) -> dict:
    kinds, probs = zip(*_BG_KINDS[complexity])
    kind = _choice(rng, kinds, probs)
    names = list(COLOURS)
    bg: dict = {"kind": kind, "seed": int(rng.integers(2**31))}
    if kind == "plain":
        c = _choice(rng, names)
        bg.update(colour=c, phrase=f"a plain {c} background")
    elif kind == "gradient":
        c1, c2 = (names[i] for i in rng.choice(len(names), 2, replace=False))
        bg.update(
            colour=c1,
            colour2=c2,
            direction=_choice(rng, ["vertical", "horizontal", "diagonal"]),
            phrase=f"a gradient from {c1} to {c2}",
        )
    elif kind == "noise":
        bg.update(
            cells=int(rng.integers(3, 11)), grain=float(rng.uniform(4, 18)), phrase="a blotchy multicoloured pattern"
        )
    elif kind == "shapes":
        n = int(rng.integers(10, 25)) if complexity == "medium" else int(rng.integers(25, 60))
        c = _choice(rng, names)
        bg.update(colour=c, n_shapes=n, phrase=f"a {c} surface cluttered with coloured shapes")
    elif kind in ("texture", "soft texture"):
        t = _choice(rng, list(TEXTURES))
        bg.update(
            texture=t,
            scale=float(rng.uniform(0.6, 1.6)),
            strength=1.0 if kind == "texture" else 0.45,
            phrase=TEXTURES[t][1] if kind == "texture" else f"a faint {t} pattern",
        )
    elif kind == "photo":
        p = _choice(rng, list(PHOTOS))
        bg.update(photo=p, zoom=float(rng.uniform(0.6, 1.0)), phrase=PHOTOS[p][2])
    return bg


_LEVELS = {
    # n_objects range (inclusive), size range, distractor count range, repeat probability
    "simple": ((1, 2), (105, 190), (0, 0), 0.35),
    "medium": ((3, 5), (64, 112), (0, 2), 0.3),
    "complex": ((6, 11), (38, 76), (2, 6), 0.3),
}


def make_scene(split: str, index: int, seed: int = 0, complexity: str = "complex", context: str | None = None) -> Scene:
    """Sample the scene ``(split, index, seed)`` at the given complexity (deterministic, no pixels drawn)."""
    if complexity not in _LEVELS:
        raise UnknownNameError(f"unknown complexity {complexity!r}; choose one of {', '.join(COMPLEXITIES)}")
    if context is not None and context not in C.BY_CONTEXT:
        raise UnknownNameError(f"unknown context {context!r}; choose one of {', '.join(C.CONTEXT_NAMES)}")
    rng = scene_rng(split, index, seed)
    ctx = context or _choice(rng, C.CONTEXT_NAMES)
    (n_lo, n_hi), (s_lo, s_hi), (d_lo, d_hi), repeat_p = _LEVELS[complexity]
    n = int(rng.integers(n_lo, n_hi + 1))
    cats = _sample_categories(rng, ctx, n, repeat_p)
    if complexity == "simple" and n == 2:
        s_hi = 150  # two large objects must fit side by side
    # Objects of one category share a variant more often than not (a flock of the same bird).
    variant_of: dict[str, str] = {}
    specs = []
    for cat in cats:
        variants = C.BY_NAME[cat].variants
        if cat in variant_of and rng.random() < 0.7:
            cp = variant_of[cat]
        else:
            cp = _choice(rng, variants).codepoint
            variant_of.setdefault(cat, cp)
        specs.append((cat, cp, int(rng.integers(s_lo, s_hi + 1)), bool(rng.random() < 0.5)))
    bg = _sample_background(rng, complexity)
    placed: list[tuple] = []
    objects = []
    # Largest first: they are the hardest to fit.
    for cat, cp, size, flip in sorted(specs, key=lambda s: -s[2]):
        res = _place(rng, cp, size, flip, placed)
        if res is None:
            continue
        box, size = res
        placed.append(box)
        objects.append(SceneObject(cat, cp, box, size, flip))
    distractors = []
    for _ in range(int(rng.integers(d_lo, d_hi + 1))):
        d = _choice(rng, C.DISTRACTORS)
        res = _place(rng, d.codepoint, int(rng.integers(30, 72)), bool(rng.random() < 0.5), placed, rounds=1)
        if res is not None:
            placed.append(res[0])
            distractors.append(SceneObject(d.word, d.codepoint, res[0], res[1], False))
    # Reading order (top-to-bottom, left-to-right) makes records easy to eyeball.
    objects.sort(key=lambda o: (o.box[1] // 56, o.box[0]))
    return Scene(
        f"{split}-{index:05d}", split, int(index), int(seed), complexity, ctx, bg, tuple(objects), tuple(distractors)
    )


# --------------------------------------------------------------------------------------------- backgrounds
@functools.cache
def _skimage_image(name: str) -> np.ndarray:
    import skimage.data

    a = getattr(skimage.data, name)()
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    return np.ascontiguousarray(a[..., :3].astype(np.uint8))


def _resize(a: np.ndarray, w: int, h: int, resample=None) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(a).resize((w, h), resample or Image.Resampling.BILINEAR))


def _render_background(bg: dict) -> np.ndarray:
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(bg["seed"])
    kind = bg["kind"]
    n = CANVAS
    if kind == "plain":
        return np.broadcast_to(np.array(COLOURS[bg["colour"]], np.uint8), (n, n, 3)).copy()
    if kind == "gradient":
        c1, c2 = (np.array(COLOURS[bg[k]], np.float32) for k in ("colour", "colour2"))
        t = np.linspace(0, 1, n, dtype=np.float32)
        if bg["direction"] == "vertical":
            w = np.repeat(t[:, None], n, 1)
        elif bg["direction"] == "horizontal":
            w = np.repeat(t[None, :], n, 0)
        else:
            w = (t[:, None] + t[None, :]) / 2
        return (c1 * (1 - w[..., None]) + c2 * w[..., None]).astype(np.uint8)
    if kind == "noise":
        k = bg["cells"]
        small = rng.integers(40, 256, size=(k, k, 3), dtype=np.uint8)
        out = _resize(small, n, n, Image.Resampling.BICUBIC).astype(np.float32)
        out += rng.normal(0, bg["grain"], size=(n, n, 1)).astype(np.float32)
        return np.clip(out, 0, 255).astype(np.uint8)
    if kind == "shapes":
        im = Image.new("RGB", (n, n), COLOURS[bg["colour"]])
        dr = ImageDraw.Draw(im)
        for _ in range(bg["n_shapes"]):
            col = tuple(int(v) for v in rng.integers(30, 240, 3))
            x, y = (int(v) for v in rng.integers(-20, n, 2))
            w, h = (int(v) for v in rng.integers(8, 70, 2))
            shape = int(rng.integers(3))
            if shape == 0:
                dr.ellipse((x, y, x + w, y + h), fill=col)
            elif shape == 1:
                dr.rectangle((x, y, x + w, y + h), fill=col)
            else:
                dr.line((x, y, x + w * 2, y + h - 35), fill=col, width=int(rng.integers(2, 9)))
        return np.asarray(im)
    if kind in ("texture", "soft texture"):
        tint, _ = TEXTURES[bg["texture"]]
        src = _skimage_image(bg["texture"])
        side = int(min(src.shape[0], CANVAS / bg["scale"]))
        y, x = (int(v) for v in rng.integers(0, src.shape[0] - side + 1, 2))
        g = _resize(src[y : y + side, x : x + side], n, n)[..., :1].astype(np.float32) / 255.0
        tex = g * (np.array(tint, np.float32) * 1.5)
        s = bg["strength"]
        if s < 1:
            tex = s * tex + (1 - s) * np.array(COLOURS["cream"], np.float32)
        return np.clip(tex, 0, 255).astype(np.uint8)
    if kind == "photo":
        name, (y0, y1, x0, x1), _ = PHOTOS[bg["photo"]]
        src = _skimage_image(name)[y0:y1, x0:x1]
        h, w = src.shape[:2]
        side = max(8, int(min(h, w) * bg["zoom"]))
        y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        out = _resize(np.ascontiguousarray(src[y : y + side, x : x + side]), n, n)
        return out[:, ::-1].copy() if rng.random() < 0.5 else out
    raise UnknownNameError(f"unknown background kind {kind!r}; regenerate the scene record")


# --------------------------------------------------------------------------------------------- rendering
def _composite(canvas: np.ndarray, g: np.ndarray, box) -> None:
    x0, y0, x1, y1 = box
    a = g[..., 3:4].astype(np.float32) * (1 / 255)
    region = canvas[y0:y1, x0:x1].astype(np.float32)
    canvas[y0:y1, x0:x1] = (region + a * (g[..., :3].astype(np.float32) - region) + 0.5).astype(np.uint8)


def _glyph_for(o: SceneObject) -> np.ndarray:
    g = glyph(o.codepoint, o.size, o.flip)
    x0, y0, x1, y1 = o.box
    if g.shape[:2] != (y1 - y0, x1 - x0):
        raise UnknownNameError(
            f"scene object {o.category} box {o.box} does not match its glyph {g.shape[1]}x{g.shape[0]}; "
            "the record was made with another font or Pillow version, regenerate it with make_scene()"
        )
    return g


def render_array(scene: Scene) -> np.ndarray:
    """The scene as a ``(336, 336, 3)`` uint8 array."""
    canvas = _render_background(scene.background)
    if scene.mirrored:
        canvas = np.ascontiguousarray(canvas[:, ::-1])
    canvas = np.array(canvas, copy=True)
    for o in scene.distractors + scene.objects:
        _composite(canvas, _glyph_for(o), o.box)
    return canvas


def render(scene: Scene):
    """The scene as a PIL RGB image of 336x336 px."""
    from PIL import Image

    return Image.fromarray(render_array(scene), "RGB")


def patch_coverage(scene: Scene) -> np.ndarray:
    """Visible-opacity fraction of each 14 px patch per object: float32 ``(n_objects, 24, 24)`` in ``[0, 1]``.

    Objects drawn later occlude earlier ones (the draw order of :func:`render_array`), so what an object
    covers is its alpha times what is left uncovered by later objects.
    """
    n = len(scene.objects)
    cov = np.zeros((n, GRID, GRID), np.float32)
    occupied = np.zeros((CANVAS, CANVAS), np.float32)
    for i in range(n - 1, -1, -1):
        o = scene.objects[i]
        x0, y0, x1, y1 = o.box
        alpha = np.zeros((CANVAS, CANVAS), np.float32)
        alpha[y0:y1, x0:x1] = _glyph_for(o)[..., 3] * (1 / 255)
        visible = alpha * (1 - occupied)
        occupied += visible
        cov[i] = visible.reshape(GRID, PATCH, GRID, PATCH).mean(axis=(1, 3))
    return cov


def patch_masks(scene: Scene, min_fraction: float = 0.1) -> np.ndarray:
    """Which 24x24 patches each object covers: bool ``(n_objects, 24, 24)``.

    A patch counts as covered when at least ``min_fraction`` of its 196 pixels are the object's (opacity
    summed). The default 0.1 ignores patches an object only grazes with its anti-aliased edge; pass
    ``min_fraction=0`` to count any touch. Used for the "object hit" statistic: an object is hit by a
    pruning if at least one of its covered patches is kept.
    """
    return patch_coverage(scene) >= max(float(min_fraction), 1e-6)


def patch_indices(scene: Scene, min_fraction: float = 0.1) -> list[list[int]]:
    """Per object, the raster indices (row * 24 + col, 0..575) of its covered patches."""
    return [np.flatnonzero(m.ravel()).tolist() for m in patch_masks(scene, min_fraction)]


def contact_sheet(path=None, size: int = 96, cols: int = 10):
    """A labelled PNG of every category variant and distractor as the font draws them (for checking by eye)."""
    from PIL import Image, ImageDraw, ImageFont

    items = [(f"{c.name}", v.codepoint) for c in C.CATEGORIES for v in c.variants]
    items += [(f"[{d.word}]", d.codepoint) for d in C.DISTRACTORS]
    rows = (len(items) + cols - 1) // cols
    cell_h = size + 18
    sheet = Image.new("RGB", (cols * (size + 8), rows * cell_h), "white")
    draw = ImageDraw.Draw(sheet)
    label_font = ImageFont.load_default(size=11)
    for i, (label, cp) in enumerate(items):
        g = glyph(cp, size)
        x, y = (i % cols) * (size + 8) + 4, (i // cols) * cell_h
        im = Image.fromarray(g)
        sheet.paste(im, (x + (size - im.width) // 2, y + (size - im.height) // 2), im)
        draw.text((x, y + size + 2), label[:16], fill="black", font=label_font)
    if path is not None:
        sheet.save(path)
    return sheet

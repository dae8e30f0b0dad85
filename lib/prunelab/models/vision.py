"""Run the vision tower on images and collect what the pruners read: layer -2 patch features and [CLS] attention.

LLaVA-1.5 feeds the LLM ``hidden_states[-2][:, 1:]`` of its tower, and the attention-based pruners (FasterVLM,
PruMerge, VisPruner, VisionZip) score patches with ``attentions[-2][:, :, 0, 1:]``, the [CLS] row of the attention
inside the layer whose output is ``hidden_states[-2]`` (methods-spec §1, §4.2). This module does the same with the
offline DINOv2-S/14 tower (:mod:`prunelab.models.dinov2`), whose 336 px input also gives 24x24 = 576 patch tokens.

Bookkeeping (checked by ``tests/test_vision.py``): ``hidden_states`` has ``L+1`` entries (0 = embeddings, k =
output of layer k-1) and ``attentions`` has ``L`` (k = probabilities inside layer k), so ``attentions[-2]`` belongs
to layer ``L-2``, whose output is ``hidden_states[-2]``. Per-layer queries/keys are recomputed from the captured
*input* of the attention module with the module's own ``q_proj``/``k_proj`` (methods-spec §4.2, the
version-independent route); layer indices are stored as negative numbers, as in ``attentions[layer]``.

Preprocessing: RGB (greyscale/palette/CMYK converted, alpha composited on white), optional LLaVA-style
pad-to-square with the mean colour (``expand2square`` in LLaVA's ``mm_utils.py``, background ``int(m*255)``),
bicubic resize to ``image_size`` x ``image_size``, ImageNet mean/std (DINOv2's statistics).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from prunelab.device import bars_off
from prunelab.errors import ImageError, UnknownNameError
from prunelab.methods.base import VisualContext
from prunelab.models.dinov2 import DINOV2_PATCH, IMAGE_MEAN, IMAGE_SIZE, IMAGE_STD, build_dinov2
from prunelab.paths import atomic_write, cache_dir

#: Background used when an image with transparency is flattened to RGB.
ALPHA_BACKGROUND = (255, 255, 255)
CACHE_FORMAT = 1  # bump when the stored tensors change meaning


@dataclass(frozen=True)
class Preprocess:
    """Image preprocessing settings (part of the feature-cache key)."""

    image_size: int = IMAGE_SIZE
    pad_to_square: bool = False
    mean: tuple[float, float, float] = IMAGE_MEAN
    std: tuple[float, float, float] = IMAGE_STD
    resample: str = "bicubic"

    def __post_init__(self):
        if not isinstance(self.image_size, int) or self.image_size < DINOV2_PATCH or self.image_size % DINOV2_PATCH:
            raise UnknownNameError(
                f"image_size={self.image_size!r} is not a positive multiple of the {DINOV2_PATCH}-px patch; use e.g. {IMAGE_SIZE}"
            )
        if self.resample not in _RESAMPLE:
            raise UnknownNameError(f"unknown resample {self.resample!r}; use one of {', '.join(_RESAMPLE)}")

    @property
    def grid(self) -> tuple[int, int]:
        side = self.image_size // DINOV2_PATCH
        return (side, side)

    def key(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


_RESAMPLE = {"bicubic": 3, "bilinear": 2, "lanczos": 1, "nearest": 0}  # PIL.Image.Resampling values


# --------------------------------------------------------------------------------------------------------------
# Reading images


def _name_of(image: Any) -> str:
    if isinstance(image, (str, Path)):
        return str(image)
    return f"<{type(image).__name__}>"


def to_rgb(img) -> Image.Image:  # noqa: F821
    """Return ``img`` (a PIL image) as 8-bit RGB.

    Greyscale, palette, CMYK and YCbCr are converted by Pillow; 16-bit greyscale is scaled down by 256 (not
    clipped); images with an alpha channel (or palette transparency) are composited over
    :data:`ALPHA_BACKGROUND`, because dropping alpha exposes arbitrary colours under transparent pixels.
    """
    from PIL import Image

    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        a = np.asarray(img, dtype=np.float64)
        if mode.startswith("I;16") or (mode == "I" and a.size and a.max() > 255):
            a = a / 256.0  # 16-bit data
        grey = np.clip(np.rint(a), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, ALPHA_BACKGROUND + (255,))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    try:
        return img.convert("RGB")
    except (ValueError, OSError) as err:
        raise ImageError(
            f"cannot convert an image of mode {mode!r} to RGB ({err}); save it as an RGB PNG/JPEG"
        ) from None


def load_image(image, name: str | None = None):
    """Read ``image`` (path, PIL image, ``(H,W)``/``(H,W,3|4)`` uint8 array or float array in [0,1], or encoded
    bytes) as an RGB PIL image, applying EXIF orientation. Bad input raises a one-line :class:`ImageError`."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    name = name or _name_of(image)
    try:
        if isinstance(image, (str, Path)):
            p = Path(image)
            if not p.is_file():
                raise ImageError(f"image file not found: {p}; check the path")
            with Image.open(p) as im:
                im.load()
                img = ImageOps.exif_transpose(im)
        elif isinstance(image, (bytes, bytearray, memoryview)):
            with Image.open(io.BytesIO(bytes(image))) as im:
                im.load()
                img = ImageOps.exif_transpose(im)
        elif isinstance(image, Image.Image):
            image.load()
            img = image
        elif isinstance(image, np.ndarray):
            img = _from_array(image, name)
        elif isinstance(image, torch.Tensor):
            raise ImageError(
                f"{name}: got a torch tensor; pass a PIL image, a path or an (H, W, 3) uint8 array (tensors are ambiguous about layout and scale)"
            )
        else:
            raise ImageError(
                f"{name}: unsupported image type {type(image).__name__}; pass a path, PIL image, bytes or numpy array"
            )
    except ImageError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        why = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ImageError(
            f"cannot read image {name}: {why[:150]}; the file is corrupt or not an image — re-save it as PNG or JPEG"
        ) from None
    w, h = img.size
    if w < DINOV2_PATCH or h < DINOV2_PATCH:
        raise ImageError(
            f"image {name} is {w}x{h} px, smaller than one {DINOV2_PATCH}x{DINOV2_PATCH} patch; use images at least {DINOV2_PATCH} px on each side ({IMAGE_SIZE} px recommended)"
        )
    return to_rgb(img)


def _from_array(a: np.ndarray, name: str):
    from PIL import Image

    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (3, 4))):
        raise ImageError(
            f"{name}: array of shape {a.shape} is not an image; pass (H, W), (H, W, 3) or (H, W, 4) in channel-last layout"
        )
    if a.dtype == np.uint8:
        u8 = a
    elif np.issubdtype(a.dtype, np.floating):
        if not np.isfinite(a).all() or a.min() < 0 or a.max() > 1:
            raise ImageError(
                f"{name}: float image values must be finite and within [0, 1]; scale the array or pass uint8"
            )
        u8 = np.rint(a * 255).astype(np.uint8)
    else:
        raise ImageError(f"{name}: unsupported array dtype {a.dtype}; pass uint8 (0..255) or float (0..1)")
    mode = {2: "L", 3: "RGB", 4: "RGBA"}[2 if u8.ndim == 2 else u8.shape[2]]
    return Image.fromarray(np.ascontiguousarray(u8), mode)


def expand_to_square(img, background: tuple[int, int, int]):
    """Pad ``img`` to a square with ``background``, the image centred (LLaVA ``mm_utils.expand2square``)."""
    from PIL import Image

    w, h = img.size
    if w == h:
        return img
    side = max(w, h)
    out = Image.new("RGB", (side, side), background)
    out.paste(img, ((side - w) // 2, (side - h) // 2))
    return out


def preprocess(img, settings: Preprocess = Preprocess()) -> torch.Tensor:
    """RGB PIL image -> normalised ``(3, S, S)`` float32 tensor (see module docstring)."""
    if settings.pad_to_square:
        img = expand_to_square(img, tuple(int(m * 255) for m in settings.mean))
    s = settings.image_size
    if img.size != (s, s):
        img = img.resize((s, s), resample=_RESAMPLE[settings.resample])
    x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
    mean = torch.tensor(settings.mean, dtype=torch.float32)[:, None, None]
    std = torch.tensor(settings.std, dtype=torch.float32)[:, None, None]
    return ((x - mean) / std).contiguous()


# --------------------------------------------------------------------------------------------------------------
# Tower access and q/k capture


_DEFAULT_TOWER = None


def default_tower():
    """The offline DINOv2-S/14 tower (built once per process, see :func:`prunelab.models.dinov2.build_dinov2`)."""
    global _DEFAULT_TOWER
    if _DEFAULT_TOWER is None:
        _DEFAULT_TOWER = build_dinov2()
    return _DEFAULT_TOWER


def encoder_layers(tower) -> Sequence[torch.nn.Module]:
    """The tower's transformer layers (Dinov2 ``encoder.layer``; CLIP ``encoder.layers`` with or without the
    ``vision_model`` wrapper of older transformers)."""
    root = getattr(tower, "vision_model", tower)
    enc = root.encoder
    return enc.layer if hasattr(enc, "layer") else enc.layers


def attention_module(layer: torch.nn.Module) -> torch.nn.Module:
    return layer.attention if hasattr(layer, "attention") else layer.self_attn


def _canonical_layer(layer: int, n_layers: int) -> int:
    if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) or not -n_layers <= int(layer) < n_layers:
        raise UnknownNameError(
            f"qk layer {layer!r} is outside the tower's {n_layers} layers; use -{n_layers}..{n_layers - 1} (e.g. -2)"
        )
    return int(layer) - n_layers if layer >= 0 else int(layer)


@contextlib.contextmanager
def capture_attention_inputs(tower, layers: Iterable[int]):
    """Within the block, record the input hidden states of the attention module of each layer in ``layers``.

    Yields a dict ``{layer: (B, N, C) tensor}`` filled by the forward passes run inside the block. The hooks are
    removed on exit, also when the block raises.
    """
    mods = encoder_layers(tower)
    store: dict[int, torch.Tensor] = {}
    handles = []
    try:
        for layer in layers:

            def hook(module, args, kwargs, output, _layer=layer):
                x = args[0] if args else kwargs["hidden_states"]
                store[_layer] = x.detach()

            handles.append(attention_module(mods[layer]).register_forward_hook(hook, with_kwargs=True))
        yield store
    finally:
        for h in handles:
            h.remove()


def queries_keys(attn: torch.nn.Module, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-head query and key projections ``(B, H, N, d_head)`` (unscaled) of an attention module's input."""
    b, n, _ = hidden.shape
    d = attn.head_dim
    q = attn.q_proj(hidden).view(b, n, -1, d).transpose(1, 2)
    k = attn.k_proj(hidden).view(b, n, -1, d).transpose(1, 2)
    return q, k


def cls_attention_from_qk(q: torch.Tensor, k: torch.Tensor, scaling: float | None = None) -> torch.Tensor:
    """The [CLS] row ``softmax(q_0 k^T * scale)`` over all ``N+1`` tokens, shape ``(B, H, N+1)``."""
    scale = q.shape[-1] ** -0.5 if scaling is None else scaling
    logits = torch.einsum("bhd,bhnd->bhn", q[:, :, 0].double(), k.double()) * scale
    return torch.softmax(logits, dim=-1).to(q.dtype)


_FINGERPRINTS: weakref.WeakKeyDictionary[torch.nn.Module, str] = weakref.WeakKeyDictionary()


def tower_fingerprint(tower) -> str:
    """sha256 over the tower's parameters and buffers (names, shapes, dtypes, bytes); memoised per module.

    Part of the feature-cache key, so features of different weights never mix. Towers are frozen; a tower whose
    weights change after the first call keeps its first fingerprint.
    """
    fp = _FINGERPRINTS.get(tower)
    if fp is None:
        h = hashlib.sha256()
        for name, t in sorted(tower.state_dict().items()):
            t = t.detach().to("cpu").contiguous()
            h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        fp = h.hexdigest()
        _FINGERPRINTS[tower] = fp
    return fp


# --------------------------------------------------------------------------------------------------------------
# Batched encoding


@dataclass
class VisionOutputs:
    """Tower outputs for a batch of ``B`` images (CPU float32).

    features: ``(B, N, C)`` layer -2 patch tokens (``hidden_states[-2][:, 1:]``), N = 576 at 336 px.
    cls_feature: ``(B, C)`` the [CLS] token of ``hidden_states[-2]``.
    cls_attention: ``(B, N)`` head-mean [CLS]->patch attention of ``attentions[-2]`` (not renormalised: the CLS->CLS
        share is left out, as in FasterVLM).
    cls_attention_heads: ``(B, H, N)`` the same per head.
    queries / keys: ``{layer: (B, H, N+1, d_head)}`` for the requested layers (negative indices, CLS at row 0).
    grid: patch grid ``(rows, cols)``; image_ids: sha256 prefix of each image's pixels (or the given names);
    image_sizes: original ``(width, height)``; from_cache: whether each row came from the feature cache.
    """

    features: torch.Tensor
    cls_feature: torch.Tensor
    cls_attention: torch.Tensor
    cls_attention_heads: torch.Tensor
    queries: dict[int, torch.Tensor] = field(default_factory=dict)
    keys: dict[int, torch.Tensor] = field(default_factory=dict)
    grid: tuple[int, int] = (IMAGE_SIZE // DINOV2_PATCH, IMAGE_SIZE // DINOV2_PATCH)
    image_ids: list[str] = field(default_factory=list)
    image_sizes: list[tuple[int, int]] = field(default_factory=list)
    from_cache: list[bool] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.features.shape[0])


def _image_key(rgb, settings: Preprocess, fingerprint: str) -> str:
    h = hashlib.sha256()
    h.update(f"prunelab-vision/{CACHE_FORMAT}|{fingerprint}|{settings.key()}|{rgb.size[0]}x{rgb.size[1]}|".encode())
    h.update(rgb.tobytes())
    return h.hexdigest()


def _cache_root(cache) -> Path | None:
    if cache is False or cache is None:
        return None
    if cache is True:
        return cache_dir("vision-features")
    return Path(cache)


def _load_cached(path: Path, qk: Sequence[int]) -> dict[str, torch.Tensor] | None:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        return None
    try:
        entry = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError):
        return None  # unreadable entry: recompute and overwrite it
    needed = ["features", "cls_feature", "cls_attention_heads"] + [
        f"{kind}.{layer}" for layer in qk for kind in ("queries", "keys")
    ]
    return entry if all(k in entry for k in needed) else None


def _store(path: Path, entry: dict[str, torch.Tensor], meta: dict[str, str]) -> None:
    from safetensors.torch import save

    blob = save({k: v.contiguous() for k, v in entry.items()}, metadata=meta)
    with atomic_write(path) as fh:
        fh.write(blob)


def _forward(tower, pixels: torch.Tensor, qk: Sequence[int]) -> list[dict[str, torch.Tensor]]:
    """One no-grad forward of a batch; returns one CPU entry per image."""
    param = next(tower.parameters())
    eager = getattr(tower.config, "_attn_implementation", "eager") == "eager"
    n_layers = len(encoder_layers(tower))
    capture = sorted(set(qk) | ({-2} if not eager else set()))
    with torch.inference_mode(), capture_attention_inputs(tower, [n_layers + c for c in capture]) as store:
        out = tower(
            pixel_values=pixels.to(param.device, param.dtype), output_hidden_states=True, output_attentions=eager
        )
    mods = encoder_layers(tower)
    qks = {}
    with torch.inference_mode():
        for c in capture:
            attn = attention_module(mods[n_layers + c])
            qks[c] = queries_keys(attn, store[n_layers + c])
    hs = out.hidden_states[-2].float().cpu()
    if eager and out.attentions is not None and out.attentions[-2] is not None:
        heads = out.attentions[-2][:, :, 0, 1:].float().cpu()
    else:  # sdpa/flash give no probabilities: recompute the [CLS] row from layer -2's q/k
        q, k = qks[-2]
        heads = cls_attention_from_qk(q.float(), k.float(), attention_module(mods[-2]).scaling)[:, :, 1:].cpu()
    entries = []
    for i in range(pixels.shape[0]):
        e = {
            "features": hs[i, 1:].contiguous(),
            "cls_feature": hs[i, 0].contiguous(),
            "cls_attention_heads": heads[i].contiguous(),
        }
        for c in qk:
            q, k = qks[c]
            e[f"queries.{c}"] = q[i].float().cpu().contiguous()
            e[f"keys.{c}"] = k[i].float().cpu().contiguous()
        entries.append(e)
    return entries


def encode_images(
    images,
    tower=None,
    batch_size: int = 4,
    qk_layers: Iterable[int] = (),
    cache=True,
    *,
    pad_to_square: bool = False,
    image_size: int = IMAGE_SIZE,
    names: Sequence[str] | None = None,
    progress: bool | None = None,
) -> VisionOutputs:
    """Encode ``images`` (paths, PIL images, arrays or bytes; one or a list) with the vision tower.

    Parameters
    ----------
    tower: a ``Dinov2Model`` (or CLIP vision model); default the offline DINOv2-S/14 (:func:`default_tower`).
        Eager attention gives ``attentions[-2]`` directly; other implementations fall back to recomputing the
        [CLS] row from layer -2's queries/keys (same numbers up to float rounding).
    batch_size: images per forward pass (4 is about 2.5x faster per image than 1 on CPU).
    qk_layers: layers whose per-head queries/keys to return (e.g. ``(-2,)`` for VisionZip, ``(-1,)`` for PruMerge).
    cache: ``True`` (``cache/vision-features``), a folder, or ``False``. Entries are safetensors files keyed by the
        sha256 of the decoded RGB pixels + preprocessing settings + the tower's weight fingerprint, written
        atomically; unreadable entries are recomputed.
    pad_to_square: LLaVA's ``image_aspect_ratio='pad'`` (mean-colour padding) instead of squashing.
    names: identifiers stored as ``image_ids`` (default: the first 16 hex digits of each cache key).
    progress: tqdm bar (default: shown on a terminal).
    """
    from tqdm.auto import tqdm

    single = not isinstance(images, (list, tuple))
    items = [images] if single else list(images)
    if not items:
        raise ImageError("encode_images got no images; pass a path, an image or a non-empty list of them")
    if names is not None and len(names) != len(items):
        raise ImageError(f"got {len(names)} names for {len(items)} images; pass one name per image")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise UnknownNameError(f"batch_size must be a positive integer, got {batch_size!r}")
    settings = Preprocess(image_size=image_size, pad_to_square=bool(pad_to_square))
    tower = default_tower() if tower is None else tower
    n_layers = len(encoder_layers(tower))
    qk = sorted({_canonical_layer(layer, n_layers) for layer in qk_layers})
    root = _cache_root(cache)
    fingerprint = tower_fingerprint(tower)
    meta = {"format": str(CACHE_FORMAT), "tower": fingerprint, "settings": settings.key()}

    entries: list[dict[str, torch.Tensor] | None] = [None] * len(items)
    keys: list[str] = []
    sizes: list[tuple[int, int]] = []
    hits: list[bool] = []
    bar = tqdm(total=len(items), desc="vision tower", unit="img", disable=bars_off(progress))
    try:
        for start in range(0, len(items), batch_size):
            chunk = range(start, min(start + batch_size, len(items)))
            todo, pixels = [], []
            for i in chunk:
                name = names[i] if names is not None else None
                rgb = load_image(items[i], name=name)
                key = _image_key(rgb, settings, fingerprint)
                keys.append(key)
                sizes.append(rgb.size)
                path = root / fingerprint[:16] / f"{key}.safetensors" if root is not None else None
                cached = _load_cached(path, qk) if path is not None else None
                hits.append(cached is not None)
                if cached is not None:
                    entries[i] = cached
                else:
                    todo.append((i, path))
                    pixels.append(preprocess(rgb, settings))
            if todo:
                fresh = _forward(tower, torch.stack(pixels), qk)
                for (i, path), e in zip(todo, fresh):
                    entries[i] = e
                    if path is not None:
                        _store(path, e, meta)
            bar.update(len(chunk))
    finally:
        bar.close()

    def stack(name: str) -> torch.Tensor:
        return torch.stack([e[name] for e in entries])

    heads = stack("cls_attention_heads")
    return VisionOutputs(
        features=stack("features"),
        cls_feature=stack("cls_feature"),
        cls_attention=heads.mean(1),
        cls_attention_heads=heads,
        queries={c: stack(f"queries.{c}") for c in qk},
        keys={c: stack(f"keys.{c}") for c in qk},
        grid=settings.grid,
        image_ids=list(names) if names is not None else [k[:16] for k in keys],
        image_sizes=sizes,
        from_cache=hits,
        settings={**asdict(settings), "tower": fingerprint[:16], "qk_layers": qk},
    )


def to_context(
    outputs: VisionOutputs,
    i: int,
    projector=None,
    *,
    text_embeds: torch.Tensor | None = None,
    erank_stats: dict[str, float] | None = None,
    image_id: str | None = None,
) -> VisualContext:
    """The :class:`~prunelab.methods.base.VisualContext` of image ``i`` of ``outputs`` (views, no copies).

    ``projector`` (``(M, C) -> (M, D)``) makes the ``"projected"`` feature space available; ``erank_stats`` are the
    dataset statistics AgilePruner needs.
    """
    if not -len(outputs) <= i < len(outputs):
        raise IndexError(f"image index {i} out of range for {len(outputs)} images")
    return VisualContext(
        features=outputs.features[i],
        cls_attention=outputs.cls_attention[i],
        cls_attention_heads=outputs.cls_attention_heads[i],
        cls_feature=outputs.cls_feature[i],
        projector=projector,
        queries={layer: q[i] for layer, q in outputs.queries.items()},
        keys={layer: k[i] for layer, k in outputs.keys.items()},
        grid=tuple(outputs.grid),
        text_embeds=text_embeds,
        erank_stats=erank_stats,
        image_id=image_id if image_id is not None else (outputs.image_ids[i] if outputs.image_ids else None),
    )


__all__ = [
    "Preprocess",
    "VisionOutputs",
    "load_image",
    "to_rgb",
    "expand_to_square",
    "preprocess",
    "default_tower",
    "encoder_layers",
    "capture_attention_inputs",
    "queries_keys",
    "cls_attention_from_qk",
    "tower_fingerprint",
    "encode_images",
    "to_context",
]

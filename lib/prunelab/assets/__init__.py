"""Offline assets: :mod:`.debian` unpacks Debian packages into the cache (the owners of WordNet, the emoji font and
the OpenCV photos call it when their asset is missing); :mod:`.setup_assets` runs every owner's fetch step in order
(``python -m prunelab.assets.setup_assets``, ``make assets``).
"""

"""Training of the embedded models (never imported by inference code: the loaders read only the packaged deltas)."""

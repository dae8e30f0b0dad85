"""ToyLLaVA's command line: ``python -m prunelab.train.toyllava train|eval|card`` (``make toy-model`` runs ``train``).

The pipeline is :mod:`prunelab.train.toytrain`; this module only runs its :func:`~prunelab.train.toytrain.cli`, so
the trainer is imported under its own name (never as ``__main__``) and the inference loader
:mod:`prunelab.models.toyllava` never imports the trainer.
"""

from __future__ import annotations

from prunelab.train.toytrain import cli


def main(argv: list[str] | None = None) -> int:
    return cli(argv)


if __name__ == "__main__":
    raise SystemExit(main())

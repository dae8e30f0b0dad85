"""prunelab: a reproducible study of attention- and diversity-based visual token pruning.

Reproduces *AgilePruner: An Empirical Study of Attention and Diversity for Adaptive Visual Token Pruning in
Large Vision-Language Models* (Baek, Song, Kim, Kong; ICLR 2026; arXiv 2603.01236).
"""

from prunelab.errors import (  # noqa: F401
    AssetError,
    BudgetError,
    CapabilityError,
    DeviceError,
    ImageError,
    PrunelabError,
    UnknownNameError,
)

__version__ = "0.1.0"

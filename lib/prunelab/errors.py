"""One-line, actionable errors.

Every error the library raises on bad input is a :class:`PrunelabError` whose message names the problem *and*
the fix in one line, so notebooks and the CLI can show it as is.
"""

from __future__ import annotations


class PrunelabError(Exception):
    """Base class: ``str(err)`` is one line saying what is wrong and how to fix it."""


class BudgetError(PrunelabError, ValueError):
    """A token budget that is not an integer in ``1..N``."""


class UnknownNameError(PrunelabError, ValueError):
    """An unknown method, model, image set or option name."""


class AssetError(PrunelabError, RuntimeError):
    """A missing or corrupt offline asset (wheel, font, weights, WordNet data...)."""


class ImageError(PrunelabError, ValueError):
    """An image that cannot be read or used."""


class DeviceError(PrunelabError, RuntimeError):
    """A device that was asked for but is not available."""


class CapabilityError(PrunelabError, RuntimeError):
    """A method needs a signal (attention, keys, text...) that the model or context cannot provide."""


def check_budget(budget, n_tokens: int) -> int:
    """Validate an absolute token budget ``T`` against ``N`` tokens and return it as ``int``.

    Budgets are absolute counts, never ratios (methods-spec §5). ``bool`` and non-integral floats are refused.
    """
    if (
        isinstance(budget, bool)
        or not isinstance(budget, (int,))
        and not (hasattr(budget, "__index__") or (isinstance(budget, float) and float(budget).is_integer()))
    ):
        raise BudgetError(
            f"budget must be an integer number of tokens, got {budget!r}; pass e.g. budget=64 (absolute T, not a ratio)"
        )
    t = int(budget)
    if t <= 0 or t > n_tokens:
        raise BudgetError(
            f"budget T={t} is outside 1..{n_tokens} (the image has {n_tokens} visual tokens); choose 1 <= T <= {n_tokens}"
        )
    return t

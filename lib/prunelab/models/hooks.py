"""Scoped PyTorch hooks: every hook registered through a :class:`HookScope` is removed when the ``with`` block
ends, whether it ends normally or by an exception.

This is how the adapter reads tensors from inside the vision tower and edits the decoder's inputs without
forking transformers or patching its classes: hooks live on *module instances*, only inside the block, so the
model outside the block behaves exactly as loaded (the tests check that outputs are bitwise identical and that
no hook is left behind).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn


class HookScope:
    """Collects hook handles and removes them all on exit.

    >>> with HookScope() as scope:
    ...     scope.forward_pre(layer, fn, with_kwargs=True)
    ...     model(...)
    # all hooks gone here
    """

    def __init__(self) -> None:
        self._handles: list[Any] = []

    def forward_pre(self, module: nn.Module, fn: Callable, *, with_kwargs: bool = False):
        h = module.register_forward_pre_hook(fn, with_kwargs=with_kwargs)
        self._handles.append(h)
        return h

    def forward(self, module: nn.Module, fn: Callable, *, with_kwargs: bool = False):
        h = module.register_forward_hook(fn, with_kwargs=with_kwargs)
        self._handles.append(h)
        return h

    def capture_output(self, module: nn.Module, store: dict, key) -> None:
        """Store ``module``'s (first) output under ``store[key]`` on every call (the last call wins)."""

        def _hook(_mod, _args, out):
            store[key] = out[0] if isinstance(out, (tuple, list)) else out

        self.forward(module, _hook)

    def remove(self) -> None:
        while self._handles:
            self._handles.pop().remove()

    def __len__(self) -> int:
        return len(self._handles)

    def __enter__(self) -> HookScope:
        return self

    def __exit__(self, *exc) -> bool:
        self.remove()
        return False


def scoped_hooks() -> HookScope:
    """A fresh :class:`HookScope` (use it as a context manager)."""
    return HookScope()


def count_hooks(module: nn.Module) -> int:
    """Number of forward / forward-pre hooks on ``module`` and all its submodules."""
    total = 0
    for m in module.modules():
        total += len(m._forward_hooks) + len(m._forward_pre_hooks)
    return total


def hook_ids(module: nn.Module) -> set[tuple[str, str, int]]:
    """Identity of every forward / forward-pre hook under ``module``. transformers 5.x installs its own
    output-capturing hooks the first time outputs are requested, so tests compare this set before and after a
    scoped edit rather than expecting zero."""
    out = set()
    for name, m in module.named_modules():
        out |= {(name, "fwd", k) for k in m._forward_hooks}
        out |= {(name, "pre", k) for k in m._forward_pre_hooks}
    return out


@torch.no_grad()
def state_fingerprint(module: nn.Module) -> dict[str, torch.Tensor]:
    """Copies of all parameters and buffers, to check that a scoped edit changed no weight."""
    out = {f"p:{k}": v.detach().clone() for k, v in module.named_parameters()}
    out.update({f"b:{k}": v.detach().clone() for k, v in module.named_buffers()})
    return out


__all__ = ["HookScope", "scoped_hooks", "count_hooks", "hook_ids", "state_fingerprint"]

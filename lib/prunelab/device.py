"""Device selection with one clear error when an accelerator is asked for but absent."""

from __future__ import annotations

import contextlib

import torch

from prunelab.errors import DeviceError, UnknownNameError

_CHOICES = ("auto", "cpu", "cuda")


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """Map ``"auto"`` / ``"cpu"`` / ``"cuda"`` (or ``"cuda:N"``, or a ``torch.device``) to a ``torch.device``.

    ``"auto"`` (and ``None``) picks the first CUDA device when one is usable and the CPU otherwise. Asking for
    ``"cuda"`` on a machine without a usable CUDA device raises :class:`DeviceError` instead of failing later
    inside a kernel.
    """
    if isinstance(device, torch.device):
        device = str(device)
    if device is None:
        device = "auto"
    name = str(device).strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise DeviceError(
                f"device {device!r} was requested but no CUDA device is available; pass device='cpu' or 'auto'"
            )
        dev = torch.device(name)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DeviceError(
                f"device {device!r} does not exist (this machine has {torch.cuda.device_count()} CUDA devices); "
                f"pass device='cuda:0' or 'auto'"
            )
        return dev
    raise UnknownNameError(f"unknown device {device!r}; known: {', '.join(_CHOICES)} (or 'cuda:N')")


def synchronize(device: torch.device | str | None) -> None:
    """Wait for queued kernels so wall-clock timings measure the work (no-op on CPU)."""
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


__all__ = ["resolve_device", "synchronize"]


@contextlib.contextmanager
def cpu_threads(n: int | None):
    """Run the block with ``torch.set_num_threads(n)`` and restore the previous count (``None``: unchanged).

    Token selection works on small matrices (576 x 384 and smaller); with several threads on a shared 2-core
    machine the BLAS/OpenMP threads spin-wait for each other and the same operation can get 10-20x slower than
    on one thread (measured on an erank SVD and on the erank-greedy ceiling), so the runners select on one.
    """
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def bars_off(progress: bool | None) -> bool:
    """tqdm's ``disable`` for a loop's ``progress`` parameter: ``True`` / ``False`` as given; ``None`` (the default)
    shows bars only on a terminal (stderr a TTY). Not ``disable=None``: ``tqdm.notebook`` reads that as "show", which
    put progress bars into the book's executed chapters (issue 16)."""
    if progress is None:
        import sys

        return not (hasattr(sys.stderr, "isatty") and sys.stderr.isatty())
    return not progress

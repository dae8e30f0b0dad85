"""prunelab.device.bars_off: the progress-bar rule every study loop uses."""

from __future__ import annotations

import io
import sys

from prunelab.device import bars_off


class _TTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_bars_follow_the_parameter_and_default_to_terminals_only(monkeypatch):
    assert bars_off(True) is False and bars_off(False) is True
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # a notebook kernel's stderr is no terminal
    assert bars_off(None) is True
    monkeypatch.setattr(sys, "stderr", _TTY())
    assert bars_off(None) is False

"""prunelab.paths: atomic writes keep the mode a plain open() would give (issue 13, item 14)."""

from __future__ import annotations

import os
import stat

import pytest

from prunelab.paths import atomic_dir, atomic_write, current_umask


@pytest.fixture
def umask():
    old = os.umask(0o022)
    os.umask(old)

    def set_(mask):
        os.umask(mask)

    yield set_
    os.umask(old)


def _mode(p) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077, 0o027])
def test_atomic_write_respects_the_umask(tmp_path, umask, mask):
    umask(mask)
    assert current_umask() == mask
    with atomic_write(tmp_path / "r.csv", "w") as fh:
        fh.write("a,b\n")
    with open(tmp_path / "plain.csv", "w") as fh:  # what the file would get without the rename
        fh.write("a,b\n")
    assert _mode(tmp_path / "r.csv") == 0o666 & ~mask == _mode(tmp_path / "plain.csv")
    with atomic_dir(tmp_path / "d") as d:
        (d / "x").write_text("x")
    os.mkdir(tmp_path / "plain-dir")
    assert _mode(tmp_path / "d") == 0o777 & ~mask == _mode(tmp_path / "plain-dir")


def test_atomic_write_replaces_an_existing_file_and_leaves_nothing_on_error(tmp_path, umask):
    umask(0o022)
    p = tmp_path / "r.json"
    p.write_text("old")
    os.chmod(p, 0o600)
    with atomic_write(p, "w") as fh:
        fh.write("new")
    assert p.read_text() == "new" and _mode(p) == 0o644
    with pytest.raises(RuntimeError), atomic_write(p, "w") as fh:
        fh.write("half")
        raise RuntimeError("boom")
    assert p.read_text() == "new" and sorted(x.name for x in tmp_path.iterdir()) == ["r.json"]

"""The result caches (issue 13, items 12 and 13): an entry that is not intact is a miss (recomputed), a table read
back equals the one computed, redundant columns are stored once, and ``python -m prunelab.study.cache`` sizes, prunes and
clears them."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from prunelab.errors import UnknownNameError
from prunelab.models import loader as L
from prunelab.models.encoders import PixelPatchEncoder
from prunelab.paths import REPO_ROOT
from prunelab.study import cache as C, generation as G, runner as R, tablecache as TC
from prunelab.study.data import ImageItem

# ---- the entry format -------------------------------------------------------------------------------------------


def _frame(n=420):
    rng = np.random.default_rng(0)
    return pd.DataFrame(
        {
            "image_id": ["000000139"] * n,  # constant, looks like a number
            "budget": np.arange(n, dtype="int64"),
            "score": rng.standard_normal(n) * 1e-7,  # floats that a CSV round trip may not keep exactly
            "edge": [(-0.0, math.nan, math.inf, 1e-300, 0.1 + 0.2)[i % 5] for i in range(n)],
            "text": [
                ("", "nan", "None", 'naïve ✓ "quoted", comma\nnewline', "NA", "lone \ud800 surrogate")[i % 6]
                for i in range(n)
            ],
            "maybe": [None if i % 3 else "x" for i in range(n)],
            "flag": [bool(i % 2) for i in range(n)],
            "kept_indices": [[3, 17, 40]] * n,  # shared selection: stored once
            "per_row": [[i, -1] for i in range(n)],
            "method_stats": ['{"rho": 0.5}'] * n,
        }
    )


@pytest.mark.parametrize("module", [R, G], ids=["runner", "generation"])
def test_every_code_hash_pattern_names_library_files(module):
    """A pattern that matches nothing (a module moved or renamed) would silently drop its code from the cache key."""
    base = REPO_ROOT / "lib" / "prunelab"
    empty = [p for p in module._CODE_FILES if not any(base.glob(p))]
    assert not empty, f"{module.__name__}._CODE_FILES names no file for {empty}"
    own = Path(module.__file__).resolve().relative_to(base)
    assert any(own in {f.relative_to(base) for f in base.glob(p)} for p in module._CODE_FILES), own


def test_a_table_read_back_equals_the_one_written(tmp_path):
    df = _frame()
    TC.write_table(df, tmp_path / "e.json")
    back = TC.read_table(tmp_path / "e.json")
    pd.testing.assert_frame_equal(back, df, check_exact=True)
    assert [str(x) for x in back["edge"][:2]] == ["-0.0", "nan"]
    back.loc[0, "kept_indices"].append(99)  # constant lists come back as one object per row
    assert back.loc[1, "kept_indices"] == [3, 17, 40]
    empty = df.iloc[:0]
    TC.write_table(empty, tmp_path / "empty.json")
    pd.testing.assert_frame_equal(TC.read_table(tmp_path / "empty.json"), empty)


def test_constant_columns_are_stored_once(tmp_path):
    df = _frame(50)
    TC.write_table(df, tmp_path / "e.json")
    text = (tmp_path / "e.json").read_text()
    assert text.count("[3,17,40]") == 1 and text.count("000000139") == 1
    assert text.count("[0,-1]") == 1 and text.count("[49,-1]") == 1  # varying rows stay per row


def _corruptions(path):
    """(name, bytes) variants of an entry file: cut at every line end and inside, altered, invalid UTF-8."""
    data = path.read_bytes()
    cuts = sorted({i + 1 for i, b in enumerate(data) if b == ord("\n")} | {len(data) // 2, len(data) - 1, 0})
    out = [(f"cut at {c} of {len(data)}", data[:c]) for c in cuts if c < len(data)]
    mid = len(data) // 2
    out.append(("invalid UTF-8", data[:mid] + b"\xff\xfe\xc3" + data[mid + 3 :]))
    out.append(("one byte changed", data[:mid] + bytes([data[mid] ^ 1]) + data[mid + 1 :]))
    out.append(("garbage", b"\x00\x01 not an entry"))
    return out


def test_entries_that_are_not_intact_are_misses(tmp_path):
    p = tmp_path / "e.json"
    TC.write_table(_frame(30), p)
    for name, data in _corruptions(p):
        q = tmp_path / "bad.json"
        q.write_bytes(data)
        assert TC.read_table(q) is None, name
    # well-formed but lacking a column the reader needs (an older writer, a hand edit): a miss as well
    TC.write_table(_frame(30).drop(columns=["text"]), tmp_path / "old.json")
    assert TC.read_table(tmp_path / "old.json", ["image_id", "text"]) is None
    assert TC.read_table(tmp_path / "old.json", ["image_id"]) is not None
    TC.write_entry(tmp_path / "o.json", {"erank_full_vision": 1.5, "name": "ü"})
    assert TC.read_entry(tmp_path / "o.json") == {"erank_full_vision": 1.5, "name": "ü"}
    for name, data in _corruptions(tmp_path / "o.json"):
        (tmp_path / "o2.json").write_bytes(data)
        assert TC.read_entry(tmp_path / "o2.json") is None, name
    assert TC.read_table(tmp_path / "o.json") is None and TC.read_entry(p) is None  # kinds do not mix


# ---- run_vision ---------------------------------------------------------------------------------------------------


def _images(k=3):
    rng = np.random.default_rng(0)
    out = []
    for i in range(k):
        a = (rng.random((60, 80, 3)) * 255).astype("uint8")
        a[10:30, 20:50] = [250, 20, 20]
        out.append(
            ImageItem(
                id=f"img{i}",
                source="unit",
                complexity=None if i == 2 else "simple",
                loader=(lambda a=a: Image.fromarray(a)),
            )
        )
    return out


class _Encoder(PixelPatchEncoder):
    def __init__(self):
        super().__init__(grid=8, patch=6, pool=2)
        self.calls = 0

    def __call__(self, images, ids):
        self.calls += len(images)
        return super().__call__(images, ids)


def test_run_vision_recomputes_every_damaged_entry(tmp_path):
    """Issue 13 item 12: a rows file cut at a row boundary used to come back short, a stats file with invalid
    UTF-8 crashed the run. Now every damaged entry is recomputed and the table equals the first one."""
    enc = _Encoder()
    kw = dict(encoder=enc, cache_dir=tmp_path, progress=False)
    first = R.run_vision(_images(), ["FasterVLM", "DivPrune"], [8, 16], **kw)
    rows = sorted(tmp_path.glob("v*/rows/*/*"))
    stats = sorted(tmp_path.glob("v*/images/*/*"))
    assert len(rows) == 3 and len(stats) == 3  # one rows entry per image, no second copy of the run
    timing = ["select_time_s"]
    for target in (rows[1], stats[1]):
        good = target.read_bytes()
        for name, data in _corruptions(target):
            target.write_bytes(data)
            calls = enc.calls
            again = R.run_vision(_images(), ["FasterVLM", "DivPrune"], [8, 16], **kw)
            assert enc.calls > calls, f"{target.parent.parent.name} entry {name} was read as a hit"
            pd.testing.assert_frame_equal(again.drop(columns=timing), first.drop(columns=timing), check_exact=True)
            target.write_bytes(good)
    calls = enc.calls
    again = R.run_vision(_images(), ["FasterVLM", "DivPrune"], [8, 16], **kw)
    assert enc.calls == calls
    pd.testing.assert_frame_equal(again, first, check_exact=True)  # read back == computed, timings included


def test_run_vision_table_from_the_cache_equals_the_fresh_one(tmp_path):
    fresh = R.run_vision(
        _images(), ["FasterVLM", "AgilePruner"], [8], encoder=_Encoder(), cache_dir=tmp_path, progress=False
    )
    cached = R.run_vision(
        _images(), ["FasterVLM", "AgilePruner"], [8], encoder=_Encoder(), cache_dir=tmp_path, progress=False
    )
    pd.testing.assert_frame_equal(cached, fresh, check_exact=True)
    uncached = R.run_vision(
        _images(), ["FasterVLM", "AgilePruner"], [8], encoder=_Encoder(), cache_dir=False, progress=False
    )
    pd.testing.assert_frame_equal(
        cached.drop(columns="select_time_s"), uncached.drop(columns="select_time_s"), check_exact=True
    )


# ---- run_generation (POPE) ----------------------------------------------------------------------------------------

LABELS = [["dog", "cat", "cup"], ["car", "person", "bus", "truck"]]


def _pope_items():
    rng = np.random.default_rng(1)
    out = []
    for i, labels in enumerate(LABELS):
        a = (rng.random((64, 64, 3)) * 255).astype(np.uint8)
        a[16:32, 16:32] = [250, 30, 30]
        out.append(ImageItem(id=f"img{i}", source="synthetic", labels=labels, loader=(lambda a=a: Image.fromarray(a))))
    return out


@pytest.fixture(scope="module")
def tiny_gm(one_torch_thread):
    from prunelab.models.adapter import LlavaAdapter
    from prunelab.models.tiny import ToyTokenizer, tiny_llava

    model = tiny_llava("clip", seed=0, text_layers=2)
    objects = sorted({o for ls in LABELS for o in ls} | {"bowl", "bird", "boat", "pizza", "bench", "chair", "book"})
    words = (
        f"USER: ASSISTANT: Is there a an in the image? yes no {L.LLAVA_SHORT_ANSWER}".split()
        + objects
        + [f"w{i}" for i in range(200)]
    )
    return L.from_adapter(LlavaAdapter(model, tokenizer=ToyTokenizer(model, words), device="cpu"), "hf_chat")


class _Count:
    def __init__(self, adapter):
        self.adapter, self.calls = adapter, 0

    def __enter__(self):
        real = self.adapter.run_shared_image

        def shared(*a, **k):
            self.calls += 1
            return real(*a, **k)

        self.adapter.run_shared_image = shared
        return self

    def __exit__(self, *exc):
        del self.adapter.run_shared_image


def _old_csv_bytes(df: pd.DataFrame) -> int:
    """What the pre-fix writer stored for the same rows: CSV, list columns as JSON on every row."""
    out = df.copy()
    out["kept_indices"] = out["kept_indices"].map(json.dumps)
    return len(out.to_csv(index=False).encode())


def test_pope_entries_store_the_shared_selection_once_and_recompute_when_damaged(tiny_gm, tmp_path):
    kw = dict(
        task="pope", max_new_tokens=2, cache_dir=tmp_path, pope_settings=("random", "adversarial"), progress=False
    )
    first = G.run_generation(tiny_gm, _pope_items(), ["FasterVLM"], [32], **kw)  # half the 64 tokens
    entries = sorted(tmp_path.glob("v*/entries/*.json"))
    assert len(entries) == 2 and len(first) == 2 * 2 * 6
    for e in entries:
        iid = TC.read_table(e)["image_id"].iloc[0]
        rows = first[first["image_id"] == iid]
        kept = json.dumps(rows["kept_indices"].iloc[0], separators=(",", ":"))
        assert e.read_text().count(kept) == 1  # once per image x method x budget, not once per question
        new, old = e.stat().st_size, _old_csv_bytes(rows[G.BASE_COLUMNS + G.POPE_QUESTION_COLUMNS])
        assert new <= old / 2, (new, old)
    # Damaged entries: cut at a row boundary, a dropped column, invalid UTF-8: generated again, same table.
    target = entries[0]
    good = target.read_bytes()
    table = TC.read_table(target)
    variants = [
        ("dropped text column", None),
        ("cut", good[: good.index(b"\n") + 1]),
        ("invalid UTF-8", good[:-40] + b"\xff" + good[-39:]),
    ]
    for name, data in variants:
        if data is None:
            TC.write_table(table.drop(columns=["text"]), target)
        else:
            target.write_bytes(data)
        with _Count(tiny_gm.adapter) as c:
            again = G.run_generation(tiny_gm, _pope_items(), ["FasterVLM"], [32], **kw)
        assert c.calls == 1, name
        timing = [col for col in first.columns if col.endswith("_s")]
        pd.testing.assert_frame_equal(again.drop(columns=timing), first.drop(columns=timing), check_exact=True)
    with _Count(tiny_gm.adapter) as c:
        back = G.run_generation(tiny_gm, _pope_items(), ["FasterVLM"], [32], **kw)
    assert c.calls == 0
    pd.testing.assert_frame_equal(back, again, check_exact=True)  # read back == generated, timings included


# ---- python -m prunelab.study.cache -------------------------------------------------------------------------------------


def _safetensors(path, fmt):
    import torch
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"features": torch.zeros(4, 2)}, str(path), metadata={"format": fmt})


def _populate(root):
    enc = _Encoder()
    R.run_vision(_images(2), ["FasterVLM"], [8], encoder=enc, cache_dir=root / "runs", progress=False)
    (root / "runs" / "v1-0123456789abcdef" / "rows").mkdir(parents=True)  # an older library's entries
    (root / "runs" / "v1-0123456789abcdef" / "rows" / "x.json").write_text("x" * 1000)
    (root / "runs" / "rows").mkdir()  # the pre-2 layout
    (root / "runs" / "rows" / "all-x.csv").write_text("y" * 500)
    (cur,) = (root / "runs").glob(f"{C.current_versions()['runs']}")
    old_part, new_part = cur / "rows" / ".a.json.1.part", cur / "rows" / ".b.json.2.part"
    old_part.write_text("crashed")
    new_part.write_text("running")
    os.utime(old_part, (time.time() - 2 * C.STALE_PART_S,) * 2)
    from prunelab.models.vision import CACHE_FORMAT

    _safetensors(root / "vision-features" / "ab" / "cur.safetensors", str(CACHE_FORMAT))
    _safetensors(root / "vision-features" / "ab" / "old.safetensors", "0")
    (root / "analysis").mkdir()
    (root / "analysis" / "g.json").write_text("[1, 2]")
    (root / "nltk_data").mkdir()
    (root / "nltk_data" / "wordnet.zip").write_text("asset")
    return enc, old_part, new_part


def test_cache_cli_du_prune_clear(tmp_path, capsys):
    root = tmp_path / "cache"
    enc, old_part, new_part = _populate(root)
    cur = root / "runs" / C.current_versions()["runs"]
    assert C.main(["--root", str(root), "du"]) == 0
    out = capsys.readouterr().out
    assert "runs" in out and "vision-features" in out and "not managed here" in out and "nltk_data" in out
    runs_line = next(line for line in out.splitlines() if line.strip().startswith("runs "))
    assert "(3 files)" in runs_line  # the older version, the old layout, the crashed .part (not the running one)

    assert C.main(["--root", str(root), "prune", "--dry-run"]) == 0
    assert (root / "runs" / "rows").exists() and old_part.exists()
    capsys.readouterr()
    assert C.main(["--root", str(root), "prune"]) == 0
    assert sorted(p.name for p in (root / "runs").iterdir()) == [cur.name]
    assert not old_part.exists() and new_part.exists()
    assert sorted(p.name for p in (root / "vision-features" / "ab").iterdir()) == ["cur.safetensors"]
    assert (root / "analysis" / "g.json").exists() and (root / "nltk_data" / "wordnet.zip").exists()
    calls = enc.calls  # what the current code wrote still hits
    R.run_vision(_images(2), ["FasterVLM"], [8], encoder=enc, cache_dir=root / "runs", progress=False)
    assert enc.calls == calls

    assert C.main(["--root", str(root), "clear"]) == 1  # no --yes: nothing deleted
    assert "pass --yes" in capsys.readouterr().out and cur.exists()
    assert C.main(["--root", str(root), "clear", "--kind", "analysis", "--yes"]) == 0
    assert not (root / "analysis").exists() and cur.exists()
    assert C.main(["--root", str(root), "clear", "--yes"]) == 0
    assert sorted(p.name for p in root.iterdir()) == ["nltk_data"]  # assets are never touched
    with pytest.raises(UnknownNameError, match="--kind"):
        C.main(["--root", str(root), "clear", "--kind", "nltk_data", "--yes"])
    with pytest.raises(UnknownNameError, match="--root"):
        C.main(["--root", str(tmp_path / "missing"), "du"])


def test_cache_cli_runs_as_a_module(tmp_path):
    import subprocess
    import sys

    env = {**os.environ, "PRUNELAB_CACHE": str(tmp_path)}
    (tmp_path / "runs" / "rows").mkdir(parents=True)
    (tmp_path / "runs" / "rows" / "x.csv").write_text("z")
    r = subprocess.run(
        [sys.executable, "-m", "prunelab.study.cache", "prune"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    assert "removed runs/rows" in r.stdout and not (tmp_path / "runs" / "rows").exists()


def test_greedy_selection_cache_recomputes_damaged_entries(tmp_path, ctx_factory):
    """The analysis cache read entries with ``read_text``: invalid UTF-8 crashed, a cut list was used."""
    from prunelab.study import analysis as A

    contexts = {"a": ctx_factory(n=25, c=8, seed=1)}
    kw = dict(screen=None, fingerprint="fp", image_set="s", cache_dir=tmp_path, progress=False)
    first = A.greedy_selections(contexts, 5, **kw)
    (entry,) = tmp_path.glob("*.json")
    good = entry.read_bytes()
    for data in (b"\xff\xfe" + good[2:], b"[1, 2]", good[: len(good) // 2]):
        entry.write_bytes(data)
        assert A.greedy_selections(contexts, 5, **kw) == first
        assert TC.read_entry(entry) == first["a"]  # rewritten intact

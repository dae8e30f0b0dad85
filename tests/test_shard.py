"""prunelab.study.shard: the data-parallel study loop (run_generation describe / pope, run_vision) over 2 CPU
processes on one shared cache equals a one-process run exactly, under torchrun + gloo (torch.distributed barrier)
and under a bare RANK / WORLD_SIZE launch (cache-file barrier); each rank computes only its own images; settings
and barrier errors are one line.

Timing columns (wall times, they differ run to run) are left out of the comparison with the one-process run:
``vision_s``, ``select_s``, ``prefill_s``, ``decode_s`` (generation; ``chair_s`` is CHAIR_s, compared) and
``select_time_s`` (vision). The two ranks' tables are compared whole, timings included: both read the same entries.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

import shard_worker as W
from prunelab.study import shard as S
from prunelab.study.tablecache import RunCache

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = Path(sys.executable).parent / "torchrun"
TABLES = ("describe", "pope", "vision")


# ---- settings -----------------------------------------------------------------------------------------------------


def test_environment_and_override():
    assert S.resolve_shard(env={}) == S.Shard(0, 1)
    sh = S.resolve_shard(env={"RANK": "2", "WORLD_SIZE": "3", "LOCAL_RANK": "0"})
    assert (sh.rank, sh.world, sh.local_rank, sh.sharded) == (2, 3, 0, True)
    assert S.resolve_shard((1, 4), env={"RANK": "0", "WORLD_SIZE": "2"}).world == 4  # the override wins
    assert S.resolve_shard(env={"RANK": "0", "WORLD_SIZE": "2", S.TIMEOUT_ENV: "7"}).timeout == 7.0


def test_assignment_is_image_index_mod_world():
    ids = list(range(7))
    assert [S.Shard(r, 3).mine(ids) for r in range(3)] == [[0, 3, 6], [1, 4], [2, 5]]
    assert S.Shard(0, 1).mine(ids) == ids


@pytest.mark.parametrize(
    "shard, env, match",
    [
        (None, {"RANK": "1"}, "set both or neither"),
        (None, {"RANK": "x", "WORLD_SIZE": "2"}, "not an integer"),
        (None, {"RANK": "2", "WORLD_SIZE": "2"}, "not in 0..world-1"),
        ((3, 2), {}, "not in 0..world-1"),
        ((0, 0), {}, "not in 0..world-1"),
        ("0/2", {}, "cannot read shard"),
        (None, {S.TIMEOUT_ENV: "-1"}, "positive number of seconds"),
    ],
)
def test_inconsistent_settings_are_one_line_errors(shard, env, match):
    with pytest.raises((S.ShardError, ValueError), match=match) as err:
        S.resolve_shard(shard, env=env)
    assert "\n" not in str(err.value)


def test_sharding_needs_the_cache_and_a_group_to_refresh(tmp_path):
    with pytest.raises(S.ShardError, match="cache_dir=False"):
        S.check_cache(S.Shard(0, 2), RunCache(False, "runs", (), 1))
    with pytest.raises(S.ShardError, match="refresh=True on several ranks"):
        S.check_cache(S.Shard(0, 2), RunCache(tmp_path, "runs", (), 1, refresh=True))
    S.check_cache(S.Shard(0, 1), RunCache(False, "runs", (), 1))  # one process: nothing to merge


def test_file_barrier_times_out_naming_the_missing_entries(tmp_path):
    from prunelab.study.tablecache import write_entry

    write_entry(tmp_path / "a.json", {"x": 1})
    paths = {"img0": tmp_path / "a.json", "img1": tmp_path / "b.json"}
    sh = S.Shard(0, 2, timeout=0.3, poll=0.05)
    with pytest.raises(S.ShardError, match=r"1 image statistics entries still missing after 0.3 s \(img1\)") as err:
        S.gather(sh, paths, S.entry_reader(["x"]), "image statistics")
    assert "\n" not in str(err.value)
    write_entry(tmp_path / "b.json", {"x": 2})
    assert S.gather(sh, paths, S.entry_reader(["x"]), "image statistics") == {"img0": {"x": 1}, "img1": {"x": 2}}
    with pytest.raises(S.ShardError, match="still missing"):  # an entry without the required keys is not there yet
        S.gather(sh, paths, S.entry_reader(["y"]), "image statistics")


# ---- two processes --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def single(tmp_path_factory, one_torch_thread):
    try:
        W.chair_parser()
    except Exception as err:  # noqa: BLE001 - the offline WordNet path is an asset
        pytest.skip(f"WordNet unavailable: {err}")
    return W.run_all(tmp_path_factory.mktemp("one-process"))


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")}
    env.update(PYTHONPATH=str(ROOT / "lib"), OMP_NUM_THREADS="1", **extra)
    return env


def _load(out: Path) -> list[dict]:
    return [pickle.loads((out / f"rank{r}.pkl").read_bytes()) for r in range(2)]


def _check(ranks: list[dict], single: dict) -> None:
    timings = {"describe": W.GEN_TIMINGS, "pope": W.GEN_TIMINGS, "vision": W.VISION_TIMINGS}
    for name in TABLES:
        one = single[name]
        assert len(one) and set(timings[name]) <= set(one.columns)
        for res in ranks:
            got = res[name]
            assert list(got.columns) == list(one.columns)
            pd.testing.assert_frame_equal(
                got.drop(columns=timings[name]), one.drop(columns=timings[name]), check_exact=True
            )
            assert got.attrs.get("erank_stats") == one.attrs.get("erank_stats")
        pd.testing.assert_frame_equal(ranks[0][name], ranks[1][name], check_exact=True)  # timings too
    assert ranks[0]["vision"].attrs["run_key"] == single["vision"].attrs["run_key"]
    ids = [f"img{i}" for i in range(W.N_IMAGES)]
    for r, res in enumerate(ranks):
        own = ids[r::2]
        for task in ("describe", "pope"):  # only its own images: generated, and through the tower (once each)
            assert res["done"][task] == {"generated": own, "towers": len(own)}
        assert res["done"]["vision"] == {"encoded": own}


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun not installed next to this python")
def test_torchrun_two_processes_gloo_equal_one_process(single, tmp_path):
    out, cache = tmp_path / "out", tmp_path / "cache"
    cmd = [str(TORCHRUN), "--standalone", "--nproc_per_node", "2", str(ROOT / "tests" / "shard_worker.py")]
    proc = subprocess.run([*cmd, str(out), str(cache), "--gloo"], env=_env(), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _check(_load(out), single)


def test_env_two_processes_file_barrier_equal_one_process(single, tmp_path):
    out, cache = tmp_path / "out", tmp_path / "cache"
    procs = [
        subprocess.Popen(
            [sys.executable, str(ROOT / "tests" / "shard_worker.py"), str(out), str(cache)],
            env=_env(RANK=str(r), WORLD_SIZE="2", LOCAL_RANK=str(r), **{S.TIMEOUT_ENV: "600"}),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in range(2)
    ]
    errs = [p.communicate()[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(e[-2000:] for e in errs)
    _check(_load(out), single)


@pytest.mark.slow  # the DINOv2 tower
@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun not installed next to this python")
def test_launch_cli_under_torchrun_writes_the_one_process_table(tmp_path):
    """The README's command: ``torchrun --nproc_per_node 2 -m prunelab.study.launch vision ...`` (DINOv2 tower,
    three toy-world images) writes the CSV a one-process launch writes (timings aside)."""
    from prunelab.study.launch import main

    args = [
        "vision",
        "--image-set",
        "toyworld:test",
        "--n-images",
        "3",
        "--methods",
        "FasterVLM,DivPrune",
        "--budgets",
        "8",
    ]
    args += ["--device", "cpu"]
    cmd = [str(TORCHRUN), "--standalone", "--nproc_per_node", "2", "-m", "prunelab.study.launch", *args]
    cmd += ["--cache-dir", str(tmp_path / "c2"), "--out", str(tmp_path / "two.csv")]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "6 rows from 2 rank(s)" in proc.stdout
    assert main([*args, "--cache-dir", str(tmp_path / "c1"), "--out", str(tmp_path / "one.csv")]) == 0
    two, one = (pd.read_csv(tmp_path / f"{x}.csv").drop(columns=W.VISION_TIMINGS) for x in ("two", "one"))
    assert len(one) == 6
    pd.testing.assert_frame_equal(two, one, check_exact=True)

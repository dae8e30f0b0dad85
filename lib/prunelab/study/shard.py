"""Data parallelism of the study loops over images: N processes (one per GPU), one shared cache, one merged table.

:func:`prunelab.study.generation.run_generation` and :func:`prunelab.study.runner.run_vision` take ``shard=``:
``None`` reads the launcher's environment (``RANK`` / ``WORLD_SIZE``, as ``torchrun`` and ``accelerate launch`` set
them; ``torch.distributed``'s rank and world size when a process group is initialised), ``(rank, world)`` or a
:class:`Shard` overrides it. Without any of these a run is one process, as before.

Assignment. After the seeded subset is chosen, image ``i`` of the loop's image list belongs to rank ``i % world``
(:meth:`Shard.mine`): deterministic, balanced to one image, and independent of what is already cached.

Protocol (both loops, every rank runs the same call with the same arguments and ``cache_dir``):

1. Image statistics: each rank computes its own images' entries into the shared cache. When the erank statistics
   are calibrated on the image set (no ``erank_stats`` given; ``run_generation`` only when a method consumes them)
   the ranks then wait for each other (:func:`gather`) and read the other ranks' image entries, so the calibration
   covers **all** images before any pruning, exactly as in one process.
2. Entries: each rank generates / prunes its own images' entries (each written atomically, one file each).
3. :func:`gather`: a barrier, then **every rank** reads every entry from the cache and returns the whole merged
   table, in the single-process row order; cached values round-trip exactly (:mod:`prunelab.study.tablecache`), so
   the table equals a one-process run bit for bit apart from the timing columns (``*_s``: wall times).

Barrier. With an initialised ``torch.distributed`` process group (any backend; gloo suffices, nothing but a
barrier is exchanged) it is ``dist.barrier()``, whose timeout is the group's (``init_process_group(timeout=)``;
the CLI below sets 24 h, since a rank waits for the slowest rank's whole share). Without one it waits for the
other ranks' entries to appear intact in the cache, polling, for at most :attr:`Shard.timeout` seconds (env
``PRUNELAB_SHARD_TIMEOUT``, default 24 h), then fails naming the missing entries. A file barrier cannot tell a
fresh entry from an older one, so ``refresh=True`` on several ranks needs a process group.

CLI (:mod:`prunelab.study.launch`, under ``torchrun``; it joins a gloo group when launched with a rendezvous,
binds rank ``LOCAL_RANK`` to its GPU, and rank 0 writes the merged table)::

    torchrun --standalone --nproc_per_node 8 -m prunelab.study.launch generation --model /ckpt/llava-1.5-7b-hf \\
        --image-set coco:/data/val2014 --n-images 500 --methods Vanilla,FasterVLM,DivPrune --budgets 64,128 \\
        --task describe --out describe.csv
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from prunelab.errors import PrunelabError, UnknownNameError

TIMEOUT_ENV = "PRUNELAB_SHARD_TIMEOUT"
DEFAULT_TIMEOUT_S = 24 * 3600.0


class ShardError(PrunelabError, RuntimeError):
    """Inconsistent rank / world settings, or a barrier that timed out."""


@dataclass(frozen=True)
class Shard:
    """This process's place among ``world`` processes: it owns images ``rank, rank + world, ...``."""

    rank: int = 0
    world: int = 1
    local_rank: int | None = None
    timeout: float = DEFAULT_TIMEOUT_S
    poll: float = 0.2

    def __post_init__(self):
        for name in ("rank", "world"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise ShardError(f"shard {name} must be an integer, got {v!r}; pass shard=(rank, world)")
        if self.world < 1 or not 0 <= self.rank < self.world:
            raise ShardError(
                f"shard rank {self.rank} is not in 0..world-1 for world {self.world}; pass 0 <= rank < world"
            )
        if not (isinstance(self.timeout, (int, float)) and self.timeout > 0 and math.isfinite(self.timeout)):
            raise ShardError(f"shard timeout must be a positive number of seconds, got {self.timeout!r}")

    @property
    def sharded(self) -> bool:
        return self.world > 1

    def owns(self, index: int) -> bool:
        return index % self.world == self.rank

    def mine(self, items) -> list:
        """This rank's share of ``items`` (positions ``i`` with ``i % world == rank``), in order."""
        return [it for i, it in enumerate(items) if self.owns(i)]


def distributed() -> bool:
    """Whether a ``torch.distributed`` process group is initialised in this process."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def _env_int(env: Mapping[str, str], name: str) -> int | None:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise ShardError(
            f"environment variable {name}={raw!r} is not an integer; unset it or set a rank number"
        ) from None


def _timeout(env: Mapping[str, str]) -> float:
    raw = env.get(TIMEOUT_ENV)
    if raw is None or raw.strip() == "":
        return DEFAULT_TIMEOUT_S
    try:
        t = float(raw)
    except ValueError:
        t = math.nan
    if not (t > 0 and math.isfinite(t)):
        raise ShardError(f"{TIMEOUT_ENV}={raw!r} is not a positive number of seconds; unset it or set e.g. 3600")
    return t


def resolve_shard(shard=None, env: Mapping[str, str] | None = None) -> Shard:
    """The :class:`Shard` of this process: ``shard`` when given (a :class:`Shard` or ``(rank, world)``), else the
    initialised process group's rank and world size, else ``RANK`` / ``WORLD_SIZE`` from the environment, else
    ``Shard(0, 1)``. Settings that disagree (an override vs the process group, ``RANK`` without ``WORLD_SIZE``,
    ``RANK`` vs the group) raise :class:`ShardError` in one line."""
    env = os.environ if env is None else env
    rank_env, world_env, local = _env_int(env, "RANK"), _env_int(env, "WORLD_SIZE"), _env_int(env, "LOCAL_RANK")
    if (rank_env is None) != (world_env is None):
        raise ShardError(
            f"RANK={env.get('RANK')!r} and WORLD_SIZE={env.get('WORLD_SIZE')!r}: set both or neither "
            "(torchrun and accelerate launch set both)"
        )
    group = None
    if distributed():
        import torch.distributed as dist

        group = (dist.get_rank(), dist.get_world_size())
    if shard is not None:
        if isinstance(shard, Shard):
            out = shard
        elif isinstance(shard, (tuple, list)) and len(shard) == 2:
            out = Shard(shard[0], shard[1], local_rank=local, timeout=_timeout(env))
        else:
            raise UnknownNameError(
                f"cannot read shard={shard!r}; pass (rank, world), a Shard, or None for the environment"
            )
        if group is not None and (out.rank, out.world) != group:
            raise ShardError(
                f"shard=({out.rank}, {out.world}) disagrees with the torch.distributed group (rank {group[0]} of "
                f"{group[1]}); pass shard=None to follow the group"
            )
        return out
    if group is not None:
        if rank_env is not None and (rank_env, world_env) != group:
            raise ShardError(
                f"RANK={rank_env} WORLD_SIZE={world_env} disagree with the torch.distributed group (rank "
                f"{group[0]} of {group[1]}); launch every process with the same settings"
            )
        return Shard(group[0], group[1], local_rank=local, timeout=_timeout(env))
    if rank_env is None:
        return Shard(0, 1, local_rank=local, timeout=_timeout(env))
    return Shard(rank_env, world_env, local_rank=local, timeout=_timeout(env))


def check_cache(shard: Shard, cache) -> None:
    """Sharding needs the shared on-disk cache (a :class:`prunelab.study.tablecache.RunCache`); one line if not."""
    if not shard.sharded:
        return
    if not cache.enabled:
        raise ShardError(
            f"rank {shard.rank} of {shard.world}: cache_dir=False, but the ranks merge their results through the "
            "cache; pass one cache_dir that every rank can read"
        )
    if cache.refresh and not distributed():
        raise ShardError(
            "refresh=True on several ranks needs an initialised torch.distributed group (a file barrier cannot "
            "tell fresh entries from old ones); init a gloo group or delete the cache folder instead"
        )


def gather(shard: Shard, paths: Mapping, read: Callable[[Path], object | None], what: str) -> dict:
    """``{label: read(path)}`` for every ``label: path`` of ``paths`` (the entries other ranks write), after a
    barrier: ``torch.distributed``'s when a group is initialised, else polling until every entry reads as intact
    (``read`` returns non-``None``) or :attr:`Shard.timeout` passes. Missing entries raise :class:`ShardError`
    naming them."""
    got: dict = {}
    if not paths:
        if shard.sharded and distributed():
            _barrier()  # every rank takes part in every barrier, even one with nothing to read
        return got
    if shard.sharded and distributed():
        _barrier()
    deadline = time.monotonic() + shard.timeout
    while True:
        for label, path in paths.items():
            if label not in got and (value := read(Path(path))) is not None:
                got[label] = value
        missing = [label for label in paths if label not in got]
        if not missing:
            return got
        if not shard.sharded or distributed() or time.monotonic() >= deadline:
            break
        time.sleep(shard.poll)
    names = ", ".join(str(m) for m in missing[:4]) + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
    waited = "after the barrier" if distributed() else f"after {shard.timeout:g} s"
    raise ShardError(
        f"rank {shard.rank} of {shard.world}: {len(missing)} {what} entries still missing {waited} ({names}); start "
        f"all {shard.world} ranks with the same arguments and cache_dir, or raise {TIMEOUT_ENV}"
    )


def sharding(shard, device="auto"):
    """``(Shard, device)`` for a study loop: :func:`resolve_shard`, and under a multi-process launch with
    ``LOCAL_RANK`` set, ``device="auto"`` / ``"cuda"`` becomes ``"cuda:<LOCAL_RANK mod GPUs>"`` (one GPU per rank)."""
    sh = resolve_shard(shard)
    if sh.sharded and sh.local_rank is not None and str(device).strip().lower() in ("auto", "cuda"):
        import torch

        if torch.cuda.is_available():  # more ranks than GPUs share them round-robin
            device = f"cuda:{sh.local_rank % torch.cuda.device_count()}"
    return sh, device


def entry_reader(required) -> Callable[[Path], dict | None]:
    """Reads a checked object entry (image statistics) holding every key of ``required``, else ``None``."""
    from prunelab.study.tablecache import read_entry

    need = list(required)

    def read(path):
        st = read_entry(path)
        return st if isinstance(st, dict) and all(k in st for k in need) else None

    return read


def table_reader(columns) -> Callable[[Path], object | None]:
    """Reads a checked table entry holding every column of ``columns``, else ``None``."""
    from prunelab.study.tablecache import read_table

    cols = list(columns)
    return lambda path: read_table(path, cols)


def per_item(shard: Shard, cache, items, path_of, compute, required, everyone: bool, **kw) -> dict:
    """The image pass of a loop: ``cache.per_item`` (:func:`prunelab.study.tablecache.cached_per_item`) on this
    rank's share of ``items``; with ``everyone`` (its entries feed a calibration over the whole image set) also
    the other ranks' entries, read from the cache after :func:`gather`."""
    out = cache.per_item(shard.mine(items), path_of, compute, required=list(required), **kw)
    if everyone and shard.sharded:
        rest = {it.id: path_of(it) for it in items if it.id not in out}
        out.update(gather(shard, rest, entry_reader(required), "image statistics"))
    return out


def _barrier() -> None:
    import torch.distributed as dist

    dist.barrier()


__all__ = [
    "Shard",
    "ShardError",
    "resolve_shard",
    "sharding",
    "distributed",
    "check_cache",
    "gather",
    "per_item",
    "entry_reader",
    "table_reader",
    "TIMEOUT_ENV",
]

"""Evaluation over several processes (and nodes) with torch.distributed, the engine training's DDP uses.

Launch ``evaluate.py`` with ``torchrun --nproc_per_node N evaluate.py ...`` or with Lightning's environment
(``MASTER_ADDR``, ``MASTER_PORT``, ``WORLD_SIZE``, ``NODE_RANK``, ``LOCAL_RANK``; ``RANK`` when set). Every
process prepares nothing on its own: rank 0 extracts features, triangulates and builds maps and indexes into
the caches first, then the others load them (:func:`wait_for_main` / :func:`release_others`), so each process
holds each map once. A
single-map dataset shards its queries (every ``world_size``-th pending query); a multi-map dataset (CMU slices,
Cambridge scenes) spreads whole parts. Rank 0 gathers every result, writes the prediction log, the submission
and the summary: the same files as a single-process run (``predictions.jsonl`` lists them in another order).

Process groups use gloo: only Python objects (results) travel, on CPU and GPU machines alike.

Threads (:func:`setup`, :func:`query_loop_threads`). While rank 0 prepares features, maps and indexes alone, it
uses every core, as a single process does (torchrun's ``OMP_NUM_THREADS=1`` is undone): a PCA or k-means fitted
with another thread count can come out a few bits apart, which would change the map. In the sharded query loop
the processes of a node share its cores: each gets cores / processes threads for torch, faiss and every BLAS
and OpenMP runtime, so that they do not oversubscribe the machine (on the embedded town with 2 cores, two
processes that each kept both cores gained little or nothing over one). What the query loop computes does not
depend on the thread count: IVF and HNSW search distances per query keypoint (an IVF index's flat list centres
are searched on one thread, :meth:`~fuseloc.localize.index.MapIndex.search`), poselib's RANSAC runs on one
thread with a fixed seed, and torch's products (fusion, the hierarchical baseline's matching) came out bit for
bit the same with 1 and 2 threads. The exception is faiss' exact (BLAS) search of small maps and IVF-PQ, whose
sums change with the thread count: there the processes keep the single-process threads.
``tests/test_distributed.py`` checks search and fusion with one thread and with all cores, and that 2 processes
write the single-process submission byte for byte.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

import torch

from fuseloc.data.feature_cache import FeatureCache
from fuseloc.data.prepare import PreparedFeatures
from fuseloc.data.scene import QuerySet
from fuseloc.errors import InputError
from fuseloc.localize.index import MapIndex
from fuseloc.localize.pipeline import QueryLocalizer, localize_queries
from fuseloc.types import PoseResult

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class Distributed:
    """Where this process stands among the evaluation's processes (one process: rank 0 of 1).

    Attributes:
        rank, world_size: global rank and number of processes.
        local_rank, local_world_size: rank and number of processes on this node.
        owns_group: this module started the process group (and ends it in :func:`teardown`).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    owns_group: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE = Distributed()


def from_environment(env: Mapping[str, str] | None = None) -> Distributed:
    """The ranks torchrun or Lightning's launcher put in the environment (none: a single process).

    torchrun sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``; Lightning's launcher
    ``WORLD_SIZE``, ``NODE_RANK``, ``LOCAL_RANK`` (``NUM_NODES`` or ``LOCAL_WORLD_SIZE`` then says how many
    processes share a node; without either, one node).
    """
    env = os.environ if env is None else env

    def number(name: str, default: int) -> int:
        value = env.get(name, "")
        try:
            return int(value) if value.strip() else default
        except ValueError:
            raise InputError(f"environment variable {name}={value!r} is not an integer") from None

    world_size = number("WORLD_SIZE", 1)
    if world_size <= 1:
        return SINGLE
    local_rank = number("LOCAL_RANK", 0)
    local_world = number("LOCAL_WORLD_SIZE", 0) or world_size // max(number("NUM_NODES", 1), 1)
    rank = number("RANK", number("NODE_RANK", 0) * local_world + local_rank)
    if not 0 <= rank < world_size or not 0 <= local_rank < local_world:
        raise InputError(f"inconsistent ranks in the environment: rank {rank}, local rank {local_rank}, "
                         f"world size {world_size}, {local_world} per node")
    return Distributed(rank, world_size, local_rank, local_world)


def setup(env: Mapping[str, str] | None = None, timeout_s: float = 4 * 3600) -> Distributed:
    """Join the process group the environment describes (gloo); this process uses every core (preparing), its
    share of them in the query loop (:func:`query_loop_threads`).

    ``timeout_s`` bounds every wait on other processes, the longest being rank 0 building what the others load.
    """
    ctx = from_environment(env)
    if not ctx.enabled:
        return ctx
    import torch.distributed as dist

    owns = False
    if not dist.is_initialized():
        if "MASTER_ADDR" not in os.environ or "MASTER_PORT" not in os.environ:
            raise InputError("WORLD_SIZE > 1 but MASTER_ADDR / MASTER_PORT are not set: launch with torchrun")
        dist.init_process_group("gloo", rank=ctx.rank, world_size=ctx.world_size, timeout=timedelta(seconds=timeout_s))
        owns = True
    elif dist.get_world_size() != ctx.world_size or dist.get_rank() != ctx.rank:
        raise InputError("the running process group does not match WORLD_SIZE / RANK")
    # Preparing (rank 0 alone) uses every core, as a single process does: see the module note.
    threads = available_cores()
    set_threads(threads)
    logger.info("evaluation process %d of %d (local %d of %d): %d threads, %d in the query loop", ctx.rank, ctx.world_size,
                ctx.local_rank, ctx.local_world_size, threads, process_threads(ctx.local_world_size))
    return Distributed(ctx.rank, ctx.world_size, ctx.local_rank, ctx.local_world_size, owns)


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity where the platform tells it)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def process_threads(local_world_size: int, cores: int | None = None) -> int:
    """Threads for each of ``local_world_size`` processes sharing a node's ``cores``: an equal share, at least one.

    The query loop spends its time in PnP (poselib, one thread), faiss search (parallel over a query's keypoints)
    and per-query torch fusion (too small to gain from threads); processes that each kept every core would
    oversubscribe the machine, and the OpenMP runtimes of faiss and torch would spin against each other and
    against PnP (on the embedded town with 2 cores, one process's query loop took 1.5-2x longer with 2 threads than
    with 1).
    """
    cores = available_cores() if cores is None else cores
    return max(1, cores // max(local_world_size, 1))


def thread_counts() -> tuple[int, int]:
    """(torch, faiss) thread counts of this process."""
    import faiss

    return torch.get_num_threads(), faiss.omp_get_max_threads()


def set_threads(threads: int):  # noqa: ANN201 (threadpoolctl's limits, to restore the earlier counts)
    """Use ``threads`` threads in torch, faiss and every BLAS / OpenMP runtime loaded in this process; returns
    threadpoolctl's limits object, whose ``restore_original_limits()`` undoes the BLAS / OpenMP part.

    torchrun sets ``OMP_NUM_THREADS=1`` for its processes, which the runtimes read when they loaded; this sets
    them all explicitly, so a run launched by torchrun or by Lightning's environment gets the same threads.
    threadpoolctl reaches numpy's and faiss' OpenBLAS and the OpenMP runtimes it finds; torch and faiss are also
    told directly (torch's own pool, faiss' ``omp_set_num_threads``).
    """
    import faiss  # loaded first, so that threadpoolctl finds its OpenBLAS and OpenMP runtime too
    from threadpoolctl import threadpool_limits

    faiss.omp_set_num_threads(threads)
    limits = threadpool_limits(threads)
    torch.set_num_threads(threads)
    return limits


def _thread_dependent(localizer: object) -> bool:
    """The localizer searches an index whose results depend on faiss' thread count (:attr:`MapIndex.thread_invariant`)."""
    index = getattr(localizer, "index", None)
    return isinstance(index, MapIndex) and not index.thread_invariant


@contextmanager
def query_loop_threads(ctx: Distributed, localizer: object = None) -> Iterator[int]:
    """Within the block, this process uses its share of the node's cores (:func:`process_threads`); the thread
    counts are restored after it. A single process keeps its threads. Yields the thread count in use.

    A process keeps the single-process threads when ``localizer`` searches an index whose results depend on them
    (exact flat search, IVF-PQ: BLAS products; :attr:`MapIndex.thread_invariant`), so that its results stay
    those of one process: these are small maps (up to ``flat_max_points``), whose search costs little. faiss'
    thread count cannot be kept apart from torch's there: once torch is imported, both use torch's OpenMP runtime.
    """
    if not ctx.enabled or _thread_dependent(localizer):
        if ctx.enabled:
            logger.info("exact (BLAS) search: the query loop keeps %d threads per process, for single-process results",
                        thread_counts()[0])
        yield thread_counts()[0]
        return
    import faiss

    threads = process_threads(ctx.local_world_size)
    torch_threads, faiss_threads = thread_counts()
    limits = set_threads(threads)  # remembers every BLAS and OpenMP runtime's count
    try:
        yield threads
    finally:
        limits.restore_original_limits()
        torch.set_num_threads(torch_threads)
        faiss.omp_set_num_threads(faiss_threads)


def teardown(ctx: Distributed) -> None:
    if ctx.owns_group:
        import torch.distributed as dist

        dist.destroy_process_group()


def barrier(ctx: Distributed) -> None:
    if ctx.enabled:
        import torch.distributed as dist

        dist.barrier()


def broadcast(value: T, ctx: Distributed) -> T:
    """Rank 0's ``value`` on every process."""
    if not ctx.enabled:
        return value
    import torch.distributed as dist

    box = [value if ctx.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather(value: T, ctx: Distributed) -> list[T]:
    """Every process's ``value``, by rank."""
    if not ctx.enabled:
        return [value]
    import torch.distributed as dist

    out: list = [None] * ctx.world_size
    dist.all_gather_object(out, value)
    return out


def shard(items: Sequence[T], ctx: Distributed) -> list[T]:
    """This process's share: every ``world_size``-th item from its rank (neighbouring queries, often of one
    sequence and of similar cost, go to different processes)."""
    return list(items[ctx.rank :: ctx.world_size])


def map_parts(parts: Sequence[T], run: Callable[[T], R], ctx: Distributed) -> list[R] | None:
    """``run`` over ``parts``, each part on one process; rank 0 gets every result in part order, the others None."""
    mine = {i: run(parts[i]) for i in range(ctx.rank, len(parts), ctx.world_size)}
    gathered = all_gather(mine, ctx)
    if not ctx.is_main:
        return None
    merged = {i: r for per_rank in gathered for i, r in per_rank.items()}
    return [merged[i] for i in range(len(parts))]


def localize_sharded(localizer: QueryLocalizer, queries: QuerySet, features: FeatureCache, done: set[str],
                     on_result: Callable[[str, PoseResult], None] | None, progress: bool,
                     ctx: Distributed) -> dict[str, PoseResult]:
    """Localize the queries not in ``done``, this process's share of them; every process returns all the new
    results. ``on_result`` (the prediction log) sees each result once, on rank 0: its own as they come, the
    others' once gathered."""
    pending = [n for n in queries.names if n not in done]
    mine = set(shard(pending, ctx))
    t0 = time.perf_counter()
    with query_loop_threads(ctx, localizer) as threads:
        results = localize_queries(localizer, queries, features, skip=set(queries.names) - mine,
                                   on_result=on_result if ctx.is_main else None, progress=progress and ctx.is_main)
    gathered = all_gather(results, ctx)
    seconds = time.perf_counter() - t0
    merged: dict[str, PoseResult] = {}
    for rank, part in enumerate(gathered):
        if rank != ctx.rank and on_result is not None and ctx.is_main:
            for name, result in part.items():
                on_result(name, result)
        merged.update(part)
    if merged:
        logger.info("query loop: %d queries in %.2f s on %d process(es) x %d thread(s), %.2f queries/s", len(merged),
                    seconds, ctx.world_size, threads, len(merged) / max(seconds, 1e-9))
    return merged


def wait_for_main(ctx: Distributed) -> None:
    """Processes other than rank 0 wait here until rank 0 reaches :func:`release_others` (its caches written)."""
    if ctx.enabled and not ctx.is_main:
        barrier(ctx)


def release_others(ctx: Distributed) -> None:
    """Rank 0 lets the processes waiting in :func:`wait_for_main` go on."""
    if ctx.enabled and ctx.is_main:
        barrier(ctx)


def follow_query_loop(make_localizer: Callable[[], QueryLocalizer], queries: QuerySet, features: FeatureCache,
                      ctx: Distributed) -> dict[str, PoseResult]:
    """A process other than rank 0 in a method's query loop: once rank 0 has its localizer (the index cached),
    load the same, take the pending queries rank 0 announces, localize this process's share; returns every new
    result. Rank 0's side: :func:`release_others`, then :func:`broadcast` of its done set, then
    :func:`localize_sharded`."""
    wait_for_main(ctx)
    done = broadcast(None, ctx)
    localizer = make_localizer()
    return localize_sharded(localizer, queries, features, done, None, False, ctx)


def share_features(features: PreparedFeatures | None, ctx: Distributed) -> PreparedFeatures:
    """Rank 0's prepared features on every process: the others open rank 0's finished feature files read-only
    (opening them to append, as preparing does, would clash with rank 0's open handles)."""
    if not ctx.enabled:
        assert features is not None
        return features
    described = None
    if ctx.is_main:
        assert features is not None
        cache = features.cache
        described = (cache.local_path, cache.global_path, features.local_tag, features.global_tag, features.database_key)
    described = broadcast(described, ctx)
    if ctx.is_main:
        return features
    local_path, global_path, local_tag, global_tag, database_key = described
    return PreparedFeatures(FeatureCache(local_path, global_path), local_tag, global_tag, database_key)


def share_fitted_state(module: torch.nn.Module, ctx: Distributed) -> None:
    """Give every process rank 0's fitted state (a fusion's projection): fitted in each process, a PCA can come
    out a few bits apart (BLAS under contention), which would change the map's key and the query descriptors."""
    if not ctx.enabled:
        return
    state = broadcast({k: v.detach().cpu() for k, v in module.state_dict().items()} if ctx.is_main else None, ctx)
    if not ctx.is_main:
        module.load_state_dict(state)

"""Distributed evaluation: ranks from torchrun's or Lightning's environment, sharding, and 2 CPU processes (gloo)
writing the same submission as one process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures.tiny import make_tiny_dataset

from fuseloc.errors import InputError
from fuseloc.eval import distributed
from fuseloc.eval.distributed import (
    Distributed,
    available_cores,
    from_environment,
    map_parts,
    process_threads,
    query_loop_threads,
    set_threads,
    shard,
)

REPO = Path(__file__).resolve().parents[1]
METHOD = "fused-lam0.5"


def test_ranks_from_torchrun_and_lightning_environments():
    assert from_environment({}) == distributed.SINGLE
    assert from_environment({"WORLD_SIZE": "1", "RANK": "0"}) == distributed.SINGLE
    torchrun = {"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}
    assert from_environment(torchrun) == Distributed(rank=3, world_size=4, local_rank=1, local_world_size=2)
    # Lightning's launcher sets no RANK: node rank times processes per node plus the local rank.
    lightning = {"WORLD_SIZE": "4", "NODE_RANK": "1", "LOCAL_RANK": "0", "NUM_NODES": "2"}
    assert from_environment(lightning) == Distributed(rank=2, world_size=4, local_rank=0, local_world_size=2)
    with pytest.raises(InputError, match="inconsistent"):
        from_environment({"WORLD_SIZE": "2", "RANK": "2"})
    with pytest.raises(InputError, match="not an integer"):
        from_environment({"WORLD_SIZE": "two"})


def test_shards_cover_every_item_once_and_parts_come_back_in_order():
    items = list(range(11))
    shards = [shard(items, Distributed(rank=r, world_size=3, local_world_size=3)) for r in range(3)]
    assert sorted(x for s in shards for x in s) == items and shards[1] == [1, 4, 7, 10]
    assert map_parts(["a", "b", "c"], str.upper, distributed.SINGLE) == ["A", "B", "C"]


def test_processes_of_a_node_share_its_cores():
    assert process_threads(2, cores=2) == 1 and process_threads(2, cores=16) == 8 and process_threads(3, cores=16) == 5
    assert process_threads(4, cores=2) == 1  # more processes than cores: still one thread each
    assert process_threads(1, cores=6) == 6


def test_query_loop_uses_the_process_share_and_restores_the_threads_after():
    import faiss

    from fuseloc.localize.index import IndexConfig, MapIndex

    before = (torch.get_num_threads(), faiss.omp_get_max_threads())
    with query_loop_threads(distributed.SINGLE) as threads:  # one process keeps its threads
        assert threads == before[0] and (torch.get_num_threads(), faiss.omp_get_max_threads()) == before
    ctx = Distributed(rank=1, world_size=4, local_rank=1, local_world_size=2)
    with query_loop_threads(ctx) as threads:
        assert threads == process_threads(2)
        assert torch.get_num_threads() == threads and faiss.omp_get_max_threads() == threads
    assert (torch.get_num_threads(), faiss.omp_get_max_threads()) == before
    # exact (BLAS) search of a small map: the single-process threads, whose sums the results depend on
    points = np.random.default_rng(0).standard_normal((500, 8)).astype(np.float32)

    class FlatLocalizer:
        index = MapIndex(points, IndexConfig(kind="flat"))

    with query_loop_threads(ctx, FlatLocalizer()) as threads:
        assert threads == before[0] and (torch.get_num_threads(), faiss.omp_get_max_threads()) == before
    assert (torch.get_num_threads(), faiss.omp_get_max_threads()) == before


def _search_and_fuse() -> list[np.ndarray]:
    """What the query loop computes on fixed data: IVF searches (flat and HNSW list centres, float16 and 8-bit
    lists; k = 2 as for the ratio test) and a PCA fusion of 2048 keypoints."""
    from fuseloc.localize.index import IndexConfig, MapIndex
    from fuseloc.models.fusion import FixedFusion, fuse_numpy

    rng = np.random.default_rng(0)
    points = rng.standard_normal((12_000, 128)).astype(np.float32)
    queries = points[rng.integers(0, len(points), 2048)] + 0.3 * rng.standard_normal((2048, 128)).astype(np.float32)
    out = []
    for config in (IndexConfig(kind="ivf", nlist=256, nprobe=8), IndexConfig(kind="ivf", nlist=256, nprobe=8, codec="8bit"),
                   IndexConfig(kind="ivf", nlist=256, nprobe=8, coarse_quantizer="hnsw")):
        result = MapIndex(points, config).search(queries, k=2)
        out += [result.distances, result.indices]
    fusion = FixedFusion(128, 4096, lam=0.5)
    fusion.fit(rng.standard_normal((300, 4096)).astype(np.float32))
    out.append(fuse_numpy(fusion, queries, rng.standard_normal(4096).astype(np.float32)))
    return out


def test_search_and_fusion_give_the_same_bits_with_one_thread_and_with_all_cores():
    """Why 2 processes with a share of the cores each write the single-process submission: nothing the query loop
    computes depends on the thread count (IVF search, torch's fusion; exact BLAS search keeps its threads)."""
    import faiss

    cores = available_cores()
    if cores < 2:
        pytest.skip("one core: nothing to compare")
    before = (torch.get_num_threads(), faiss.omp_get_max_threads())
    try:
        set_threads(1)
        one = _search_and_fuse()
        set_threads(cores)
        every = _search_and_fuse()
    finally:
        set_threads(before[1])
        torch.set_num_threads(before[0])
    for a, b in zip(one, every):
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes()


def _evaluate(root: Path, out: Path, processes: int, reader: str = "fuseloc.data.readers.generic.GenericReader",
              extra: tuple[str, ...] = ("--lambdas", "[0.5]")) -> subprocess.CompletedProcess:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    cmd = (launcher if processes > 1 else [sys.executable]) + [
        str(REPO / "evaluate.py"), "--data.reader", reader, "--data.reader.root", str(root), "--data.output_dir", str(out),
        "--progress", "false", *extra]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.mark.parametrize("kind", ["ivf", "flat"])
def test_two_processes_write_the_single_process_submission(tmp_path, kind):
    root = tmp_path / "tiny"
    make_tiny_dataset(root)
    one, two = tmp_path / "one", tmp_path / "two"
    extra = ("--lambdas", "[0.5]", "--localizer.index.kind", kind)
    _evaluate(root, one, 1, extra=extra)
    result = _evaluate(root, two, 2, extra=extra)
    # The query loop really ran sharded, each process on its share of the cores; exact (BLAS) search, whose sums
    # depend on the thread count, keeps the single-process threads.
    threads = process_threads(2) if kind == "ivf" else available_cores()
    assert f"on 2 process(es) x {threads} thread(s)" in result.stderr
    (bench,) = [p for p in one.iterdir() if p.is_dir()]
    single = (bench / METHOD / "submission.txt").read_bytes()
    assert single and (two / bench.name / METHOD / "submission.txt").read_bytes() == single
    logged = [json.loads(line)["name"] for line in (two / bench.name / METHOD / "predictions.jsonl").read_text().splitlines()]
    assert sorted(logged) == sorted(line.split()[0] for line in single.decode().splitlines())  # each query once
    summary = json.loads((two / bench.name / METHOD / "summary.json").read_text())
    assert summary["metrics"] == json.loads((bench / METHOD / "summary.json").read_text())["metrics"]


@pytest.mark.slow  # two CMU slices, each evaluated end to end
def test_two_processes_spread_the_parts_and_merge_one_submission(tmp_path):
    from fixtures.datasets import make_cmu

    root = tmp_path / "cmu"
    make_cmu(root)
    extra = ("--data.reader.slices", "[2, 3]", "--lambdas", "[1.0]", "--data.local_features", "fuseloc.data.extractors.Sift",
             "--data.local_features.max_keypoints", "1024")
    one, two = tmp_path / "one", tmp_path / "two"
    _evaluate(root, one, 1, "fuseloc.data.readers.cmu.CMUReader", extra)
    _evaluate(root, two, 2, "fuseloc.data.readers.cmu.CMUReader", extra)
    (bench,) = [p for p in one.iterdir() if p.is_dir()]
    merged = (bench / "local-only" / "submission.txt").read_bytes()
    assert len(merged.splitlines()) == 4 and (two / bench.name / "local-only" / "submission.txt").read_bytes() == merged
    for part in ("slice2", "slice3"):  # each part evaluated by one of the processes, in its own folder
        assert (two / bench.name / part / "local-only" / "submission.txt").read_bytes() == (
            bench / part / "local-only" / "submission.txt").read_bytes()

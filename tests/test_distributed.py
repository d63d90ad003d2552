"""Distributed evaluation: ranks from torchrun's or Lightning's environment, sharding, and 2 CPU processes (gloo)
writing the same submission as one process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from fixtures.tiny import make_tiny_dataset

from fuseloc.errors import InputError
from fuseloc.eval import distributed
from fuseloc.eval.distributed import Distributed, from_environment, map_parts, shard

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


def _evaluate(root: Path, out: Path, processes: int, reader: str = "fuseloc.data.readers.generic.GenericReader",
              extra: tuple[str, ...] = ("--lambdas", "[0.5]")) -> subprocess.CompletedProcess:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    cmd = (launcher if processes > 1 else [sys.executable]) + [
        str(REPO / "evaluate.py"), "--data.reader", reader, "--data.reader.root", str(root), "--data.output_dir", str(out),
        "--progress", "false", *extra]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_two_processes_write_the_single_process_submission(tmp_path):
    root = tmp_path / "tiny"
    make_tiny_dataset(root)
    one, two = tmp_path / "one", tmp_path / "two"
    _evaluate(root, one, 1)
    result = _evaluate(root, two, 2)
    assert "on 2 process(es)" in result.stderr  # the query loop really ran sharded
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

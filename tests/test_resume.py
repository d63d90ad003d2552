"""Interruption and resumption: evaluate.py killed (SIGKILL) mid-run and rerun gives exactly the uninterrupted result.

Runs ``python evaluate.py`` in subprocesses on the tiny rendered dataset of :mod:`fixtures.tiny`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from fixtures.tiny import make_tiny_dataset

from fuseloc.data.extract import extract_local_features
from fuseloc.data.extractors import Sift
from fuseloc.data.feature_cache import WRITING_ATTR, FeatureCache, write_local
from fuseloc.errors import InputError
from fuseloc.types import LocalFeatures

REPO = Path(__file__).resolve().parents[1]
METHOD = "fused-lam0.5"


def evaluate_cmd(data_root: Path, output_dir: Path, script: str = "evaluate.py") -> list[str]:
    return [sys.executable, str(REPO / script), "--data.reader", "fuseloc.data.readers.generic.GenericReader",
            "--data.reader.root", str(data_root), "--data.output_dir", str(output_dir), "--progress", "false",
            "--lambdas", "[0.5]"]


def run(cmd: list[str]) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    return result


def killed_run(cmd: list[str], log: Path, **kill_at: int) -> str:
    """Run ``cmd`` under tests/fixtures/killed_evaluate.py, which SIGKILLs itself at the step ``kill_at`` names
    (``FUSELOC_KILL_AT_IMAGE``, ``FUSELOC_KILL_AFTER_PREDICTIONS``); returns its stderr."""
    env = {**os.environ, **{f"FUSELOC_{k.upper()}": str(v) for k, v in kill_at.items()}}
    cmd = [cmd[0], str(REPO / "tests" / "fixtures" / "killed_evaluate.py"), *cmd[2:]]
    with open(log, "w") as err:
        result = subprocess.run(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=err, env=env, timeout=120)
    assert result.returncode == -signal.SIGKILL, f"not killed at {kill_at} (rc {result.returncode}): {log.read_text()[-2000:]}"
    return log.read_text()


def count_lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.is_file() else 0


def poses(method_dir: Path) -> dict[str, tuple]:
    """Per-query outcome from predictions.jsonl, without the timings (they differ between runs)."""
    out = {}
    for line in (method_dir / "predictions.jsonl").read_text().splitlines():
        r = json.loads(line)
        out[r["name"]] = (r["qvec"], r["tvec"], r["success"], r["num_matches"], r["num_inliers"], r["reason"])
    return out


def assert_same_result(dir_a: Path, dir_b: Path) -> None:
    assert (dir_a / "submission.txt").read_bytes() == (dir_b / "submission.txt").read_bytes()
    pa, pb = poses(dir_a), poses(dir_b)
    assert pa.keys() == pb.keys()
    for name in pa:
        np.testing.assert_allclose(np.r_[pa[name][0], pa[name][1]], np.r_[pb[name][0], pb[name][1]], rtol=0, atol=1e-9)
        assert pa[name][2:] == pb[name][2:]
    metrics_a = json.loads((dir_a / "summary.json").read_text())["metrics"]
    assert metrics_a == json.loads((dir_b / "summary.json").read_text())["metrics"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The tiny dataset and the method directory of one uninterrupted run on it."""
    root = tmp_path_factory.mktemp("tiny")
    make_tiny_dataset(root)
    out = tmp_path_factory.mktemp("uninterrupted")
    run(evaluate_cmd(root, out))
    method_dir = out / "custom" / METHOD
    assert count_lines(method_dir / "predictions.jsonl") == 4
    return root, method_dir


@pytest.mark.slow
def test_run_killed_twice_then_finished_gives_exactly_the_uninterrupted_result(reference, tmp_path: Path) -> None:
    """SIGKILL during feature extraction, then again between two queries (plus a torn last log line)."""
    root, reference_dir = reference
    out = tmp_path / "out"
    feats = out / "custom" / "cache" / "feats-rootsift-n2048-r1024-c0.02.h5"
    log = out / "custom" / METHOD / "predictions.jsonl"

    # 1. Killed before the 5th image's features are written: four are flushed, worth keeping.
    killed_run(evaluate_cmd(root, out), tmp_path / "run1.log", kill_at_image=5)
    with pytest.raises(InputError, match="interrupted run"):
        FeatureCache(feats)  # what the kill left is never trusted as it is
    assert not (out / "custom" / METHOD).exists()

    # 2. Resumes the extraction (the 4 flushed images are kept), then is killed after the 2nd of 4 queries.
    stderr = killed_run(evaluate_cmd(root, out), tmp_path / "run2.log", kill_after_predictions=2)
    assert "was left by an interrupted run: kept 4 images" in stderr
    done = count_lines(log)
    assert done == 2
    assert not (log.parent / "submission.txt").exists()  # written only once every query is in
    with open(log, "a") as f:  # as a kill in the middle of a line leaves it: dropped, neither trusted nor fatal
        f.write('{"name": "query/3.png", "qvec": [0.99')

    # 3. Finishes: only the missing queries are localized, and the result is the uninterrupted one, to the byte.
    result = run(evaluate_cmd(root, out))
    assert f"resuming, {done} of 4 queries already localized" in result.stderr
    lines = log.read_text().splitlines()
    assert len(lines) == 4 and all(json.loads(line) for line in lines)
    assert_same_result(reference_dir, log.parent)


def test_interrupted_cache_is_repaired_and_only_lost_images_are_redone(tmp_path: Path) -> None:
    """What a kill leaves (the writing mark, a group without its completion mark) is found and redone."""
    dataset = make_tiny_dataset(tmp_path / "data")
    names = dataset.db_names[:3]
    out = tmp_path / "feats.h5"
    sift = Sift(max_keypoints=200)
    extract_local_features(sift, dataset.root / "images", names[:2], out, progress=False)
    with h5py.File(out, "a") as f:
        f.attrs[WRITING_ATTR] = True
        kept = np.asarray(f[names[0]]["keypoints"]).copy()
        # names[1] as a kill mid-group leaves it: datasets present, completion mark not yet written
        del f[names[1]].attrs["complete"]
    with pytest.raises(InputError, match=r"feats\.h5: .*interrupted run"):
        FeatureCache(out)
    extract_local_features(sift, dataset.root / "images", names, out, progress=False)
    with h5py.File(out, "r") as f:
        assert WRITING_ATTR not in f.attrs
        assert all(f[n].attrs["complete"] for n in names)
        np.testing.assert_array_equal(f[names[0]]["keypoints"], kept)  # kept, not recomputed
    with FeatureCache(out) as cache:
        assert len(cache.local(names[1]).keypoints) > 0


def test_unopenable_cache_is_rebuilt_not_trusted(tmp_path: Path) -> None:
    out = tmp_path / "feats.h5"
    out.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)  # a truncated file, as a kill during creation leaves it
    dataset = make_tiny_dataset(tmp_path / "data")
    extract_local_features(Sift(max_keypoints=100), dataset.root / "images", dataset.db_names[:1], out, progress=False)
    with FeatureCache(out) as cache:
        assert len(cache.local(dataset.db_names[0]).keypoints) > 0


def test_hloc_files_without_completion_marks_are_still_read(tmp_path: Path) -> None:
    """Files written by hloc have no marks at all; their groups count as complete."""
    out = tmp_path / "feats-hloc.h5"
    with h5py.File(out, "w") as f:
        write_local(f, "a.jpg", LocalFeatures(np.ones((3, 2), np.float32), np.eye(3, 8, dtype=np.float32),
                                              np.ones(3, np.float32), (10, 10)))
        del f["a.jpg"].attrs["complete"]
    extract_local_features(Sift(), tmp_path, ["a.jpg"], out, progress=False)  # nothing to do: a.jpg is there
    with FeatureCache(out) as cache:
        assert cache.local("a.jpg").descriptors.shape == (3, 8)


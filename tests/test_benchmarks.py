"""The benchmark scripts run end to end at toy size and report what they claim to measure."""

from __future__ import annotations

import json

import numpy as np
import pytest
from fixtures.scripts import load_script


@pytest.fixture(scope="module")
def bench_index_scale():
    return load_script("benchmarks/bench_index_scale")


def test_index_scale_benchmark_reports_speed_and_agreement(bench_index_scale, tmp_path, capsys):
    out = tmp_path / "rows.json"
    assert bench_index_scale.main(["--points", "3000", "--dims", "16", "--data", "clustered", "random",
                                   "--kinds", "flat", "ivf", "hnsw", "--nprobe", "4", "1000", "--queries", "64",
                                   "--repeats", "1", "--fp16_points", "2000", "--output", str(out)]) == 0
    rows = json.loads(out.read_text())
    searches = [r for r in rows if not r.get("fp16_check")]
    assert {(r["data"], r["kind"]) for r in searches} == {(d, k) for d in ("clustered", "random") for k in ("flat", "ivf", "hnsw")}
    for row in searches:
        assert row["search_ms"] > 0 and 0 <= row["agree"] <= 1 and row["subset"] == "true match"
        if row["kind"] == "ivf" and row["nprobe"] >= row["nlist"]:
            assert row["agree"] == 1.0  # every list visited: the same neighbours as flat search
        if row["kind"] == "ivf":
            assert row["imbalance"] >= 1.0
    assert [r["storage"] for r in rows if r.get("fp16_check")][0] == "float32 flat"
    assert "x flat" in capsys.readouterr().out


def test_strecha_data_is_real_rootsift_with_held_out_queries(bench_index_scale, strecha_root):
    points, queries, subset = bench_index_scale.make_data("strecha", 5000, 128, 300, 0, images=strecha_root)
    assert subset is None and points.shape == (5000, 128) and queries.shape == (300, 128)
    np.testing.assert_allclose(np.linalg.norm(points, axis=1), 1, atol=1e-4)  # RootSIFT: unit L2 norm
    assert (points >= 0).all()
    wide = bench_index_scale.embed(points, 512, noise=0.0, seed=0)
    # A noise-free orthonormal embedding keeps every distance: the 512-D map is the 128-D map in disguise.
    rows = np.random.default_rng(0).choice(5000, 50, replace=False)
    d128 = ((points[rows, None] - points[None, rows]) ** 2).sum(-1)
    d512 = ((wide[rows, None] - wide[None, rows]) ** 2).sum(-1)
    np.testing.assert_allclose(d512, d128, atol=1e-4)


def test_strecha_data_missing_is_a_skip_not_a_crash(bench_index_scale, tmp_path, capsys):
    assert bench_index_scale.main(["--points", "1000", "--dims", "16", "--data", "strecha", "--images",
                                   str(tmp_path), "--kinds", "flat", "--repeats", "1", "--fp16_points", "0"]) == 0
    assert "skipped" in capsys.readouterr().out


def test_memory_benchmark_measures_a_fresh_process_and_ends_with_the_summary_line(tmp_path, capsys):
    bench_memory = load_script("benchmarks/bench_memory")
    out = tmp_path / "rows.json"
    assert bench_memory.main(["--points", "20000", "--dims", "16", "--images", "1", "--keypoints", "256",
                              "--exact_sample", "0", "--variants", "ivf fp16", "today ivf-flat", "--threads", "1",
                              "--workdir", str(tmp_path), "--output", str(out)]) == 0
    rows = {r["variant"]: r for r in json.loads(out.read_text())}
    fp16, today = rows["ivf fp16"], rows["today ivf-flat"]
    # float16 lists hold what IVF-Flat holds, exactly: the same lists and neighbours at half the index bytes
    assert fp16["agreement"] == today["agreement"] and 0 < fp16["agreement"] <= 1
    assert fp16["index_mb"] < 0.6 * today["index_mb"] and fp16["peak_mb"] > 0 and fp16["speedup"] > 0
    last = capsys.readouterr().out.strip().splitlines()[-1].split()
    assert last[0::2] == ["ratio", "agreement", "speedup"] and float(last[1]) == pytest.approx(fp16["ratio"], abs=1e-3)

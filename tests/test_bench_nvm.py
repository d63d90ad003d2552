"""benchmarks/bench_nvm_scale.py at toy size: the synthetic all.nvm is a valid NVM file and the report is complete."""

from __future__ import annotations

import json

import numpy as np
import pytest
from fixtures.scripts import load_script

from fuseloc.data.readers.nvm import read_nvm


@pytest.fixture(scope="module")
def bench_nvm_scale():
    return load_script("benchmarks/bench_nvm_scale")


def test_synthetic_all_nvm_parses_to_what_was_written(bench_nvm_scale, tmp_path):
    sizes = bench_nvm_scale.write_synthetic_nvm(tmp_path / "all.nvm", 3000, 40, mean_track=4.0, chunk=700)
    fast = read_nvm(tmp_path / "all.nvm", method="vectorised")
    slow = read_nvm(tmp_path / "all.nvm", method="lines")
    assert (len(fast.points_xyz), fast.num_cameras, len(fast.obs_image)) == (3000, 40, sizes["measurements"])
    for field in ("points_xyz", "obs_image", "obs_point", "obs_keypoint", "obs_xy", "qvecs", "centers"):
        np.testing.assert_array_equal(getattr(fast, field), getattr(slow, field), err_msg=field)
    tracks = np.bincount(fast.obs_point)
    assert tracks.min() >= 2 and 3.7 < tracks.mean() < 4.3
    assert fast.names[1].startswith("./overcast-reference/rear/") and fast.names[1].endswith(".png")
    assert fast.obs_xy.min() >= 0 and fast.obs_xy.max() <= 1024  # absolute pixels, as COLMAP exports them


def test_nvm_benchmark_reports_time_memory_and_ratio(bench_nvm_scale, tmp_path, capsys):
    out = tmp_path / "rows.json"
    assert bench_nvm_scale.main(["--points", "2000", "--cameras", "30", "--compare_points", "800",
                                 "--output", str(out)]) == 0
    rows = json.loads(out.read_text())
    full = [r for r in rows if r.get("file") == "full"]
    assert len(full) == 1 and full[0]["method"] == "vectorised" and full[0]["points"] == 2000
    assert full[0]["measurements"] >= 2 * 2000
    assert full[0]["parse_s"] > 0 and full[0]["peak_above_baseline_gib"] >= 0
    compared = {r["method"]: r for r in rows if "method" in r and r["file"] == "compare"}
    assert set(compared) == {"vectorised", "lines"}
    assert compared["vectorised"]["measurements"] == compared["lines"]["measurements"]
    ratio = [r["speed_ratio"] for r in rows if "speed_ratio" in r]
    assert len(ratio) == 1 and ratio[0] == pytest.approx(compared["lines"]["parse_s"] / compared["vectorised"]["parse_s"])
    assert "speed ratio" in capsys.readouterr().out

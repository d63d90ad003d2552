"""Reading a RobotCar-sized NVM file (``all.nvm``): parse time and peak memory of the NVM reader.

    python benchmarks/bench_nvm_scale.py                          # 6.8M points, 20k cameras (RobotCar all.nvm)
    python benchmarks/bench_nvm_scale.py --points 200000 --compare_points 50000    # quick run

Writes a synthetic NVM file (COLMAP-export style: absolute pixel measurements, track lengths 2 + Poisson,
mean ``--mean_track``) and parses it in fresh subprocesses, so each peak (ru_maxrss, reported above the
post-import baseline) belongs to one parse:

1. the full file with the vectorised reader (``read_nvm(method="vectorised")``, the default);
2. a ``--compare_points`` file with both the vectorised and the line-by-line reader
   (``method="lines"``: the previous implementation's point-by-point Python parse), printing the speed ratio.

The mean track length of RobotCar's ``all.nvm`` is not documented in our notes; 4 (an assumption) gives a
file of about 1 GB at full size. Pass ``--mean_track`` to try others.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CONDITIONS = ("overcast-reference",)
CAMERAS = ("left", "rear", "right")


def write_synthetic_nvm(path: Path, num_points: int, num_cameras: int, mean_track: float, seed: int = 0,
                        chunk: int = 200_000) -> dict:
    """An NVM file shaped like RobotCar's ``all.nvm``; returns its sizes.

    Cameras: ``./overcast-reference/<cam>/<timestamp>.png`` with f = 400 and random poses. Points: a random
    position and colour, ``2 + Poisson(mean_track - 2)`` measurements of distinct random cameras with feature
    indices and absolute pixel positions in a 1024 x 1024 image, numbers printed with 6 significant digits as
    C++ streams do by default.
    """
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    num_measurements = 0
    with open(path, "w") as f:
        f.write(f"NVM_V3\n\n{num_cameras}\n")
        q = rng.normal(size=(num_cameras, 4))
        q /= np.linalg.norm(q, axis=1, keepdims=True)
        centers = rng.normal(size=(num_cameras, 3)) * 100
        lines = [f"./{CONDITIONS[0]}/{CAMERAS[k % 3]}/{1417176458000000 + 66_000 * (k // 3)}.png 400 "
                 f"{q[k, 0]:.9g} {q[k, 1]:.9g} {q[k, 2]:.9g} {q[k, 3]:.9g} "
                 f"{centers[k, 0]:.9g} {centers[k, 1]:.9g} {centers[k, 2]:.9g} 0 0\n" for k in range(num_cameras)]
        f.write("".join(lines))
        f.write(f"\n{num_points}\n")
        for begin in range(0, num_points, chunk):
            count = min(chunk, num_points - begin)
            lengths = 2 + rng.poisson(max(mean_track - 2.0, 0.0), count)
            num_measurements += int(lengths.sum())
            xyz = rng.normal(size=(count, 3)) * 50
            rgb = rng.integers(0, 256, (count, 3))
            parts = []
            for n in np.unique(lengths):
                rows = np.flatnonzero(lengths == n)
                meas = np.empty((len(rows), n, 4))
                meas[:, :, 0] = rng.integers(0, num_cameras, (len(rows), n))
                meas[:, :, 1] = rng.integers(0, 10_000, (len(rows), n))
                meas[:, :, 2:] = rng.uniform(0, 1024, (len(rows), n, 2))
                table = np.concatenate([xyz[rows], rgb[rows], np.full((len(rows), 1), n), meas.reshape(len(rows), -1)], 1)
                fmt = "%.6g %.6g %.6g %d %d %d %d" + " %d %d %.6g %.6g" * int(n) + "\n"
                parts.append((fmt * len(rows)) % tuple(table.ravel().tolist()))
            f.write("".join(parts))
        f.write("\n0\n")
    return {"points": num_points, "cameras": num_cameras, "measurements": num_measurements,
            "bytes": path.stat().st_size}


def _status_bytes(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def reset_peak_rss() -> int:
    """Reset the peak-RSS mark to the current RSS (Linux: ``/proc/self/clear_refs``) and return the current RSS.

    Without the reset, a transient peak during the imports would hide the parse's own peak.
    """
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    current = _status_bytes("VmRSS")
    return current if current is not None else peak_rss()


def peak_rss() -> int:
    peak = _status_bytes("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def stage(path: Path, method: str) -> dict:
    """Run in a subprocess: parse ``path`` with ``method``; time and peak RSS above the post-import baseline."""
    import logging

    from fuseloc.data.readers.nvm import read_nvm

    logging.disable(logging.INFO)
    baseline = reset_peak_rss()
    t0 = time.perf_counter()
    model = read_nvm(path, method=method)
    parse_s = time.perf_counter() - t0
    peak = peak_rss()
    arrays = sum(getattr(model, name).nbytes for name in ("focals", "qvecs", "centers", "radial", "points_xyz",
                                                           "obs_image", "obs_point", "obs_keypoint", "obs_xy"))
    return {"method": method, "parse_s": parse_s, "points": len(model.points_xyz),
            "measurements": int(len(model.obs_image)), "cameras": model.num_cameras,
            "peak_above_baseline_gib": (peak - baseline) / 2**30, "baseline_gib": baseline / 2**30,
            "arrays_gib": arrays / 2**30, "mb_per_s": path.stat().st_size / 1e6 / parse_s}


def run_stage(path: Path, method: str) -> dict:
    run = subprocess.run([sys.executable, __file__, "--stage", method, "--file", str(path)], capture_output=True,
                         text=True, check=False)
    if run.returncode:
        raise RuntimeError(f"{method} parse of {path} failed:\n{run.stderr}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def describe(r: dict) -> str:
    return (f"{r['points']} points, {r['measurements']} measurements, {r['cameras']} cameras: parse {r['parse_s']:.2f} s "
            f"({r['mb_per_s']:.0f} MB/s), peak RSS +{r['peak_above_baseline_gib']:.2f} GiB above the post-import "
            f"baseline ({r['baseline_gib']:.2f} GiB; model arrays {r['arrays_gib']:.2f} GiB)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--points", type=int, default=6_800_000)
    parser.add_argument("--cameras", type=int, default=20_000)
    parser.add_argument("--mean_track", type=float, default=4.0, help="mean measurements per point (>= 2)")
    parser.add_argument("--compare_points", type=int, default=300_000,
                        help="size of the file parsed by both readers for the speed ratio (0: skip)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=None, help="keep the files here instead of a temp dir")
    parser.add_argument("--output", type=Path, default=None, help="write the result rows as JSON")
    parser.add_argument("--stage", choices=["vectorised", "lines"], help=argparse.SUPPRESS)
    parser.add_argument("--file", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.stage:
        print(json.dumps(stage(args.file, args.stage)))
        return 0
    rows = []
    with tempfile.TemporaryDirectory(prefix="fuseloc-nvm-bench-") as tmp:
        work = args.workdir or Path(tmp)
        t0 = time.perf_counter()
        sizes = write_synthetic_nvm(work / "all.nvm", args.points, args.cameras, args.mean_track, args.seed)
        print(f"wrote {sizes['points']} points, {sizes['measurements']} measurements, {sizes['cameras']} cameras: "
              f"{sizes['bytes'] / 2**30:.2f} GiB in {time.perf_counter() - t0:.0f} s", flush=True)
        full = run_stage(work / "all.nvm", "vectorised")
        rows.append({"file": "full", **sizes, **full})
        print(f"[full, vectorised] {describe(full)}", flush=True)
        if args.workdir is None:
            (work / "all.nvm").unlink()
        if args.compare_points:
            small = write_synthetic_nvm(work / "compare.nvm", args.compare_points, args.cameras, args.mean_track,
                                        args.seed + 1)
            results = {m: run_stage(work / "compare.nvm", m) for m in ("vectorised", "lines")}
            for method, r in results.items():
                rows.append({"file": "compare", **small, **r})
                print(f"[compare, {method}] {describe(r)}", flush=True)
            ratio = results["lines"]["parse_s"] / results["vectorised"]["parse_s"]
            memory = results["lines"]["peak_above_baseline_gib"] / max(results["vectorised"]["peak_above_baseline_gib"], 1e-9)
            rows.append({"file": "compare", "speed_ratio": ratio, "memory_ratio": memory})
            print(f"speed ratio (line-by-line / vectorised parse time) at {args.compare_points} points: {ratio:.1f}x; "
                  f"peak memory ratio {memory:.1f}x")
    if args.output:
        args.output.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

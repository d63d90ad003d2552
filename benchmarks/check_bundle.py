"""Acceptance check of map bundles: localize.py on a bundle gives evaluate.py's poses and recall.

    python evaluate.py --data.output_dir /tmp/town --export_bundle /tmp/town-bundles      # export
    rm -r /tmp/town/town/cache                                                            # no caches left
    python benchmarks/check_bundle.py --run /tmp/town/town --bundles /tmp/town-bundles --condition night

For each method with a bundle, writes the ``--condition`` queries (with their intrinsics) to a list, runs
``localize.py --queries LIST --image_root IMAGES`` in a subprocess, and compares every pose with the method's
``predictions.jsonl`` (largest difference of quaternion and translation entries) and the recall at the
benchmark's thresholds. Exit code 1 when a pose differs by more than ``--tolerance`` or a recall differs.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def recall(poses: dict[str, tuple[np.ndarray, np.ndarray]], gt: dict, thresholds: list[tuple[float, float]]) -> list[float]:
    from fuseloc.types import Pose

    out = []
    for max_t, max_r in thresholds:
        hits = 0
        for name, truth in gt.items():
            q, t = poses[name]
            est = Pose.from_qt(q, t)
            dt = float(np.linalg.norm(est.center - truth.center))
            cos = (np.trace(est.R @ truth.R.T) - 1) / 2
            dr = float(np.degrees(np.arccos(np.clip(cos, -1, 1))))
            hits += dt <= max_t and dr <= max_r
        out.append(100.0 * hits / max(len(gt), 1))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="evaluate.py's benchmark folder (<output_dir>/<benchmark>)")
    parser.add_argument("--bundles", type=Path, required=True, help="the --export_bundle folder")
    parser.add_argument("--data_root", type=Path, help="dataset root (default: the embedded town's)")
    parser.add_argument("--condition", default="night")
    parser.add_argument("--tolerance", type=float, default=1e-6)
    args = parser.parse_args()

    from fuseloc.data.readers.generic import read_conditions, read_pose_list, read_query_list

    if args.data_root is None:
        from fuseloc.data.town import TownConfig, default_scene_dir

        args.data_root = default_scene_dir(TownConfig())
    entries = read_query_list(args.data_root / "queries_with_intrinsics.txt")
    conditions = read_conditions(args.data_root / "query_conditions.txt")
    gt_all = read_pose_list(args.data_root / "gt_poses.txt")
    chosen = [e for e in entries if conditions.get(e.name) == args.condition]
    thresholds = [(0.25, 2.0), (0.5, 5.0), (5.0, 10.0)]
    bundles = [args.bundles] if (args.bundles / "bundle.json").is_file() else sorted(
        p for p in args.bundles.iterdir() if (p / "bundle.json").is_file())
    failed = False
    with tempfile.TemporaryDirectory() as tmp:
        query_list = Path(tmp) / "queries.txt"
        query_list.write_text("".join(f"{e.name} {' '.join(e.camera.to_tokens())}\n" for e in chosen))
        for bundle in bundles:
            method = json.loads((bundle / "bundle.json").read_text())["method"]
            out = Path(tmp) / method
            proc = subprocess.run([sys.executable, str(REPO / "localize.py"), "--bundle", str(bundle), "--queries",
                                   str(query_list), "--image_root", str(args.data_root / "images"), "--output", str(out),
                                   "--quiet"], capture_output=True, text=True)
            if proc.returncode != 0:
                print(f"{method}: localize.py failed: {proc.stderr.strip()[-500:]}")
                failed = True
                continue
            ours = {r["name"]: r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}
            theirs = {r["name"]: r for r in map(json.loads, (args.run / method / "predictions.jsonl").read_text().splitlines())}
            worst, status_diff = 0.0, 0
            for e in chosen:
                a, b = ours[e.name], theirs[e.name]
                worst = max(worst, float(np.abs(np.r_[a["qvec"], a["tvec"]] - np.r_[b["qvec"], b["tvec"]]).max()))
                status_diff += (a["success"], a["num_inliers"], a["num_matches"]) != (b["success"], b["num_inliers"], b["num_matches"])
            gt = {e.name: gt_all[e.name] for e in chosen}
            r_ours = recall({n: (np.array(r["qvec"]), np.array(r["tvec"])) for n, r in ours.items()}, gt, thresholds)
            r_theirs = recall({n: (np.array(r["qvec"]), np.array(r["tvec"])) for n, r in theirs.items()}, gt, thresholds)
            ok = worst <= args.tolerance and r_ours == r_theirs and status_diff == 0
            failed |= not ok
            print(f"{method}: {len(chosen)} {args.condition} queries, max |pose difference| {worst:.3g}, "
                  f"{status_diff} differing inlier counts; recall localize.py {r_ours} vs evaluate.py {r_theirs} "
                  f"-> {'OK' if ok else 'MISMATCH'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

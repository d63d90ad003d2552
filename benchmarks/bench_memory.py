"""Localization memory at Aachen scale: what a process holds to localize against a 1.6M-point fused map.

    python benchmarks/bench_memory.py                                  # 1.6M points, 128-D and 512-D
    python benchmarks/bench_memory.py --points 200000 --dims 128 --exact_sample 1024

For each dimension the script writes a synthetic fused map (``map.h5``, float16 descriptors of ``--points``
points around ``points / 25`` random centres, so that IVF lists do not line up with the clusters) and query
images of ``--keypoints`` keypoint descriptors each (half noisy copies of map points, keypoints with a true
3D point, half fresh draws). Every index variant is built once into the index cache (not measured: the first
run's cost), then a FRESH process loads the map and the cached index the way ``evaluate.py`` does
(``FusedMap.load`` + ``Localizer`` with the cache folder), localizes every query image (search + PnP) and
reports the peak of its resident memory (VmHWM) above its baseline right after the imports. Variants:

- ``ivf fp16``: the default (IVF with float16 lists; the index is the map's descriptor store).
- ``ivf 8bit``: 8-bit lists.
- ``today ivf-flat``: what localization held before: the map's float16 descriptors in memory plus IVF-Flat.

Exact search (float32 flat) is timed in this process on ``--exact_sample`` query keypoints drawn from all
images (all of them when fewer): at 1.6M x 512-D one keypoint costs about 1.6 GFLOP, so all 32k keypoints
would take minutes on two cores. Agreement is the share of sampled keypoints whose 1-NN equals exact search's.
Speed-up: exact search time per keypoint over the index's search time per keypoint (search only, per image).

The last line is ``ratio R agreement A speedup S`` for the default (fp16) at the largest dimension, where
``ratio`` = peak RSS above baseline / float16 map size (descriptors, positions, database globals and poses).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

VARIANTS = {"ivf fp16": ("fp16", False), "ivf 8bit": ("8bit", False), "today ivf-flat": ("fp32", True)}
DB_IMAGES = 200
GLOBAL_DIM = 1024


def status_bytes(field: str) -> int:
    """``VmRSS`` or ``VmHWM`` of this process in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def make_map(path: Path, query_dir: Path, num_points: int, dim: int, num_images: int, keypoints: int, seed: int) -> None:
    """Write a synthetic fused map (local-only fusion: the query descriptors are searched as they are) and
    ``query_dir/q{i}.npy`` query images."""
    from fuseloc.localize.fused_map import FusedMap
    from fuseloc.models.fusion import FixedFusion, fusion_class_path, fusion_init_args, to_numpy

    rng = np.random.default_rng(seed)
    num_centres = max(num_points // 25, 1)
    centres = rng.standard_normal((num_centres, dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    descriptors = np.empty((num_points, dim), np.float16)
    for s in range(0, num_points, 200_000):
        n = min(200_000, num_points - s)
        chunk = centres[rng.integers(0, num_centres, n)] + 1.0 / np.sqrt(dim) * rng.standard_normal((n, dim), dtype=np.float32)
        descriptors[s : s + n] = chunk / np.linalg.norm(chunk, axis=1, keepdims=True)
    fusion = FixedFusion(dim, GLOBAL_DIM, lam=1.0, reduction="random")
    fusion.fit(rng.standard_normal((DB_IMAGES, GLOBAL_DIM)).astype(np.float32))
    angles = rng.uniform(-np.pi, np.pi, DB_IMAGES)
    rotations = np.stack([np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]]) for a in angles])
    FusedMap(points_xyz=rng.uniform(-100, 100, (num_points, 3)), descriptors=descriptors,
             db_names=[f"db/{i:05d}.jpg" for i in range(DB_IMAGES)],
             db_global=rng.standard_normal((DB_IMAGES, GLOBAL_DIM)).astype(np.float16),
             db_R_cam_from_world=rotations, db_t_cam_from_world=rng.uniform(-50, 50, (DB_IMAGES, 3)),
             fusion_class=fusion_class_path(fusion), fusion_args=fusion_init_args(fusion),
             fusion_state={k: to_numpy(v) for k, v in fusion.state_dict().items()}).save(path)
    query_dir.mkdir(parents=True, exist_ok=True)
    half = keypoints // 2
    for i in range(num_images):
        copies = descriptors[rng.integers(0, num_points, half)].astype(np.float32)
        copies += 0.25 / np.sqrt(dim) * rng.standard_normal(copies.shape, dtype=np.float32)
        fresh = centres[rng.integers(0, num_centres, keypoints - half)]
        fresh = fresh + 1.0 / np.sqrt(dim) * rng.standard_normal(fresh.shape, dtype=np.float32)
        queries = np.vstack([copies, fresh])
        np.save(query_dir / f"q{i}.npy", (queries / np.linalg.norm(queries, axis=1, keepdims=True)).astype(np.float32))


def child(args: argparse.Namespace) -> int:
    """The measured process: load map and cached index as evaluate.py does, localize every query image."""
    import faiss
    import h5py  # noqa: F401 (imported by the map loader; part of the baseline like every import)
    import torch

    from fuseloc.localize.fused_map import FusedMap
    from fuseloc.localize.index import IndexConfig
    from fuseloc.localize.pipeline import Localizer, LocalizerConfig
    from fuseloc.types import Camera

    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    baseline = status_bytes("VmRSS")
    t0 = time.perf_counter()
    fused_map = FusedMap.load(args.map)
    if args.eager:  # before this change: the map's descriptors were read into memory, next to the index
        fused_map.descriptors = np.array(fused_map.descriptors)
    config = LocalizerConfig(index=IndexConfig(codec=args.codec))
    localizer = Localizer(fused_map, config, index_cache_dir=args.cache)
    load_s = time.perf_counter() - t0
    if localizer.index.kind != "ivf":
        raise SystemExit(f"expected an IVF index, got {localizer.index.kind}")
    camera = Camera("PINHOLE", 1024, 768, (800.0, 800.0, 512.0, 384.0))
    rng = np.random.default_rng(0)
    search_s, nearest = 0.0, []
    t0 = time.perf_counter()
    for i in range(args.images):
        queries = np.load(Path(args.queries) / f"q{i}.npy")
        matches_keypoints = rng.uniform(0, (1024, 768), (len(queries), 2))
        # search through the Localizer (fusion + search), then the same keypoints' 1-NN for the agreement
        result = localizer.localize(camera, matches_keypoints, queries, np.zeros(fused_map.db_global.shape[1], np.float32))
        search_s += result.timings["search"]
        nearest.append(localizer.index.search(queries).indices[:, 0])
    localize_s = time.perf_counter() - t0
    np.save(args.out.with_suffix(".npy"), np.concatenate(nearest))
    args.out.write_text(json.dumps({"baseline": baseline, "peak": status_bytes("VmHWM"), "load_s": load_s,
                                    "search_s": search_s, "localize_s": localize_s,
                                    "index_nbytes": localizer.index.nbytes(), "map_nbytes": fused_map.nbytes()}))
    return 0


def build_index(map_path: Path, cache: Path, codec: str, threads: int) -> float:
    """Build one variant's index into the cache (in this process; not measured)."""
    import faiss

    from fuseloc.localize.fused_map import FusedMap
    from fuseloc.localize.index import IndexConfig, load_or_build_index

    faiss.omp_set_num_threads(threads)
    fused_map = FusedMap.load(map_path)
    t0 = time.perf_counter()
    index = load_or_build_index(fused_map.descriptors, IndexConfig(codec=codec), cache, digest=fused_map.descriptor_digest())
    seconds = time.perf_counter() - t0
    del index, fused_map
    return seconds


def exact_nearest(map_path: Path, query_dir: Path, images: int, sample: int, seed: int) -> tuple[np.ndarray, np.ndarray, float]:
    """(sampled keypoint rows over all images, their exact 1-NN, seconds per keypoint of float32 flat search)."""
    from fuseloc.localize.fused_map import FusedMap
    from fuseloc.localize.index import IndexConfig, MapIndex

    queries = np.concatenate([np.load(query_dir / f"q{i}.npy") for i in range(images)])
    rows = np.arange(len(queries))
    if 0 < sample < len(queries):
        rows = np.sort(np.random.default_rng(seed).choice(len(queries), sample, replace=False))
    flat = MapIndex(FusedMap.load(map_path).descriptors, IndexConfig(kind="flat"))
    t0 = time.perf_counter()
    nearest = np.concatenate([flat.search(queries[rows[s : s + 1024]]).indices[:, 0] for s in range(0, len(rows), 1024)])
    seconds = (time.perf_counter() - t0) / len(rows)
    return rows, nearest, seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--points", type=int, default=1_600_000)
    parser.add_argument("--dims", type=int, nargs="+", default=[128, 512])
    parser.add_argument("--images", type=int, default=8, help="query images")
    parser.add_argument("--keypoints", type=int, default=4096, help="keypoints per query image")
    parser.add_argument("--exact_sample", type=int, default=2048, help="query keypoints searched exactly (0: all)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--workdir", type=Path, default=None, help="keep maps and indexes here (default: a temp dir)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=None, help="also write the rows as JSON here")
    # the measured child process
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--map", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--cache", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--codec", default="fp16", help=argparse.SUPPRESS)
    parser.add_argument("--eager", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--queries", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.child:
        return child(args)
    with tempfile.TemporaryDirectory(prefix="bench_memory-") as tmp:
        root = args.workdir or Path(tmp)
        rows, last = [], None
        for dim in args.dims:
            work = root / f"{args.points}x{dim}"
            work.mkdir(parents=True, exist_ok=True)
            map_path, query_dir, cache = work / "map.h5", work / "queries", work / "cache"
            t0 = time.perf_counter()
            if not map_path.is_file() or not (query_dir / f"q{args.images - 1}.npy").is_file():
                make_map(map_path, query_dir, args.points, dim, args.images, args.keypoints, args.seed)
            map_file_mb = map_path.stat().st_size / 1e6
            print(f"\n== {args.points} points x {dim}-D, {args.images} query images x {args.keypoints} keypoints "
                  f"(map {map_file_mb:.0f} MB on disk, made in {time.perf_counter() - t0:.0f} s)", flush=True)
            sample_rows, exact, exact_s = exact_nearest(map_path, query_dir, args.images, args.exact_sample, args.seed)
            print(f"exact float32 flat search on {len(sample_rows)} of {args.images * args.keypoints} keypoints: "
                  f"{1e3 * exact_s:.2f} ms per keypoint", flush=True)
            print(f"{'variant':16s} {'build s':>8s} {'peak MB':>8s} {'map MB':>8s} {'ratio':>6s} {'index MB':>8s} "
                  f"{'load s':>7s} {'search s':>9s} {'speedup':>8s} {'agree':>6s}")
            for name in args.variants:
                codec, eager = VARIANTS[name]
                build_s = build_index(map_path, cache, codec, args.threads)
                out = work / f"child-{codec}{'-eager' if eager else ''}.json"
                cmd = [sys.executable, __file__, "--child", "--map", str(map_path), "--cache", str(cache), "--codec", codec,
                       "--queries", str(query_dir), "--images", str(args.images), "--threads", str(args.threads),
                       "--out", str(out)] + (["--eager"] if eager else [])
                subprocess.run(cmd, check=True)
                measured = json.loads(out.read_text())
                nearest = np.load(out.with_suffix(".npy"))
                peak = measured["peak"] - measured["baseline"]
                per_keypoint = measured["search_s"] / (args.images * args.keypoints)
                row = {"points": args.points, "dim": dim, "variant": name, "codec": codec, "build_s": build_s,
                       "peak_mb": peak / 1e6, "map_mb": measured["map_nbytes"] / 1e6, "ratio": peak / measured["map_nbytes"],
                       "index_mb": measured["index_nbytes"] / 1e6, "load_s": measured["load_s"],
                       "search_s": measured["search_s"], "localize_s": measured["localize_s"],
                       "speedup": exact_s / per_keypoint, "agreement": float((nearest[sample_rows] == exact).mean()),
                       "exact_sample": len(sample_rows)}
                rows.append(row)
                print(f"{name:16s} {build_s:8.1f} {row['peak_mb']:8.0f} {row['map_mb']:8.0f} {row['ratio']:6.2f} "
                      f"{row['index_mb']:8.0f} {row['load_s']:7.1f} {row['search_s']:9.2f} {row['speedup']:8.1f} "
                      f"{row['agreement']:6.3f}", flush=True)
                if codec == "fp16":
                    last = row
        if args.output:
            args.output.write_text(json.dumps(rows, indent=1))
        if last is None:
            last = rows[-1]
        print(f"ratio {last['ratio']:.3f} agreement {last['agreement']:.4f} speedup {last['speedup']:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

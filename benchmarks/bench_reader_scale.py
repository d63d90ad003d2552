"""Reading an Aachen-v1.1-sized COLMAP model and fusing its map: time and peak memory.

    python benchmarks/bench_reader_scale.py                  # 6.7k images, 1.6M points, ~10M observations
    python benchmarks/bench_reader_scale.py --points 100000 --images 500   # quick run

Writes a synthetic legacy binary model (and a fake 128-D local / 4096-D global feature cache in hloc's h5
layout, streamed image by image) into a temporary directory, then measures in fresh subprocesses, so each
peak (ru_maxrss) belongs to one stage: (1) Scene.from_colmap, (2) Scene.from_colmap + build_fused_map.
"""

from __future__ import annotations

import argparse
import json
import resource
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def write_model(model_dir: Path, num_images: int, num_points: int, mean_track: float, extra_2d: float, seed: int) -> dict:
    """A legacy binary model with random geometry and tracks; returns sizes."""
    from fuseloc.data.readers.colmap_model import POINT2D_DTYPE
    from fuseloc.data.writers import write_cameras_binary, write_points_binary
    from fuseloc.types import Camera

    rng = np.random.default_rng(seed)
    model_dir.mkdir(parents=True, exist_ok=True)
    write_cameras_binary(model_dir / "cameras.bin", {1: Camera("SIMPLE_RADIAL", 1600, 1200, (1400.0, 800.0, 600.0, 0.01))})
    lengths = 2 + rng.poisson(mean_track - 2, num_points)
    obs_point = np.repeat(np.arange(num_points, dtype=np.int64), lengths)
    # Distinct images within a track (as in SfM): image = first + k * step (mod N) with k * step < N.
    max_len = int(lengths.max())
    first = rng.integers(0, num_images, num_points)
    step = rng.integers(1, max(2, num_images // max_len), num_points)
    k = np.arange(len(obs_point)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    obs_image = (np.repeat(first, lengths) + k * np.repeat(step, lengths)) % num_images
    # Index of each observation in its image's 2D point list: rank within the image.
    order = np.argsort(obs_image, kind="stable")
    bounds = np.searchsorted(obs_image[order], np.arange(num_images + 1))
    obs_kp = np.empty(len(obs_point), np.int64)
    for i in range(num_images):
        obs_kp[order[bounds[i]:bounds[i + 1]]] = np.arange(bounds[i + 1] - bounds[i])
    point_ids = np.arange(1, num_points + 1, dtype=np.int64)
    image_head = struct.Struct("<i7di")
    with open(model_dir / "images.bin", "wb") as f:
        f.write(struct.pack("<Q", num_images))
        for i in range(num_images):
            sel = order[bounds[i]:bounds[i + 1]]
            n_obs = len(sel)
            n_total = n_obs + int(extra_2d * n_obs)
            points = np.zeros(n_total, POINT2D_DTYPE)
            points["xy"] = rng.uniform(0, 1200, (n_total, 2))
            points["point3D_id"] = -1
            points["point3D_id"][:n_obs] = point_ids[obs_point[sel]]
            q = rng.normal(size=4)
            f.write(image_head.pack(i + 1, *(q / np.linalg.norm(q)), *rng.normal(size=3), 1))
            f.write(f"db/{i + 1}.jpg".encode() + b"\0")
            f.write(struct.pack("<Q", n_total))
            f.write(points.tobytes())
    # Observations are stored point after point, so they are the points' track elements in order.
    write_points_binary(model_dir / "points3D.bin", point_ids, rng.normal(size=(num_points, 3)) * 50, lengths,
                        np.stack([obs_image + 1, obs_kp], 1))
    sizes = {"images": num_images, "points": num_points, "observations": int(len(obs_point))}
    sizes["bytes"] = {p.name: p.stat().st_size for p in model_dir.iterdir()}
    return sizes


def write_features(model_dir: Path, local_path: Path, global_path: Path, global_dim: int, seed: int) -> None:
    """Random unit 128-D descriptors for every 2D point of every image, one h5 group at a time."""
    import h5py

    from fuseloc.data.feature_cache import write_global
    from fuseloc.data.readers.colmap_model import POINT2D_DTYPE

    rng = np.random.default_rng(seed)
    buf = (model_dir / "images.bin").read_bytes()
    (count,) = struct.unpack_from("<Q", buf, 0)
    offset = 8
    with h5py.File(local_path, "w") as local, h5py.File(global_path, "w") as glob:
        for _ in range(count):
            offset += 64
            end = buf.index(b"\0", offset)
            name = buf[offset:end].decode()
            offset = end + 1
            (n,) = struct.unpack_from("<Q", buf, offset)
            offset += 8
            xy = np.frombuffer(buf, POINT2D_DTYPE, count=n, offset=offset)["xy"]
            offset += n * POINT2D_DTYPE.itemsize
            desc = rng.standard_normal((128, n), dtype=np.float32)
            desc /= np.linalg.norm(desc, axis=0, keepdims=True)
            group = local.create_group(name)
            group.create_dataset("keypoints", data=(xy - 0.5).astype(np.float32))
            group.create_dataset("descriptors", data=desc.astype(np.float16))
            group.create_dataset("image_size", data=np.array([1600, 1200]))
            write_global(glob, name, rng.standard_normal(global_dim).astype(np.float32))


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB


def stage(name: str, model_dir: Path, local_path: Path, global_path: Path) -> dict:
    """Run in a subprocess: read the model (and build the fused map)."""
    import torch

    from fuseloc.data.scene import Scene

    # torch's intra-op pool on a busy 2-core machine made each small fuse() call ~100x slower (47 ms vs 0.2 ms).
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    scene = Scene.from_colmap(model_dir)
    read_s = time.perf_counter() - t0
    out = {"stage": name, "read_s": read_s, "images": scene.num_images, "points": scene.num_points,
           "observations": int(len(scene.obs_point))}
    if name == "map":
        from fuseloc.data.feature_cache import FeatureCache
        from fuseloc.localize.fused_map import build_fused_map
        from fuseloc.models.fusion import FixedFusion

        scene.keypoint_source = "bench"
        with FeatureCache(local_path, global_path) as cache:
            fusion = FixedFusion(128, cache.global_descriptor(scene.image_names[0]).shape[0], lam=0.4)
            t1 = time.perf_counter()
            fusion.fit(cache.global_descriptors(scene.image_names))
            fused = build_fused_map(scene, cache, fusion, feature_tag="bench", progress=False)
            out["map_s"] = time.perf_counter() - t1
            out["map_points"] = fused.num_points
            out["map_mb"] = fused.nbytes() / 1e6
    out["peak_rss_gib"] = peak_rss_gib()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=6697)
    parser.add_argument("--points", type=int, default=1_600_000)
    parser.add_argument("--mean_track", type=float, default=6.25, help="mean observations per point")
    parser.add_argument("--extra_2d", type=float, default=0.3, help="unobserved 2D points per observed one")
    parser.add_argument("--global_dim", type=int, default=4096)
    parser.add_argument("--no_map", action="store_true", help="skip the fused-map stage (and the feature cache)")
    parser.add_argument("--workdir", type=Path, default=None, help="keep files here instead of a temp dir")
    parser.add_argument("--stage", choices=["read", "map"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    work = args.workdir
    if args.stage:
        print(json.dumps(stage(args.stage, work / "model", work / "local.h5", work / "global.h5")))
        return
    with tempfile.TemporaryDirectory(prefix="fuseloc-bench-") as tmp:
        work = args.workdir or Path(tmp)
        t0 = time.perf_counter()
        sizes = write_model(work / "model", args.images, args.points, args.mean_track, args.extra_2d, seed=0)
        print(f"model written in {time.perf_counter() - t0:.1f} s: {json.dumps(sizes)}")
        stages = ["read"]
        if not args.no_map:
            t0 = time.perf_counter()
            write_features(work / "model", work / "local.h5", work / "global.h5", args.global_dim, seed=0)
            print(f"feature cache written in {time.perf_counter() - t0:.1f} s "
                  f"({(work / 'local.h5').stat().st_size / 2**30:.2f} GiB local)")
            stages.append("map")
        for name in stages:
            run = subprocess.run([sys.executable, __file__, "--stage", name, "--workdir", str(work)],
                                 capture_output=True, text=True, check=False)
            if run.returncode:
                print(run.stderr, file=sys.stderr)
                sys.exit(run.returncode)
            r = json.loads(run.stdout.strip().splitlines()[-1])
            line = (f"[{name}] Scene.from_colmap: {r['read_s']:.1f} s for {r['images']} images, {r['points']} points, "
                    f"{r['observations']} observations")
            if name == "map":
                line += f"; fit + build_fused_map: {r['map_s']:.1f} s ({r['map_points']} points, {r['map_mb']:.0f} MB map)"
            print(line + f"; peak RSS {r['peak_rss_gib']:.2f} GiB")


if __name__ == "__main__":
    main()

"""Localization memory at Aachen scale: what a process holds to localize against a 1.6M-point fused map.

    python benchmarks/bench_memory.py                                  # 1.6M points, 128-D and 512-D
    python benchmarks/bench_memory.py --points 200000 --dims 128 --exact_sample 1024
    python benchmarks/bench_memory.py --photos ../shared/data/strecha   # other photos (any folder of photos)

Data (``--data photos``, the default): a fused map of real descriptors, built as ``photo_descriptors.py``
describes: RootSIFT of random views (viewpoint and light) of real photos, by default the ones shipped with
scikit-image and scikit-learn (no download), each keypoint fused with its view's PCA-reduced VLAD as fuseloc
fuses (λ ``--lam``, 0.5 as evaluate.py's fused method); 512-D descriptors embed RootSIFT in 512 dimensions
with noise (``--embed_noise``). The query images are new views of the mapped photos (keypoints that see mapped
surfaces again: the ``true`` subset) plus views of held-out photos (distractors), fused with their own VLAD.
The map file stores the fused descriptors with a local-only fusion, so the measured process searches the query
descriptors as they are (fusing at query time costs the same whatever λ). ``--data clustered`` is the earlier
synthetic map (points around ``points / 25`` random centres, half the queries noisy copies of map points): it
has no neighbourhood structure an inverted file can exploit (IVF-Flat agreed with exact search on 0.68-0.70 of
its keypoints, whatever the codec), unlike real descriptors.

Every index variant is built once into the index cache (not measured: the first run's cost), then a FRESH
process loads the map and the cached index the way ``evaluate.py`` does (``FusedMap.load`` + ``Localizer`` with
the cache folder), localizes every query image (search + PnP) and reports the peak of its resident memory
(VmHWM) above its baseline right after the imports. Variants:

- ``ivf fp16``: the default (IVF with float16 lists; the index is the map's descriptor store).
- ``ivf 8bit``: 8-bit lists.
- ``today ivf-flat``: what localization held before: the map's float16 descriptors in memory plus IVF-Flat.

Exact search (float32 flat) is timed in this process on ``--exact_sample`` query keypoints drawn uniformly from
all images (all of them when fewer or 0): at 1.6M x 512-D one keypoint costs about 1.6 GFLOP, so all 32k
keypoints would take many minutes on two cores. Agreement is the share of sampled keypoints whose 1-NN equals
exact search's (``agree true``: over the keypoints of mapped photos only). Speed-up: exact search time per
keypoint over the index's search time per keypoint (search only, per image).

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


def clustered_data(num_points: int, dim: int, num_images: int, keypoints: int,
                   seed: int) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
    """``--data clustered``: float16 points around ``points / 25`` random centres; query images of half noisy
    copies of map points (``true``), half fresh draws."""
    rng = np.random.default_rng(seed)
    num_centres = max(num_points // 25, 1)
    centres = rng.standard_normal((num_centres, dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    descriptors = np.empty((num_points, dim), np.float16)
    for s in range(0, num_points, 200_000):
        n = min(200_000, num_points - s)
        chunk = centres[rng.integers(0, num_centres, n)] + 1.0 / np.sqrt(dim) * rng.standard_normal((n, dim), dtype=np.float32)
        descriptors[s : s + n] = chunk / np.linalg.norm(chunk, axis=1, keepdims=True)
    half = keypoints // 2
    queries, true = [], []
    for _ in range(num_images):
        copies = descriptors[rng.integers(0, num_points, half)].astype(np.float32)
        copies += 0.25 / np.sqrt(dim) * rng.standard_normal(copies.shape, dtype=np.float32)
        fresh = centres[rng.integers(0, num_centres, keypoints - half)]
        fresh = fresh + 1.0 / np.sqrt(dim) * rng.standard_normal(fresh.shape, dtype=np.float32)
        image = np.vstack([copies, fresh])
        queries.append((image / np.linalg.norm(image, axis=1, keepdims=True)).astype(np.float32))
        true.append(np.r_[np.ones(half, bool), np.zeros(keypoints - half, bool)])
    return descriptors, queries, true


def photo_views(root: Path, args: argparse.Namespace):  # noqa: ANN201 (photo_descriptors.PhotoViews)
    """The real RootSIFT views of ``--photos`` (shipped photos by default), extracted once into ``root`` for
    every dimension."""
    import pickle

    from photo_descriptors import extract_views, load_photos

    source = "shipped" if args.photos is None else args.photos.resolve().name
    path = root / f"views-{source}-{args.points}-{args.images}x{args.keypoints}-k{args.keypoints_per_view}-s{args.seed}.pkl"
    if path.is_file():
        return pickle.loads(path.read_bytes())
    t0 = time.perf_counter()
    print(f"extracting RootSIFT from views of {args.photos or 'the photos shipped with scikit-image / scikit-learn'}", flush=True)
    views = extract_views(load_photos(args.photos), args.points, args.images, args.keypoints, args.keypoints_per_view,
                          seed=args.seed)
    print(f"  in {time.perf_counter() - t0:.0f} s", flush=True)
    path.write_bytes(pickle.dumps(views, protocol=pickle.HIGHEST_PROTOCOL))
    return views


def make_map(path: Path, query_dir: Path, dim: int, args: argparse.Namespace, views=None) -> None:  # noqa: ANN001
    """Write the fused map (local-only fusion: the query descriptors are searched as they are) and
    ``query_dir/q{i}.npy`` query images (``q{i}-true.npy``: the keypoints that see mapped surfaces)."""
    from fuseloc.localize.fused_map import FusedMap
    from fuseloc.models.fusion import FixedFusion, fusion_class_path, fusion_init_args, to_numpy

    if views is None:
        descriptors, queries, true = clustered_data(args.points, dim, args.images, args.keypoints, args.seed)
    else:
        from photo_descriptors import fuse_views

        data = fuse_views(views, dim, lam=args.lam, embed_noise=args.embed_noise, seed=args.seed)
        descriptors, queries, true = data.map_descriptors, data.queries, data.query_true
    num_points = len(descriptors)
    rng = np.random.default_rng(args.seed)
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
    for i, (image, image_true) in enumerate(zip(queries, true)):
        np.save(query_dir / f"q{i}-true.npy", image_true)
        np.save(query_dir / f"q{i}.npy", np.ascontiguousarray(image, np.float32))  # last: marks the data complete


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
    config = LocalizerConfig(index=IndexConfig(codec=args.codec, nprobe=args.nprobe))
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
                                    "search_s": search_s, "localize_s": localize_s, "nlist": localizer.index.nlist,
                                    "nprobe": int(localizer.index.index.nprobe),
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


def exact_nearest(map_path: Path, query_dir: Path, images: int, sample: int,
                  seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, int]:
    """(sampled keypoint rows over all images, their exact 1-NN, their ``true`` flags, seconds per keypoint of
    float32 flat search, number of query keypoints)."""
    from fuseloc.localize.fused_map import FusedMap
    from fuseloc.localize.index import IndexConfig, MapIndex

    queries = np.concatenate([np.load(query_dir / f"q{i}.npy") for i in range(images)])
    true = np.concatenate([np.load(query_dir / f"q{i}-true.npy") for i in range(images)])
    rows = np.arange(len(queries))
    if 0 < sample < len(queries):
        rows = np.sort(np.random.default_rng(seed).choice(len(queries), sample, replace=False))
    flat = MapIndex(FusedMap.load(map_path).descriptors, IndexConfig(kind="flat"))
    t0 = time.perf_counter()
    nearest = np.concatenate([flat.search(queries[rows[s : s + 1024]]).indices[:, 0] for s in range(0, len(rows), 1024)])
    seconds = (time.perf_counter() - t0) / len(rows)
    return rows, nearest, true[rows], seconds, len(queries)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--points", type=int, default=1_600_000)
    parser.add_argument("--dims", type=int, nargs="+", default=[128, 512])
    parser.add_argument("--images", type=int, default=8, help="query images")
    parser.add_argument("--keypoints", type=int, default=4096, help="keypoints per query image")
    parser.add_argument("--exact_sample", type=int, default=2048, help="query keypoints searched exactly (0: all)")
    parser.add_argument("--data", choices=["photos", "clustered"], default="photos",
                        help="real fused descriptors of photos, or the synthetic clusters (module docstring)")
    parser.add_argument("--photos", type=Path, default=None,
                        help="folder of photos for --data photos (default: the photos shipped with scikit-image/-learn)")
    parser.add_argument("--lam", type=float, default=0.5, help="fusion weight of the local part (--data photos; 1: local-only)")
    parser.add_argument("--embed_noise", type=float, default=0.3, help="noise of the 128->D embedding (--data photos)")
    parser.add_argument("--keypoints_per_view", type=int, default=800, help="map points per view (--data photos)")
    parser.add_argument("--nprobe", type=int, default=0, help="IVF lists visited per keypoint (0: IndexConfig's default)")
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
        rows, last, views = [], None, None
        if args.data == "photos":
            try:
                sys.path.insert(0, str(Path(__file__).resolve().parent))  # photo_descriptors, beside this script
                views = photo_views(root, args)
            except FileNotFoundError as error:
                print(f"no photos ({error}): falling back to --data clustered, whose agreement says little", flush=True)
                args.data = "clustered"
        data_name = args.data if views is None else (
            f"photos-{'shipped' if args.photos is None else args.photos.resolve().name}-lam{args.lam:g}-noise{args.embed_noise:g}"
            f"-k{args.keypoints_per_view}")
        for dim in args.dims:
            work = root / f"{data_name}-{args.points}x{dim}-{args.images}x{args.keypoints}-s{args.seed}"
            work.mkdir(parents=True, exist_ok=True)
            map_path, query_dir, cache = work / "map.h5", work / "queries", work / "cache"
            t0 = time.perf_counter()
            if not map_path.is_file() or not (query_dir / f"q{args.images - 1}.npy").is_file():
                make_map(map_path, query_dir, dim, args, views)
            map_file_mb = map_path.stat().st_size / 1e6
            sample_rows, exact, sample_true, exact_s, num_keypoints = exact_nearest(
                map_path, query_dir, args.images, args.exact_sample, args.seed)
            print(f"\n== {data_name}: {args.points} points x {dim}-D, {args.images} query images, {num_keypoints} keypoints "
                  f"(map {map_file_mb:.0f} MB on disk, made in {time.perf_counter() - t0:.0f} s)", flush=True)
            print(f"exact float32 flat search on {len(sample_rows)} of {num_keypoints} keypoints "
                  f"({sample_true.mean():.0%} of them see mapped surfaces): {1e3 * exact_s:.2f} ms per keypoint", flush=True)
            print(f"{'variant':16s} {'nlist':>6s} {'nprobe':>6s} {'build s':>8s} {'peak MB':>8s} {'map MB':>8s} {'ratio':>6s} "
                  f"{'index MB':>8s} {'load s':>7s} {'search s':>9s} {'speedup':>8s} {'agree':>6s} {'agree true':>10s}")
            for name in args.variants:
                codec, eager = VARIANTS[name]
                build_s = build_index(map_path, cache, codec, args.threads)
                out = work / f"child-{codec}{'-eager' if eager else ''}.json"
                cmd = [sys.executable, __file__, "--child", "--map", str(map_path), "--cache", str(cache), "--codec", codec,
                       "--queries", str(query_dir), "--images", str(args.images), "--threads", str(args.threads),
                       "--nprobe", str(args.nprobe), "--out", str(out)] + (["--eager"] if eager else [])
                subprocess.run(cmd, check=True)
                measured = json.loads(out.read_text())
                nearest = np.load(out.with_suffix(".npy"))
                peak = measured["peak"] - measured["baseline"]
                per_keypoint = measured["search_s"] / num_keypoints
                agree = nearest[sample_rows] == exact
                row = {"points": args.points, "dim": dim, "data": data_name, "variant": name, "codec": codec,
                       "nlist": measured["nlist"], "nprobe": measured["nprobe"], "build_s": build_s,
                       "peak_mb": peak / 1e6, "map_mb": measured["map_nbytes"] / 1e6, "ratio": peak / measured["map_nbytes"],
                       "index_mb": measured["index_nbytes"] / 1e6, "load_s": measured["load_s"],
                       "search_s": measured["search_s"], "localize_s": measured["localize_s"],
                       "speedup": exact_s / per_keypoint, "agreement": float(agree.mean()),
                       "agreement_true": float(agree[sample_true].mean()) if sample_true.any() else None,
                       "exact_sample": len(sample_rows), "keypoints": num_keypoints}
                rows.append(row)
                agree_true = "-" if row["agreement_true"] is None else f"{row['agreement_true']:.3f}"
                print(f"{name:16s} {row['nlist']:6d} {row['nprobe']:6d} {build_s:8.1f} {row['peak_mb']:8.0f} "
                      f"{row['map_mb']:8.0f} {row['ratio']:6.2f} {row['index_mb']:8.0f} {row['load_s']:7.1f} "
                      f"{row['search_s']:9.2f} {row['speedup']:8.1f} {row['agreement']:6.3f} {agree_true:>10s}", flush=True)
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

"""Nearest-neighbour search at map scale: exact flat vs IVF-Flat, HNSW and IVF-PQ on Aachen-sized maps.

    python benchmarks/bench_index_scale.py                                   # 1.6M real RootSIFT + synthetic
    python benchmarks/bench_index_scale.py --data strecha --dims 128 512 --kinds flat ivf --nprobe 32 64 128
    python benchmarks/bench_index_scale.py --points 100000 400000 1600000 --data clustered --kinds flat ivf
    python benchmarks/bench_index_scale.py --data photos --points 200000 --dims 128 512 --kinds flat ivf --nprobe 32 64 128
    python benchmarks/bench_index_scale.py --gpu                             # faiss-gpu, when a GPU is there

One "query" is a batch of ``--queries`` keypoint descriptors (one image). Map kinds (``--data``):

- ``strecha``: real RootSIFT descriptors. The map holds the keypoints of the Strecha photos (``--images``, by
  default ``../shared/data/strecha`` beside the repository) seen under random synthetic viewpoint changes
  (scale, rotation, squash, perspective), cycled until the map has ``--points`` descriptors, so it has the
  structure of real descriptors at Aachen's size; the queries are keypoints of one held-out photo per scene,
  as a query image would be. At 512-D the same descriptors go through a fixed random orthonormal 128->512
  embedding plus isotropic noise (``--embed_noise``, norm relative to the unit descriptor), which keeps their
  structure and adds the cost of the wider vectors. "distinctive" keypoints pass Lowe's ratio test (0.8) on
  the exact two nearest neighbours: the ones a matcher would keep. Since the map holds several views of each
  photo, one surface point can have near-identical descriptors in the map; an index that returns another view's
  copy counts as disagreeing, so the agreement here is, if anything, pessimistic.
- ``photos``: fused descriptors of real photos as fuseloc fuses them (RootSIFT + PCA-reduced VLAD, λ ``--lam``),
  with real re-observations as queries and distractors from held-out photos (``photo_descriptors.py`` says how;
  the photos shipped with scikit-image and scikit-learn, or ``--photos DIR``); the data of ``bench_memory.py``.
- ``random``: Gaussian points, the pessimistic case (no structure for an index to exploit).
- ``clustered``: points around P/100 random centres. Beware: how well an IVF index agrees with exact search
  here depends on how its lists line up with those centres (16384 lists over 16000 centres: exact), so read it
  as a bound, not as a prediction.
For ``photos`` the subset is the keypoints of a view of a mapped photo (the others are distractors). For the
synthetic kinds half the queries are noisy copies of map points (keypoints with a true 3D point) and
half fresh draws (keypoints with none); the subset agreement is over the first half. Reported per index: build
time, median search time over ``--repeats`` batches, resident memory added by the index, and agreement of its
1-NN with exact search (all queries, and the subset).

The fp16 check (``--fp16_points``) compares float32 flat search with what a float16 map can use: the
``MapIndex`` built from float16 input (widened once to float32) and faiss' float16 scalar quantizer.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # photo_descriptors, beside this script

from fuseloc.io import write_json_atomic
from fuseloc.localize.index import IndexConfig, MapIndex, SearchResult

#: Spread of points around their centre (noise norm, for unit-norm centres ~1.4 apart): clusters overlap, as
#: descriptors of neighbouring visual words do; with much tighter clusters every index looks exact.
SPREAD = 1.0

DEFAULT_IMAGES = Path(__file__).resolve().parents[2] / "shared" / "data" / "strecha"


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def make_data(kind: str, num_points: int, dim: int, num_queries: int, seed: int,
              images: Path | None = None, embed_noise: float = 0.3, photos: Path | None = None,
              lam: float = 0.5) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(P, D) map, (Q, D) queries, (Q,) bool subset mask (None: computed from exact search); float32 (unit-norm
    but for ``photos``, whose fused descriptors are not normalised, as fuseloc's fixed fusion)."""
    rng = np.random.default_rng(seed)
    if kind == "photos":
        from photo_descriptors import extract_views, fuse_views, load_photos

        per_image = 2048
        views = extract_views(load_photos(photos), num_points, max(1, round(num_queries / per_image)), per_image, seed=seed)
        data = fuse_views(views, dim, lam=lam, embed_noise=embed_noise, seed=seed, map_dtype=np.float32)
        return data.map_descriptors, np.vstack(data.queries), np.concatenate(data.query_true)
    if kind == "strecha":
        points, queries = strecha_descriptors(images, num_points, num_queries, seed)
        if dim != points.shape[1]:
            points, queries = embed(points, dim, embed_noise, seed), embed(queries, dim, embed_noise, seed + 1)
        return points, queries, None
    half = num_queries // 2
    if kind == "random":
        points = rng.standard_normal((num_points, dim), dtype=np.float32)
        fresh = rng.standard_normal((num_queries - half, dim), dtype=np.float32)
    elif kind == "clustered":
        num_centres = max(num_points // 100, 1)
        centres = rng.standard_normal((num_centres, dim), dtype=np.float32)
        centres /= np.linalg.norm(centres, axis=1, keepdims=True)
        points = np.empty((num_points, dim), np.float32)
        chunk = 200_000
        for s in range(0, num_points, chunk):
            n = min(chunk, num_points - s)
            points[s : s + n] = centres[rng.integers(0, num_centres, n)] + SPREAD / np.sqrt(dim) * rng.standard_normal((n, dim), dtype=np.float32)
        fresh = centres[rng.integers(0, num_centres, num_queries - half)] + SPREAD / np.sqrt(dim) * rng.standard_normal(
            (num_queries - half, dim), dtype=np.float32)
    else:
        raise ValueError(f"unknown data kind {kind!r}")
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    copies = points[rng.integers(0, num_points, half)] + 0.25 / np.sqrt(dim) * rng.standard_normal((half, dim), dtype=np.float32)
    queries = np.vstack([copies, fresh]).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    has_match = np.r_[np.ones(half, bool), np.zeros(num_queries - half, bool)]
    return points, queries, has_match


def _rootsift(sift, gray: np.ndarray) -> np.ndarray:  # noqa: ANN001 (cv2.SIFT)
    _, desc = sift.detectAndCompute(gray, None)
    if desc is None:
        return np.zeros((0, 128), np.float32)
    desc = desc / np.maximum(desc.sum(1, keepdims=True), 1e-9)
    return np.sqrt(desc).astype(np.float32)


def _random_view(gray: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The photo under a random homography: another viewpoint of the same surfaces, hence new descriptors."""
    import cv2

    h, w = gray.shape
    scale = rng.uniform(0.7, 1.6)
    angle = np.deg2rad(rng.uniform(-30, 30))
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    linear = scale * rotation @ np.diag([1.0, rng.uniform(0.6, 1.0)])
    grow = max(scale, 1.0)
    centre, canvas_centre = np.array([w / 2, h / 2]), np.array([w * grow / 2, h * grow / 2])
    homography = np.eye(3)
    homography[:2, :2] = linear
    homography[:2, 2] = canvas_centre - linear @ centre
    homography[2, :2] = rng.uniform(-3e-4, 3e-4, 2)
    return cv2.warpPerspective(gray, homography, (int(w * grow), int(h * grow)))


def strecha_descriptors(images: Path | None, num_points: int, num_queries: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Real RootSIFT map and query descriptors from the Strecha photos (see the module docstring)."""
    import cv2

    root = images or DEFAULT_IMAGES
    scenes = sorted(p.parent for p in root.glob("*/images")) if root.is_dir() else []
    if not scenes:
        raise FileNotFoundError(f"--data strecha needs the Strecha photos in <scene>/images/ under {root} (--images)")
    rng = np.random.default_rng(seed)
    sift = cv2.SIFT_create(contrastThreshold=0.005)
    map_photos, query_photos = [], []
    for scene in scenes:
        photos = sorted(p for p in (scene / "images").iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        query_photos.append(photos[len(photos) // 2])
        map_photos += [p for p in photos if p != query_photos[-1]]
    queries = np.vstack([_rootsift(sift, cv2.imread(str(p), cv2.IMREAD_GRAYSCALE)) for p in query_photos])
    queries = queries[np.sort(rng.choice(len(queries), min(num_queries, len(queries)), replace=False))]
    grays = [cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for p in map_photos]
    parts, total = [], 0
    while total < num_points:
        for gray in grays:
            parts.append(_rootsift(sift, _random_view(gray, rng)))
            total += len(parts[-1])
        print(f"  {total} of {num_points} map descriptors", flush=True)
    return np.vstack(parts)[:num_points], queries


def embed(descriptors: np.ndarray, dim: int, noise: float, seed: int) -> np.ndarray:
    """Unit-norm (N, dim) copies: a fixed random orthonormal map from the native dimension plus isotropic noise."""
    basis, _ = np.linalg.qr(np.random.default_rng(12345).standard_normal((dim, descriptors.shape[1])))
    basis = basis.T.astype(np.float32)
    rng = np.random.default_rng(seed)
    out = np.empty((len(descriptors), dim), np.float32)
    for s in range(0, len(descriptors), 200_000):
        chunk = descriptors[s : s + 200_000] @ basis
        chunk += noise / np.sqrt(dim) * rng.standard_normal(chunk.shape, dtype=np.float32)
        out[s : s + len(chunk)] = chunk / np.linalg.norm(chunk, axis=1, keepdims=True)
    return out


def distinctive(points: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """(Q,) bool: the query passes Lowe's ratio test (0.8) on its exact two nearest map points."""
    distances = MapIndex(points, IndexConfig(kind="flat")).search(queries, k=2).distances
    return distances[:, 0] < 0.8**2 * distances[:, 1]


def time_search(search: Callable[[np.ndarray], SearchResult], queries: np.ndarray, repeats: int) -> tuple[float, np.ndarray]:
    """Median seconds of ``search(queries)`` (1-NN) over ``repeats`` calls, and its 1-NN rows."""
    times, nn = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        nn = search(queries).indices[:, 0]
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), nn


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def imbalance(index: MapIndex) -> float | None:
    """faiss' imbalance factor of an IVF index (1: equal lists; the search cost grows with it)."""
    import faiss

    ivf = faiss.try_extract_index_ivf(index.cpu_index()) if index.nlist else None
    return round(float(ivf.invlists.imbalance_factor()), 2) if ivf is not None else None


def bench_kind(points: np.ndarray, queries: np.ndarray, subset: np.ndarray, config: IndexConfig,
               search_settings: list[dict], repeats: int, exact: np.ndarray | None) -> tuple[list[dict], np.ndarray]:
    """Build one index, then time each search setting (``nprobe`` / ``ef_search``) on it."""
    gc.collect()
    rss0 = rss_bytes()
    t0 = time.perf_counter()
    index = MapIndex(points, config)
    build = time.perf_counter() - t0
    added = rss_bytes() - rss0
    rows = []
    for setting in search_settings or [{}]:
        index.set_search(**setting)
        seconds, nn = time_search(index.search, queries, repeats)
        row = {"kind": index.kind, "nlist": index.nlist, "nprobe": index.config.resolved_nprobe(index.nlist) if index.nlist else None,
               "ef_search": index.config.ef_search if index.kind == "hnsw" else None, "gpu": index.on_gpu,
               "build_s": build, "search_ms": 1e3 * seconds, "rss_added_mb": added / 1e6,
               "nbytes_mb": index.nbytes() / 1e6, "imbalance": imbalance(index)}
        if exact is not None:
            row["agree"] = float((nn == exact).mean())
            row["agree_subset"] = float((nn[subset] == exact[subset]).mean()) if subset.any() else None
        rows.append(row)
    del index
    gc.collect()
    return rows, nn


def fp16_check(num_points: int, dim: int, num_queries: int, repeats: int, seed: int) -> list[dict]:
    import faiss

    points, queries, _ = make_data("clustered", num_points, dim, num_queries, seed)
    half = points.astype(np.float16)
    rows = []
    flat32 = MapIndex(points, IndexConfig(kind="flat"))
    s32, nn32 = time_search(flat32.search, queries, repeats)
    rows.append({"storage": "float32 flat", "search_ms": 1e3 * s32, "agree": 1.0, "bytes_mb": 4 * points.size / 1e6})
    del flat32
    flat16 = MapIndex(half, IndexConfig(kind="flat"))
    s16, nn16 = time_search(flat16.search, queries, repeats)
    rows.append({"storage": "float16 map -> MapIndex (widened float32 flat)", "search_ms": 1e3 * s16,
                 "agree": float((nn16 == nn32).mean()), "bytes_mb": 4 * points.size / 1e6})
    del flat16
    sq = faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_L2)
    sq.train(half[:1000].astype(np.float32))
    sq.add(half.astype(np.float32))
    ssq, nnsq = time_search(lambda q: SearchResult(*sq.search(q, 1)), queries, repeats)
    rows.append({"storage": "faiss float16 scalar quantizer", "search_ms": 1e3 * ssq,
                 "agree": float((nnsq == nn32).mean()), "bytes_mb": 2 * points.size / 1e6})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--points", type=int, nargs="+", default=[1_600_000])
    parser.add_argument("--dims", type=int, nargs="+", default=[128])
    parser.add_argument("--data", nargs="+", default=["strecha", "clustered"], choices=["strecha", "photos", "random", "clustered"])
    parser.add_argument("--images", type=Path, default=None, help=f"Strecha scenes for --data strecha ({DEFAULT_IMAGES})")
    parser.add_argument("--embed_noise", type=float, default=0.3, help="noise of the 128->D embedding (--data strecha, photos)")
    parser.add_argument("--photos", type=Path, default=None, help="photo folder for --data photos (default: shipped photos)")
    parser.add_argument("--lam", type=float, default=0.5, help="fusion weight of the local part (--data photos; 1: local-only)")
    parser.add_argument("--kinds", nargs="+", default=["flat", "ivf", "hnsw", "ivfpq"],
                        choices=["flat", "ivf", "hnsw", "ivfpq"])
    parser.add_argument("--nprobe", type=int, nargs="+", default=[16, 32, 64, 128], help="IVF / IVF-PQ settings")
    parser.add_argument("--ef_search", type=int, nargs="+", default=[64], help="HNSW settings to try")
    parser.add_argument("--queries", type=int, default=4096, help="keypoints per query image")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--fp16_points", type=int, default=200_000, help="map size of the fp16 check (0 skips it)")
    parser.add_argument("--gpu", action="store_true", help="faiss-gpu indexes (falls back to CPU with a warning)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=None, help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    import faiss

    print(f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads, gpu requested: {args.gpu}")
    all_rows = []
    for num_points in args.points:
        for dim in args.dims:
            for data_kind in args.data:
                t0 = time.perf_counter()
                try:
                    points, queries, subset = make_data(data_kind, num_points, dim, args.queries, args.seed,
                                                        args.images, args.embed_noise, args.photos, args.lam)
                except FileNotFoundError as error:
                    print(f"\n== {data_kind}: skipped ({error})")
                    continue
                subset_name = "true match" if subset is not None else "distinctive"
                if subset is None:
                    subset = distinctive(points, queries)
                print(f"\n== {data_kind} map: {num_points} points x {dim}-D ({points.nbytes / 1e9:.2f} GB float32), "
                      f"{len(queries)} query keypoints, {subset.sum()} ({subset.mean():.1%}) {subset_name} (generated in {time.perf_counter() - t0:.0f} s)")
                base = IndexConfig(use_gpu=args.gpu)
                exact_rows, exact = bench_kind(points, queries, subset, replace(base, kind="flat"), [], args.repeats, None)
                exact_row = {**exact_rows[0], "agree": 1.0, "agree_subset": 1.0}
                rows = [exact_row]
                for kind in args.kinds:
                    if kind == "flat":
                        continue
                    settings = ([{"nprobe": p} for p in args.nprobe] if kind in ("ivf", "ivfpq")
                                else [{"ef_search": e} for e in args.ef_search])
                    rows += bench_kind(points, queries, subset, replace(base, kind=kind), settings, args.repeats, exact)[0]
                print(f"{'index':28s} {'build s':>8s} {'search ms':>10s} {'x flat':>7s} {'agree':>6s} {'agree(subset)':>13s} "
                      f"{'RSS+ MB':>8s} {'est MB':>8s} {'imbalance':>9s}")
                for row in rows:
                    name = row["kind"] + (f" nlist={row['nlist']} nprobe={row['nprobe']}" if row["nlist"] else "") + (
                        f" ef={row['ef_search']}" if row["ef_search"] else "") + (" gpu" if row["gpu"] else "")
                    print(f"{name:28s} {row['build_s']:8.1f} {row['search_ms']:10.1f} "
                          f"{exact_row['search_ms'] / row['search_ms']:7.1f} {row['agree']:6.3f} "
                          f"{_fmt(row['agree_subset']):>13s} {row['rss_added_mb']:8.0f} {row['nbytes_mb']:8.0f} "
                          f"{row['imbalance'] or '':>9}")
                    all_rows.append({"points": num_points, "dim": dim, "data": data_kind, "subset": subset_name, **row,
                                     "speedup_vs_flat": exact_row["search_ms"] / row["search_ms"]})
                del points, queries
                gc.collect()
    if args.fp16_points:
        for dim in args.dims:
            print(f"\n== fp16 storage, clustered {args.fp16_points} x {dim}-D, {args.queries} query keypoints")
            for row in fp16_check(args.fp16_points, dim, args.queries, args.repeats, args.seed):
                print(f"{row['storage']:48s} search {row['search_ms']:8.1f} ms  agree {row['agree']:.3f}  "
                      f"{row['bytes_mb']:.0f} MB")
                all_rows.append({"fp16_check": True, "points": args.fp16_points, "dim": dim, **row})
    if args.output:
        write_json_atomic(args.output, all_rows)
    json.dumps(all_rows)  # fail loudly here rather than in a later reader if a value is not serialisable
    return 0


if __name__ == "__main__":
    sys.exit(main())

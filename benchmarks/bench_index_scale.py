"""Nearest-neighbour search at map scale: exact flat vs IVF-Flat, HNSW and IVF-PQ on synthetic maps.

    python benchmarks/bench_index_scale.py                                   # Aachen size: 1.6M points, 128-D
    python benchmarks/bench_index_scale.py --dims 128 512 --data random clustered
    python benchmarks/bench_index_scale.py --points 100000 400000 1600000 --kinds flat ivf
    python benchmarks/bench_index_scale.py --gpu                             # faiss-gpu, when a GPU is there

One "query" is a batch of ``--queries`` keypoint descriptors (one image). Half are noisy copies of map
descriptors (keypoints that have a true 3D point), half are fresh draws from the same distribution (keypoints
with none). Random Gaussian data is the pessimistic case for approximate search; ``clustered`` draws points
around k-means-like centres, closer to real descriptors. Reported per index: build time, median search time over
``--repeats`` batches, resident memory added by the index, and agreement of its 1-NN with exact search (all
queries, and the half with a true match).

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

from fuseloc.io import write_json_atomic
from fuseloc.localize.index import IndexConfig, MapIndex, SearchResult

#: Spread of points around their centre (noise norm, for unit-norm centres ~1.4 apart): clusters overlap, as
#: descriptors of neighbouring visual words do; with much tighter clusters every index looks exact.
SPREAD = 1.0


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def make_data(kind: str, num_points: int, dim: int, num_queries: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(P, D) map, (Q, D) queries, (Q,) bool "has a true match"; unit-norm float32 like RootSIFT."""
    rng = np.random.default_rng(seed)
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


def time_search(search: Callable[[np.ndarray], SearchResult], queries: np.ndarray, repeats: int) -> tuple[float, np.ndarray]:
    """Median seconds of ``search(queries)`` (1-NN) over ``repeats`` calls, and its 1-NN rows."""
    times, nn = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        nn = search(queries).indices[:, 0]
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), nn


def bench_kind(points: np.ndarray, queries: np.ndarray, has_match: np.ndarray, config: IndexConfig,
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
        row = {"kind": index.kind, "nlist": index.nlist, "nprobe": index.config.nprobe if index.nlist else None,
               "ef_search": index.config.ef_search if index.kind == "hnsw" else None, "gpu": index.on_gpu,
               "build_s": build, "search_ms": 1e3 * seconds, "rss_added_mb": added / 1e6,
               "nbytes_mb": index.nbytes() / 1e6}
        if exact is not None:
            row["agree"] = float((nn == exact).mean())
            row["agree_true_match"] = float((nn[has_match] == exact[has_match]).mean())
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
    parser.add_argument("--data", nargs="+", default=["random", "clustered"], choices=["random", "clustered"])
    parser.add_argument("--kinds", nargs="+", default=["flat", "ivf", "hnsw", "ivfpq"],
                        choices=["flat", "ivf", "hnsw", "ivfpq"])
    parser.add_argument("--nprobe", type=int, nargs="+", default=[8, 16, 32], help="IVF / IVF-PQ settings to try")
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
                points, queries, has_match = make_data(data_kind, num_points, dim, args.queries, args.seed)
                print(f"\n== {data_kind} map: {num_points} points x {dim}-D ({points.nbytes / 1e9:.2f} GB float32), "
                      f"{args.queries} query keypoints (generated in {time.perf_counter() - t0:.0f} s)")
                base = IndexConfig(use_gpu=args.gpu)
                exact_rows, exact = bench_kind(points, queries, has_match, replace(base, kind="flat"), [], args.repeats, None)
                exact_row = {**exact_rows[0], "agree": 1.0, "agree_true_match": 1.0}
                rows = [exact_row]
                for kind in args.kinds:
                    if kind == "flat":
                        continue
                    settings = ([{"nprobe": p} for p in args.nprobe] if kind in ("ivf", "ivfpq")
                                else [{"ef_search": e} for e in args.ef_search])
                    rows += bench_kind(points, queries, has_match, replace(base, kind=kind), settings, args.repeats, exact)[0]
                print(f"{'index':28s} {'build s':>8s} {'search ms':>10s} {'x flat':>7s} {'agree':>6s} {'agree(tm)':>9s} "
                      f"{'RSS+ MB':>8s} {'est MB':>8s}")
                for row in rows:
                    name = row["kind"] + (f" nlist={row['nlist']} nprobe={row['nprobe']}" if row["nlist"] else "") + (
                        f" ef={row['ef_search']}" if row["ef_search"] else "") + (" gpu" if row["gpu"] else "")
                    print(f"{name:28s} {row['build_s']:8.1f} {row['search_ms']:10.1f} "
                          f"{exact_row['search_ms'] / row['search_ms']:7.1f} {row['agree']:6.3f} "
                          f"{row['agree_true_match']:9.3f} {row['rss_added_mb']:8.0f} {row['nbytes_mb']:8.0f}")
                    all_rows.append({"points": num_points, "dim": dim, "data": data_kind, **row,
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

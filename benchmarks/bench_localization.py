"""Per-method recall, per-stage query time, peak memory and map size, against the hierarchical baseline.

    python benchmarks/bench_localization.py                                        # the embedded town
    python benchmarks/bench_localization.py --config configs/data/strecha_fountain.yaml --config configs/features/sift4096.yaml
    python benchmarks/bench_localization.py --config configs/data/strecha_herzjesu.yaml --config configs/features/sift4096.yaml --repeats 5

Features, the triangulated scene and fused maps come from (and go to) the same caches as evaluate.py.
Timing: one fresh process holds every method and runs the query loop ``repeats`` times, methods interleaved
query by query (features read from the cache each time, as in evaluate.py), so that load from other processes
hits all methods alike; times are the median over repeats of each query, then the median over queries. Poses
must come out identical in every repeat; the script says so. Memory: each method then runs once more alone in
a fresh process; "peak+" is its peak resident size minus the resident size before it loaded its map.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fuseloc.data.config import DataConfig
from fuseloc.localize.hierarchical import HierarchicalConfig
from fuseloc.localize.pipeline import LocalizerConfig, localize_one

# evaluate.py options that a shared YAML may carry and that do not concern timing (data and localizer are shared).
EVALUATE_ONLY = ("progress", "top_k", "overwrite", "device")
STAGES = ["features_io", "fusion", "search", "retrieval", "matching", "pnp"]


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@dataclass
class MethodJob:
    """What one child process needs: which method, where its map and features live, the queries."""

    label: str
    kind: str  # "fused" or "hierarchical"
    map_path: Path | None
    local_path: Path
    global_path: Path
    scene_path: Path | None
    local_tag: str
    queries: object
    localizer: LocalizerConfig
    hierarchical: HierarchicalConfig
    repeats: int


@dataclass
class MethodReport:
    label: str
    poses: dict = field(default_factory=dict)  # name -> (qvec, t) of the first repeat
    identical: bool = True
    stage_ms: dict = field(default_factory=dict)
    total_ms: float = 0.0
    map_bytes: int = 0
    index_bytes: int = 0
    num_points: int = 0
    peak_extra_bytes: int = 0
    build_s: float = 0.0
    results: dict = field(default_factory=dict)


def _make_localizer(job: MethodJob, cache, report: MethodReport):  # noqa: ANN001, ANN202
    from fuseloc.data.scene import Scene
    from fuseloc.localize.fused_map import FusedMap
    from fuseloc.localize.hierarchical import HierarchicalLocalizer, build_hierarchical_map
    from fuseloc.localize.pipeline import Localizer

    t0 = time.perf_counter()
    if job.kind == "fused":
        fused_map = FusedMap.load(job.map_path)
        localizer = Localizer(fused_map, job.localizer)
        report.map_bytes, report.num_points = fused_map.nbytes(), fused_map.num_points
        report.index_bytes = localizer.index.nbytes()
    else:
        scene = Scene.load(job.scene_path)
        hmap = build_hierarchical_map(scene, cache, feature_tag=job.local_tag, progress=False)
        del scene
        localizer = HierarchicalLocalizer(hmap, job.hierarchical)
        report.map_bytes, report.num_points = hmap.nbytes(), hmap.num_points
    report.build_s = time.perf_counter() - t0
    return localizer


def _warm_up(cache, name: str) -> None:  # noqa: ANN001
    """Run each library once on tiny inputs, so their one-off set-up (thread pools, kernels, h5 chunk caches)
    is not counted as the memory of whichever method happens to run first."""
    import faiss
    import torch

    from fuseloc.localize.pose import estimate_absolute_pose
    from fuseloc.types import Camera

    cache.local(name)
    cache.global_descriptor(name)
    x = torch.randn(64, 32)
    (x @ x.T).min(1)
    index = faiss.IndexFlatL2(32)
    index.add(x.numpy())
    index.search(x.numpy(), 2)
    rng = np.random.default_rng(0)
    xyz = np.c_[rng.uniform(-1, 1, (50, 2)), rng.uniform(4, 6, 50)]
    estimate_absolute_pose(100 * xyz[:, :2] / xyz[:, 2:] + 50, xyz, Camera("SIMPLE_PINHOLE", 100, 100, (100.0, 50.0, 50.0)))


def measure_memory(job: MethodJob) -> MethodReport:
    """Child process body: load one method's map and localize every query once; report its peak memory."""
    from fuseloc.data.feature_cache import FeatureCache

    cache = FeatureCache(job.local_path, job.global_path)
    queries = job.queries
    _warm_up(cache, queries.names[0])
    rss0 = rss_bytes()
    report = MethodReport(job.label)
    localizer = _make_localizer(job, cache, report)
    for name, camera in zip(queries.names, queries.cameras):
        localize_one(localizer, cache, name, camera)
    report.peak_extra_bytes = max(peak_rss_bytes() - rss0, 0)
    cache.close()
    return report


def measure_time(jobs: list[MethodJob]) -> list[MethodReport]:
    """Child process body: all methods side by side, interleaved query by query, so that load from other
    processes on the machine hits every method alike."""
    from fuseloc.data.feature_cache import FeatureCache

    cache = FeatureCache(jobs[0].local_path, jobs[0].global_path)
    queries = jobs[0].queries
    reports = [MethodReport(job.label) for job in jobs]
    localizers = [_make_localizer(job, cache, report) for job, report in zip(jobs, reports)]
    per_query = [{n: [] for n in queries.names} for _ in jobs]
    for repeat in range(jobs[0].repeats):
        for name, camera in zip(queries.names, queries.cameras):
            for m, (localizer, report) in enumerate(zip(localizers, reports)):
                result = localize_one(localizer, cache, name, camera)
                per_query[m][name].append(result.timings)
                if repeat == 0:
                    report.results[name] = result
                elif not (np.array_equal(result.pose.R, report.results[name].pose.R)
                          and np.array_equal(result.pose.t, report.results[name].pose.t)):
                    report.identical = False
    for report, runs_by_query in zip(reports, per_query):
        for stage in STAGES:
            values = [np.median([t.get(stage, 0.0) for t in runs]) for runs in runs_by_query.values()]
            if any(v > 0 for v in values):
                report.stage_ms[stage] = 1e3 * float(np.median(values))
        totals = [np.median([sum(t.values()) for t in runs]) for runs in runs_by_query.values()]
        report.total_ms = 1e3 * float(np.median(totals))
    cache.close()
    return reports


def _in_fresh_process(function, *args):  # noqa: ANN001, ANN202
    with mp.get_context("spawn").Pool(1) as pool:
        return pool.apply(function, args)


def benchmark(
    data: DataConfig = DataConfig(),  # noqa: B008 (frozen; jsonargparse reads defaults from the signature)
    lambdas: list[float] = [1.0, 0.5],  # noqa: B006 (jsonargparse reads defaults from the signature)
    reduction: str = "pca",
    normalize_reduced: bool = True,
    checkpoint: Path | None = None,
    localizer: LocalizerConfig = LocalizerConfig(),  # noqa: B008 (frozen)
    hierarchical: HierarchicalConfig | None = None,
    repeats: int = 3,
) -> list[MethodReport]:
    """Benchmark local-only / fused (one per λ), learned (with ``checkpoint``) and hierarchical localization.

    Args:
        data: dataset, features, triangulation and the root of the caches shared with evaluate.py (evaluate.py's
            ``data`` section; default: the embedded town, RootSIFT, VLAD).
        lambdas: λ of each fixed fusion (λ = 1 is local-only).
        reduction: global-descriptor reduction of the fixed fusions.
        normalize_reduced: L2-normalise their reduced global part (as evaluate.py's option).
        checkpoint: a train.py checkpoint whose learned fusion is benchmarked too.
        localizer: query settings of the fused methods (index, PnP, match filtering).
        hierarchical: settings of the hierarchical baseline (top-k, PnP).
        repeats: passes over all queries per method.
    """
    from fuseloc.cachekeys import key_of, keyed_name
    from fuseloc.data.prepare import prepare_features, prepare_scene
    from fuseloc.eval.metrics import evaluate_results, threshold_key
    from fuseloc.eval.runner import prepare_map
    from fuseloc.models.fusion import FixedFusion

    hierarchical = hierarchical or HierarchicalConfig()
    data = data.resolved()
    loaded = data.reader.load()
    cache_dir = data.output_dir / loaded.spec.name / "cache"
    features = prepare_features(loaded, data.local_features, data.global_features, cache_dir, progress=False,
                                local_path=data.local_features_path, global_path=data.global_features_path)
    scene = prepare_scene(loaded, features, data.triangulation, cache_dir)
    scene_path = cache_dir / keyed_name("bench-scene", key_of([scene.num_points, len(scene.obs_point), scene.image_names]), ".npz")
    if not scene_path.is_file():
        scene.save(scene_path)
    local_dim = features.cache.local(scene.image_names[0]).descriptors.shape[1]
    global_dim = features.cache.global_descriptor(scene.image_names[0]).shape[0]
    common = dict(local_path=features.cache.local_path, global_path=features.cache.global_path, scene_path=scene_path,
                  local_tag=features.local_tag, queries=loaded.queries, localizer=localizer,
                  hierarchical=hierarchical, repeats=repeats)
    jobs = []
    for lam in lambdas:
        fusion = FixedFusion(local_dim, global_dim, lam=lam, reduction=reduction,  # type: ignore[arg-type]
                             normalize_reduced=normalize_reduced)
        fusion.fit(features.cache.global_descriptors(scene.image_names))
        fused_map = prepare_map(scene, features, fusion, cache_dir, progress=False)
        jobs.append(MethodJob("local-only" if lam == 1.0 else f"fused-lam{lam:g}", "fused",
                              cache_dir / f"map-{fused_map.config['key']}.h5", **common))
    if checkpoint is not None:
        from fuseloc.models.module import load_fusion_from_checkpoint

        fusion = load_fusion_from_checkpoint(checkpoint)
        fused_map = prepare_map(scene, features, fusion, cache_dir, progress=False)
        jobs.append(MethodJob("learned", "fused", cache_dir / f"map-{fused_map.config['key']}.h5", **common))
    jobs.append(MethodJob(f"hierarchical-top{hierarchical.top_k}", "hierarchical", None, **common))
    features.cache.close()

    reports = _in_fresh_process(measure_time, jobs)
    for report, job in zip(reports, jobs):
        report.peak_extra_bytes = _in_fresh_process(measure_memory, job).peak_extra_bytes
        report.results = evaluate_results(report.results, loaded.queries, loaded.spec).get("all", {})

    base = reports[-1]
    keys = [threshold_key(t, r) for t, r in loaded.spec.thresholds]
    print(f"\n{loaded.spec.name}: {scene.num_images} database images, {scene.num_points} points, "
          f"{len(loaded.queries)} queries, {repeats} repeats (median ms per query)\n")
    header = ["method", *[k.removeprefix("recall_") for k in keys], *[f"{s} ms" for s in STAGES], "total ms",
              "x faster", "map MB", "map/hier", "index MB", "peak+ MB", "peak/hier", "same poses"]
    rows = [header]
    for r in reports:
        rows.append([
            r.label, *[f"{r.results.get(k, float('nan')):.1f}" for k in keys],
            *[f"{r.stage_ms[s]:.1f}" if s in r.stage_ms else "-" for s in STAGES],
            f"{r.total_ms:.1f}", f"{base.total_ms / r.total_ms:.2f}", f"{r.map_bytes / 1e6:.2f}",
            f"{r.map_bytes / base.map_bytes:.3f}", f"{r.index_bytes / 1e6:.2f}" if r.index_bytes else "-",
            f"{r.peak_extra_bytes / 1e6:.1f}", f"{r.peak_extra_bytes / max(base.peak_extra_bytes, 1):.2f}",
            "yes" if r.identical else "NO",
        ])
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for i, row in enumerate(rows):
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)))
        if i == 0:
            print("  ".join("-" * w for w in widths))
    print("\nmap MB: what localization holds (fused: FusedMap.nbytes(), fp16 descriptors; hierarchical: database "
          "keypoints, fp16 descriptors, keypoint->3D lifting, points, globals).\nindex MB: the float32 faiss index "
          "built from the fused map. peak+ MB: peak RSS growth of the method's process from map loading on.")
    return reports


def main(argv: list[str] | None = None) -> int:
    from jsonargparse import ActionConfigFile, ArgumentParser

    parser = ArgumentParser(description=__doc__.split("\n")[0], default_meta=False)
    parser.add_argument("--config", action=ActionConfigFile, help="YAML file(s) (evaluate.py configs work)")
    # evaluate.py configs carry options that do not concern timing; accept and ignore them.
    for name in EVALUATE_ONLY:
        parser.add_argument(f"--{name}", default=None, help="ignored (evaluate.py option)")
    parser.add_function_arguments(benchmark)
    parser.add_argument("--log_level", default="WARNING")
    cfg = parser.parse_args(argv)
    logging.basicConfig(level=cfg.pop("log_level"), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in ("config", *EVALUATE_ONLY):
        cfg.pop(name, None)
    benchmark(**parser.instantiate(cfg))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""End-to-end evaluation: features -> (triangulated) scene -> fused map -> localization -> metrics and files.

Every intermediate result is cached under ``cache_dir`` in a file whose name carries the configuration that
produced it, so a second run reuses what it can and a changed configuration never reuses a stale cache.
Localization appends one JSON line per query, so a killed run resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

# prepare_* moved to the data layer (the training DataModule needs them); re-exported here for callers.
from fuseloc.data.prepare import PreparedFeatures, prepare_features, prepare_scene  # noqa: F401
from fuseloc.data.readers.base import BenchmarkSpec, LocalizationData
from fuseloc.data.scene import QuerySet, Scene
from fuseloc.errors import InputError
from fuseloc.eval.metrics import pose_errors, summarize
from fuseloc.io import config_hash, write_json_atomic, write_text_atomic
from fuseloc.localize.fused_map import FusedMap, build_fused_map
from fuseloc.localize.hierarchical import HierarchicalConfig, HierarchicalLocalizer, build_hierarchical_map
from fuseloc.localize.pipeline import Localizer, LocalizerConfig, QueryLocalizer, localize_queries
from fuseloc.models.fusion import Fusion, fusion_class_path, fusion_init_args
from fuseloc.types import Pose, PoseResult

logger = logging.getLogger(__name__)


def fusion_fingerprint(fusion: Fusion) -> str:
    digest = hashlib.sha1(fusion_class_path(fusion).encode())
    digest.update(json.dumps(fusion_init_args(fusion), sort_keys=True, default=str).encode())
    for k, v in sorted(fusion.state_dict().items()):
        digest.update(k.encode())
        digest.update(v.detach().cpu().numpy().tobytes())
    return digest.hexdigest()[:10]


def scene_fingerprint(scene: Scene) -> str:
    """Hash of everything a map is built from: images, poses, points and observations (not just their counts)."""
    digest = hashlib.sha1(json.dumps(scene.image_names).encode())
    for array in (scene.R_cam_from_world, scene.t_cam_from_world, scene.points_xyz, scene.obs_image, scene.obs_point,
                  scene.obs_xy, scene.obs_keypoint):
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:10]


def query_fingerprint(queries: QuerySet) -> str:
    """Hash of the query names and intrinsics: corrected intrinsics must not reuse old predictions."""
    return config_hash([queries.names, [c.to_tokens() for c in queries.cameras]])


def map_inputs(scene: Scene, features: PreparedFeatures) -> dict:
    """What any map of ``scene`` is built from (features and scene content): the shared part of map cache keys."""
    return {"local": features.local_tag, "global": features.global_tag, "points": scene.num_points,
            "obs": len(scene.obs_point), "images": config_hash(scene.image_names), "scene": scene_fingerprint(scene)}


def prepare_map(scene: Scene, features: PreparedFeatures, fusion: Fusion, cache_dir: Path, progress: bool = True) -> FusedMap:
    """Build (or load) the fused map of ``scene`` for a fitted ``fusion``."""
    key = config_hash({"fusion": fusion_fingerprint(fusion), **map_inputs(scene, features)})
    path = cache_dir / f"map-{key}.h5"
    if path.is_file():
        logger.info("loading fused map %s", path)
        return FusedMap.load(path)
    t0 = time.perf_counter()
    fused = build_fused_map(scene, features.cache, fusion, feature_tag=features.local_tag,
                            config={"local": features.local_tag, "global": features.global_tag, "key": key}, progress=progress)
    fused.save(path)
    logger.info("built fused map (%d points) in %.1f s -> %s", fused.num_points, time.perf_counter() - t0, path)
    return fused


def fit_fusion(fusion: Fusion, scene: Scene, features: PreparedFeatures) -> Fusion:
    fusion.fit(features.cache.global_descriptors(scene.image_names))
    return fusion


# --------------------------------------------------------------------------------------------- results


def result_to_record(name: str, result: PoseResult) -> dict:
    return {"name": name, "qvec": result.pose.qvec.tolist(), "tvec": result.pose.t.tolist(), "success": result.success,
            "num_matches": result.num_matches, "num_inliers": result.num_inliers, "reason": result.reason,
            "timings": result.timings}


def record_to_result(record: dict) -> PoseResult:
    return PoseResult(Pose.from_qt(record["qvec"], record["tvec"]), bool(record["success"]), int(record["num_matches"]),
                      int(record["num_inliers"]), record.get("reason", ""), dict(record.get("timings", {})))


def read_predictions(path: Path) -> dict[str, PoseResult]:
    """Read a JSON-lines prediction log; a torn last line (killed mid-write) is ignored."""
    results: dict[str, PoseResult] = {}
    if not path.is_file():
        return results
    with open(path) as f:
        for line in f:
            if not line.endswith("\n"):
                break
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                break
            results[record["name"]] = record_to_result(record)
    return results


class PredictionLog:
    """Append-only JSON-lines log of per-query results; each line is flushed and fsynced."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_file():
            # Drop a torn last line so appends start on a clean line.
            valid = read_predictions(path)
            text = "".join(json.dumps(result_to_record(n, r)) + "\n" for n, r in valid.items())
            write_text_atomic(path, text)
        self._file = open(path, "a")

    def __call__(self, name: str, result: PoseResult) -> None:
        self._file.write(json.dumps(result_to_record(name, result)) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()


def evaluate_results(results: dict[str, PoseResult], queries: QuerySet, spec: BenchmarkSpec) -> dict[str, dict[str, float]]:
    """Metrics per split (and ``all``) over the queries with ground truth; missing results count as failures."""
    if not queries.has_ground_truth:
        return {}
    groups: dict[str, list[tuple[float, float]]] = {}
    for name, gt, condition in zip(queries.names, queries.gt_poses, queries.conditions):
        if gt is None:
            continue
        result = results.get(name)
        err = pose_errors(None if result is None else result.pose, gt)
        split = spec.split_of(condition)
        if split != "all":
            groups.setdefault(split, []).append(err)
        groups.setdefault("all", []).append(err)
    summary = {}
    for split, errs in groups.items():
        e = np.array(errs)
        summary[split] = summarize(e[:, 0], e[:, 1], spec.thresholds)
    return summary


def timing_summary(results: dict[str, PoseResult]) -> dict[str, float]:
    """Median seconds per stage per query."""
    stages = sorted({k for r in results.values() for k in r.timings})
    return {stage: float(np.median([r.timings.get(stage, 0.0) for r in results.values()])) for stage in stages}


def write_submission(path: Path, results: dict[str, PoseResult], queries: QuerySet, spec: BenchmarkSpec) -> Path:
    """One ``name qw qx qy qz tx ty tz`` line per query, in query-list order, written atomically."""
    lines = []
    for name in queries.names:
        if name in results:
            lines.append(results[name].pose.to_line(spec.submission_name(name)) + "\n")
    return write_text_atomic(path, "".join(lines))


@dataclass
class MethodOutcome:
    """What one localization method produced."""

    label: str
    results: dict[str, PoseResult]
    summary: dict[str, dict[str, float]]
    timings: dict[str, float]
    map_bytes: int
    num_points: int
    output_dir: Path


def run_method(
    label: str,
    fusion: Fusion,
    scene: Scene,
    data: LocalizationData,
    features: PreparedFeatures,
    localizer_config: LocalizerConfig,
    cache_dir: Path,
    output_dir: Path,
    fit: bool = True,
    progress: bool = True,
) -> MethodOutcome:
    """Fit (if asked), build the map, localize all queries (resuming), and write this method's outputs."""
    if fit:
        fit_fusion(fusion, scene, features)
    t0 = time.perf_counter()
    fused_map = prepare_map(scene, features, fusion, cache_dir, progress)
    map_time = time.perf_counter() - t0
    stamp = {"map": fused_map.config.get("key"), "localizer": asdict(localizer_config),
             "queries": query_fingerprint(data.queries)}
    return _localize_and_report(label, lambda: Localizer(fused_map, localizer_config, fusion, index_cache_dir=cache_dir),
                                stamp, fused_map.nbytes(), fused_map.num_points, map_time, data, features, output_dir,
                                progress)


def run_hierarchical(
    label: str,
    scene: Scene,
    data: LocalizationData,
    features: PreparedFeatures,
    config: HierarchicalConfig,
    output_dir: Path,
    progress: bool = True,
) -> MethodOutcome:
    """The hierarchical baseline (retrieval, 2D-2D matching, PnP) through the same resumable flow as :func:`run_method`."""
    t0 = time.perf_counter()
    hmap = build_hierarchical_map(scene, features.cache, feature_tag=features.local_tag, progress=progress)
    map_time = time.perf_counter() - t0
    stamp = {"map": config_hash({**map_inputs(scene, features), **hmap.config}),
             "hierarchical": asdict(config), "queries": query_fingerprint(data.queries)}
    return _localize_and_report(label, lambda: HierarchicalLocalizer(hmap, config), stamp, hmap.nbytes(), hmap.num_points,
                                map_time, data, features, output_dir, progress)


def _localize_and_report(
    label: str,
    make_localizer: Callable[[], QueryLocalizer],
    stamp: dict,
    map_bytes: int,
    num_points: int,
    map_time: float,
    data: LocalizationData,
    features: PreparedFeatures,
    output_dir: Path,
    progress: bool,
) -> MethodOutcome:
    """Localize the queries not yet in this method's prediction log, then write submission and summary."""
    method_dir = output_dir / label
    log_path = method_dir / "predictions.jsonl"
    stamp_path = method_dir / "run_config.json"
    if stamp_path.is_file() and json.loads(stamp_path.read_text()) != json.loads(json.dumps(stamp)):
        logger.warning("%s: configuration changed since the last run; discarding its predictions", method_dir)
        log_path.unlink(missing_ok=True)
    write_json_atomic(stamp_path, stamp)
    done = read_predictions(log_path)
    if done:
        logger.info("%s: resuming, %d of %d queries already localized", label, len(done), len(data.queries))
    log = PredictionLog(log_path)
    try:
        localizer = make_localizer()
        new = localize_queries(localizer, data.queries, features.cache, skip=set(done), on_result=log, progress=progress)
    finally:
        log.close()
    return write_outcome(method_dir, label, {**done, **new}, data.queries, data.spec, map_bytes, num_points,
                         extra_timings={"map_build_total": map_time})


def write_outcome(method_dir: Path, label: str, results: dict[str, PoseResult], queries: QuerySet, spec: BenchmarkSpec,
                  map_bytes: int, num_points: int, extra_timings: dict[str, float] | None = None,
                  extra_summary: dict | None = None) -> MethodOutcome:
    """Evaluate one method's results and write its ``submission.txt`` and ``summary.json``."""
    summary = evaluate_results(results, queries, spec)
    timings = {**timing_summary(results), **(extra_timings or {})}
    write_submission(method_dir / "submission.txt", results, queries, spec)
    write_json_atomic(method_dir / "summary.json", {
        "method": label, "benchmark": spec.name, "metrics": summary, "timings_median_s": timings,
        **(extra_summary or {}), "map_bytes": map_bytes, "num_points": num_points,
        "failed": sorted(n for n, r in results.items() if not r.success)})
    return MethodOutcome(label, results, summary, timings, map_bytes, num_points, method_dir)


def merge_part_outcomes(per_part: Sequence[Sequence[MethodOutcome]], parts: Sequence[LocalizationData],
                        bench_dir: Path) -> list[MethodOutcome]:
    """Merge each method's results over the parts of a multi-map dataset (same methods, same order, per part)
    into ``<bench_dir>/<method>/submission.txt`` and ``summary.json`` (metrics over all parts plus per part)."""
    spec = parts[0].spec
    queries = QuerySet(
        names=[n for p in parts for n in p.queries.names],
        cameras=[c for p in parts for c in p.queries.cameras],
        gt_poses=[g for p in parts for g in (p.queries.gt_poses or [None] * len(p.queries))],
        conditions=[c for p in parts for c in p.queries.conditions],
    )
    if len(set(queries.names)) != len(queries.names):
        raise InputError("query names repeat across parts; they could not share one submission file")
    merged = []
    for outcomes in zip(*per_part):
        label = outcomes[0].label
        results = {name: r for o in outcomes for name, r in o.results.items()}
        merged.append(write_outcome(bench_dir / label, label, results, queries, spec, sum(o.map_bytes for o in outcomes),
                                    sum(o.num_points for o in outcomes),
                                    extra_summary={"parts": {p.part: o.summary for p, o in zip(parts, outcomes)}}))
    return merged


def format_table(outcomes: Sequence[MethodOutcome], spec: BenchmarkSpec) -> str:
    """A plain-text table: one row per method and split with recall, medians, timings and map size."""
    keys = [f"{t:g}m,{r:g}°" for t, r in spec.thresholds]
    # Cambridge-style benchmarks are reported as medians in centimetres (BenchmarkSpec.report == "median").
    t_scale, t_unit = (100.0, "cm") if spec.report == "median" else (1.0, "m")
    header = ["method", "split", "n", *keys, f"med t ({t_unit})", "med R (°)", "match (ms)", "pnp (ms)", "map (MB)"]
    rows = [header]
    for o in outcomes:
        # Hierarchical runs time retrieval + 2D-2D matching where fused runs time fusion + 1-NN search.
        fuse_search = 1e3 * sum(o.timings.get(k, 0) for k in ("fusion", "search", "retrieval", "matching"))
        for split, m in sorted(o.summary.items(), key=lambda kv: (kv[0] == "all", kv[0])):
            recalls = [f"{m[k]:.1f}" for k in m if k.startswith("recall_")]
            rows.append([o.label, split, str(m["num_queries"]), *recalls, f"{t_scale * m['median_t_m']:.3f}", f"{m['median_R_deg']:.2f}",
                         f"{fuse_search:.1f}", f"{1e3 * o.timings.get('pnp', 0):.1f}", f"{o.map_bytes / 1e6:.2f}"])
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


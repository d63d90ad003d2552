"""End-to-end evaluation: features -> (triangulated) scene -> fused map -> localization -> metrics and files.

Every intermediate result is cached under ``cache_dir`` in a file whose name carries the configuration that
produced it, so a second run reuses what it can and a changed configuration never reuses a stale cache.
Localization appends one JSON line per query, so a killed run resumes where it stopped.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch

from fuseloc.cachekeys import key_of, keyed_name, read_keyed, same_inputs
from fuseloc.data.config import DataConfig
from fuseloc.data.prepare import PreparedFeatures, prepare_features, prepare_scene
from fuseloc.data.readers.base import LocalizationData
from fuseloc.data.scene import Scene
from fuseloc.errors import InputError
from fuseloc.eval import distributed
from fuseloc.eval.export import bundle_path, check_exportable, export_method_bundle
from fuseloc.eval.keys import fusion_key, map_inputs, query_key, query_sources
from fuseloc.eval.predictions import PredictionLog, read_records, record_to_result
from fuseloc.eval.report import plot_recall_curves, recall_report, submission_report
from fuseloc.eval.submission import MethodOutcome, merge_part_outcomes, write_outcome
from fuseloc.io import claim_output_dir, remove_output_dir, write_json_atomic
from fuseloc.localize.fused_map import MAP_FORMAT_VERSION, FusedMap, build_fused_map
from fuseloc.localize.hierarchical import HierarchicalConfig, HierarchicalLocalizer, build_hierarchical_map
from fuseloc.localize.index import AUTO_RULES_VERSION, check_gpu_request
from fuseloc.localize.pipeline import Localizer, LocalizerConfig, QueryLocalizer
from fuseloc.models.fusion import FixedFusion, Fusion

logger = logging.getLogger(__name__)


@dataclass
class EvaluationConfig:
    """One evaluation with every default resolved (evaluate.py's options; see its docstring for each).

    Attributes:
        data: the dataset, the extractors run on it (or feature files), triangulation and output root, with
            its None defaults resolved (:meth:`DataConfig.resolved`).
        lambdas: one fixed fusion per λ (λ = 1 is local-only), reduced with ``reduction``.
        checkpoint: a train.py checkpoint whose learned fusion is evaluated too.
        localizer: query-time settings of the fused methods.
        hierarchical: settings of the hierarchical baseline; None: not run. Its matcher is fitted to the local
            features here (:meth:`HierarchicalConfig.fitted_to`).
        device: where the fusions run, and the hierarchical baseline's learned matcher.
        export_bundle: write a map bundle per fused method there (:mod:`fuseloc.eval.export`); None: none.
    """

    data: DataConfig = field(default_factory=lambda: DataConfig().resolved())
    lambdas: list[float] = field(default_factory=lambda: [1.0, 0.5])
    reduction: Literal["pca", "random", "gaussian", "shuffle"] = "pca"
    normalize_reduced: bool = True
    checkpoint: Path | None = None
    localizer: LocalizerConfig = field(default_factory=LocalizerConfig)
    hierarchical: HierarchicalConfig | None = None
    progress: bool = True
    overwrite: bool = False
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    export_bundle: Path | None = None

    def __post_init__(self) -> None:
        # Every option is checked here, when evaluate.py makes the configuration: before any feature or map.
        bad = [lam for lam in self.lambdas if not 0.0 <= lam <= 1.0]
        if bad:
            raise InputError(f"lambdas must be in [0, 1] (1: local-only), got {bad[0]}")
        if len(set(self.lambdas)) != len(self.lambdas):
            raise InputError(f"lambdas lists a value twice: {self.lambdas}")
        if not self.lambdas and self.checkpoint is None and self.hierarchical is None:
            raise InputError("nothing to evaluate: lambdas is empty and neither --checkpoint nor --hierarchical true is given")
        if self.checkpoint is not None and not Path(self.checkpoint).is_file():
            raise InputError("checkpoint not found", self.checkpoint)
        if self.hierarchical is not None:  # the matcher's weights meet the local features (a file's: evaluate_part)
            self.hierarchical = self.hierarchical.fitted_to(
                None if self.data.local_features_path is not None else self.data.resolved().local_features)


def run_evaluation(config: EvaluationConfig, show: Callable[[str], None] = logger.info) -> list[MethodOutcome]:
    """Evaluate every method of ``config``; ``show`` gets the tables and submission paths as text.

    A multi-map dataset (CMU slices, Cambridge scenes) is evaluated part by part, each against its own map
    (outputs and caches in ``<benchmark>/<part>/``), then every method's results are merged into one
    submission and one summary in ``<benchmark>/<method>/``; the merged outcomes are returned.

    Launched as several processes (torchrun, Lightning's environment; :mod:`fuseloc.eval.distributed`), they
    share the queries of one map, or the parts of a multi-map dataset; rank 0 writes the outputs and returns the
    outcomes, the others return an empty list.
    """
    check_gpu_request(config.localizer.index)  # before features and maps are built, not after
    if config.export_bundle is not None:
        check_exportable(config.data, config.export_bundle)
    dist = distributed.setup()
    try:
        return _run_parts(config, show if dist.is_main else _quiet, dist)
    finally:
        distributed.teardown(dist)


def _quiet(text: str) -> None:
    logger.debug("%s", text)


def _run_parts(config: EvaluationConfig, show: Callable[[str], None], dist: distributed.Distributed) -> list[MethodOutcome]:
    distributed.wait_for_main(dist)  # rank 0 first: a reader may write its data (the embedded town) on first use
    parts = config.data.reader.load_parts()
    distributed.release_others(dist)
    if len(parts) == 1:
        return evaluate_part(parts[0], config, show, dist)
    # whole parts per process; each part's caches and outputs are its own
    per_part = distributed.map_parts(parts, lambda part: evaluate_part(part, config, show), dist)
    if per_part is None:
        return []
    spec = parts[0].spec
    merged = merge_part_outcomes(per_part, parts, config.data.output_dir / spec.name)
    if any(p.queries.has_ground_truth for p in parts):
        show(recall_report(f"{spec.name}: {len(parts)} parts ({', '.join(p.part or '?' for p in parts)}), "
                           f"{sum(len(p.queries) for p in parts)} queries", merged, spec))
    if merged:
        show(submission_report(merged, " (all parts)"))
    return merged


def evaluate_part(loaded: LocalizationData, config: EvaluationConfig, show: Callable[[str], None],
                  dist: distributed.Distributed = distributed.SINGLE) -> list[MethodOutcome]:
    """Every method of ``config`` on one map and its queries: fixed fusions, learned fusion, hierarchical.

    With ``dist``, every process runs this and shares the queries; rank 0 prepares features, scene, maps and
    indexes first (the others load them) and alone writes the outputs.
    """
    if not len(loaded.queries):
        raise InputError(f"the dataset lists no queries{f' in part {loaded.part}' if loaded.part else ''}: nothing to "
                         "localize", loaded.root)
    bench_dir = config.data.output_dir / loaded.spec.name
    if loaded.part:
        bench_dir = bench_dir / loaded.part
    distributed.wait_for_main(dist)
    if config.overwrite and dist.is_main:
        # only a folder fuseloc marked as its own, never one holding the data or the working directory
        protected = [p for p in (loaded.root, loaded.scene.image_root, loaded.queries.image_root, Path.cwd()) if p is not None]
        if remove_output_dir(bench_dir, protected):
            logger.warning("overwrite: deleted %s", bench_dir)
    if loaded.part:
        claim_output_dir(bench_dir.parent)
    claim_output_dir(bench_dir)
    cache_dir = bench_dir / "cache"
    progress = config.progress
    data = config.data
    features = scene = None
    if dist.is_main:
        features = prepare_features(loaded, data.local_features, data.global_features, cache_dir, progress,
                                    local_path=data.local_features_path, global_path=data.global_features_path)
        if config.hierarchical is not None and data.local_features_path is not None:
            _check_matcher_dim(config.hierarchical, features, loaded.scene.image_names[0])  # before any map is built
        scene = prepare_scene(loaded, features, data.triangulation, cache_dir)
    distributed.release_others(dist)
    features = distributed.share_features(features, dist)  # the others read rank 0's files
    if scene is None:
        scene = prepare_scene(loaded, features, data.triangulation, cache_dir)  # rank 0's, from the cache
    local_dim = features.cache.local(scene.image_names[0]).descriptors.shape[1]
    global_dim = features.cache.global_descriptor(scene.image_names[0]).shape[0]
    outcomes = []
    num_methods = len(config.lambdas) + (config.checkpoint is not None)

    def export(label: str, fusion: Fusion) -> None:
        if config.export_bundle is not None and dist.is_main:  # the fitted fusion's map is in the cache by now: this loads it
            export_method_bundle(bundle_path(config.export_bundle, label, num_methods, loaded.part), label,
                                 prepare_map(scene, features, fusion, cache_dir, progress), data, config.localizer,
                                 features, cache_dir, loaded.spec.name)

    for lam in config.lambdas:
        label = "local-only" if lam == 1.0 else f"fused-lam{lam:g}"
        fusion = FixedFusion(local_dim, global_dim, lam=lam, reduction=config.reduction,
                             normalize_reduced=config.normalize_reduced).to(config.device)
        outcomes.append(run_method(label, fusion, scene, loaded, features, config.localizer, cache_dir, bench_dir,
                                   progress=progress, dist=dist))
        export(label, fusion)
    if config.checkpoint is not None:
        from fuseloc.models.module import load_fusion_from_checkpoint  # Lightning: imported only when needed

        fusion = load_fusion_from_checkpoint(config.checkpoint).to(config.device)
        fusion.check_dims(local_dim, global_dim, str(config.checkpoint))
        outcomes.append(run_method("learned", fusion, scene, loaded, features, config.localizer, cache_dir, bench_dir,
                                   fit=False, progress=progress, dist=dist))
        export("learned", fusion)
    if config.hierarchical is not None:
        outcomes.append(run_hierarchical(config.hierarchical.method_name, scene, loaded, features,
                                         config.hierarchical, bench_dir, progress=progress, dist=dist, device=config.device))
    features.cache.close()
    if not dist.is_main:
        return outcomes
    if loaded.queries.has_ground_truth:
        show(recall_report(f"{loaded.spec.name}: {scene.num_images} database images, {scene.num_points} points, "
                           f"{len(loaded.queries)} queries", outcomes, loaded.spec))
        show(f"\nrecall curves: {plot_recall_curves(outcomes, loaded.queries, bench_dir / 'recall_curves.png')}")
    if outcomes:
        show(submission_report(outcomes))
    return outcomes


def _check_matcher_dim(config: HierarchicalConfig, features: PreparedFeatures, name: str) -> None:
    """A feature file's descriptor dimension against the hierarchical matcher's weights (closes the cache on error)."""
    try:
        config.check_dim(features.cache.local(name).descriptors.shape[1])
    except InputError:
        features.cache.close()
        raise


def prepare_map(scene: Scene, features: PreparedFeatures, fusion: Fusion, cache_dir: Path, progress: bool = True) -> FusedMap:
    """Build (or load) the fused map of ``scene`` for a fitted ``fusion``."""
    # The format version is part of the key: a map file of an older format is rebuilt beside it, never misread.
    key = key_of({"fusion": fusion_key(fusion), "format": MAP_FORMAT_VERSION, **map_inputs(scene, features)})
    path = cache_dir / keyed_name("map", key, ".h5")
    cached = read_keyed(path, FusedMap.load, (InputError, OSError, KeyError, ValueError), "fused map", logger)
    if cached is not None:
        logger.info("loaded fused map %s", path)
        return cached
    t0 = time.perf_counter()
    fused = build_fused_map(scene, features.cache, fusion, feature_tag=features.local_tag,
                            config={"local": features.local_tag, "global": features.global_tag, "key": key}, progress=progress)
    fused.save(path)
    logger.info("built fused map (%d points) in %.1f s -> %s", fused.num_points, time.perf_counter() - t0, path)
    return fused


def fit_fusion(fusion: Fusion, scene: Scene, features: PreparedFeatures) -> Fusion:
    fusion.fit(features.cache.global_descriptors(scene.image_names))
    return fusion


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
    dist: distributed.Distributed = distributed.SINGLE,
) -> MethodOutcome:
    """Fit (if asked), build the map, localize all queries (resuming), and write this method's outputs."""
    if fit:
        if dist.is_main:
            fit_fusion(fusion, scene, features)
        distributed.share_fitted_state(fusion, dist)  # the others take rank 0's fit: the same map, the same queries
    t0 = time.perf_counter()
    distributed.wait_for_main(dist)  # rank 0 builds the map, the others load it
    fused_map = prepare_map(scene, features, fusion, cache_dir, progress)
    distributed.release_others(dist)
    map_time = time.perf_counter() - t0
    inputs = {"map": fused_map.config.get("key"), "localizer": asdict(localizer_config),
              "index_auto_rules": AUTO_RULES_VERSION, "queries": query_key(data.queries)}
    return _localize_and_report(label, lambda: Localizer(fused_map, localizer_config, fusion, index_cache_dir=cache_dir),
                                inputs, fused_map.nbytes(), fused_map.num_points, map_time, data, features, output_dir,
                                progress, dist)


def run_hierarchical(
    label: str,
    scene: Scene,
    data: LocalizationData,
    features: PreparedFeatures,
    config: HierarchicalConfig,
    output_dir: Path,
    progress: bool = True,
    dist: distributed.Distributed = distributed.SINGLE,
    device: torch.device | str = "cpu",
) -> MethodOutcome:
    """The hierarchical baseline (retrieval, 2D-2D matching, PnP) through the same resumable flow as :func:`run_method`;
    a learned matcher runs on ``device``."""
    t0 = time.perf_counter()
    hmap = build_hierarchical_map(scene, features.cache, feature_tag=features.local_tag, progress=progress)
    map_time = time.perf_counter() - t0
    inputs = {"map": key_of({**map_inputs(scene, features), **hmap.config}),
              "hierarchical": config.record(), "queries": query_key(data.queries)}
    return _localize_and_report(label, lambda: HierarchicalLocalizer(hmap, config, device), inputs, hmap.nbytes(),
                                hmap.num_points, map_time, data, features, output_dir, progress, dist)


def _localize_and_report(
    label: str,
    make_localizer: Callable[[], QueryLocalizer],
    inputs: dict,
    map_bytes: int,
    num_points: int,
    map_time: float,
    data: LocalizationData,
    features: PreparedFeatures,
    output_dir: Path,
    progress: bool,
    dist: distributed.Distributed = distributed.SINGLE,
) -> MethodOutcome:
    """Localize the queries not yet in this method's prediction log, then write submission and summary.

    ``inputs`` (what the predictions are computed from) is recorded next to the log; another record discards the
    log (the policy of :mod:`fuseloc.cachekeys`). With ``dist``, the processes share the pending queries and rank 0
    alone keeps the log and writes the files (the others return the results without summary).
    """
    method_dir = output_dir / label
    if not dist.is_main:
        new = distributed.follow_query_loop(make_localizer, data.queries, features.cache, dist)
        return MethodOutcome(label, new, {}, {}, map_bytes, num_points, method_dir)
    log_path = method_dir / "predictions.jsonl"
    inputs_path = method_dir / "run_config.json"
    if inputs_path.is_file() and not same_inputs(json.loads(inputs_path.read_text()), inputs):
        logger.warning("%s: configuration changed since the last run; discarding its predictions", method_dir)
        log_path.unlink(missing_ok=True)
    write_json_atomic(inputs_path, inputs)
    # Each prediction records what its query's features were computed from: a query image replaced under the same
    # name is localized again, whatever the rest of the log holds.
    sources = query_sources(data.queries, features)
    records = read_records(log_path)
    stale = {n for n, r in records.items() if r.get("source") != sources.get(n)}
    if stale:
        logger.warning("%s: %d logged queries changed since they were localized (e.g. %s); localizing them again",
                       label, len(stale), sorted(stale)[0])
    done = {n: record_to_result(r) for n, r in records.items() if n not in stale}
    if done:
        logger.info("%s: resuming, %d of %d queries already localized", label, len(done), len(data.queries))
    log = PredictionLog(log_path, drop=stale)
    try:
        localizer = make_localizer()
        distributed.release_others(dist)  # the index is cached: the other processes load it
        new = distributed.localize_sharded(localizer, data.queries, features.cache, distributed.broadcast(set(done), dist),
                                           lambda name, result: log(name, result, sources[name]), progress, dist)
    finally:
        log.close()
    return write_outcome(method_dir, label, {**done, **new}, data.queries, data.spec, map_bytes, num_points,
                         extra_timings={"map_build_total": map_time})

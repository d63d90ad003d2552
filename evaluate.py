"""Localize a benchmark's queries and report recall; with no arguments, the embedded demo town.

    python evaluate.py                                   # embedded scene: local-only vs fused, side by side
    python evaluate.py --config configs/eval/strecha_fountain.yaml
    python evaluate.py --data fuseloc.data.readers.generic.GenericDataset --data.root /path/to/data
    python evaluate.py --print_config                    # every option with its default

Outputs go to ``<output_dir>/<benchmark>/<method>/``: ``submission.txt`` (name qw qx qy qz tx ty tz),
``predictions.jsonl`` (per-query matches, inliers, status, timings), ``summary.json`` (recall table).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from fuseloc.data.features import LocalExtractor, Sift, Vlad
from fuseloc.data.readers.base import DatasetReader
from fuseloc.data.triangulate import TriangulationConfig
from fuseloc.errors import InputError
from fuseloc.localize.pipeline import LocalizerConfig
from fuseloc.localize.pose import PnPConfig

logger = logging.getLogger("fuseloc.evaluate")


def evaluate(
    data: DatasetReader | None = None,
    local_features: LocalExtractor | None = None,
    global_features: Vlad | None = None,
    lambdas: list[float] = [1.0, 0.5],  # noqa: B006 (jsonargparse reads defaults from the signature)
    reduction: str = "pca",
    checkpoint: Path | None = None,
    query_global: str = "light",
    min_inliers: int = 12,
    ransac_max_error: float = 12.0,
    triangulation: TriangulationConfig | None = None,
    output_dir: Path = Path("outputs"),
    progress: bool = True,
) -> list:
    """Evaluate fixed fusions (one per λ; λ = 1 is local-only) and optionally a learned fusion.

    Args:
        data: dataset reader; default: the embedded synthetic town.
        local_features: local feature extractor; default: RootSIFT.
        global_features: global descriptor; default: VLAD trained on the database.
        lambdas: λ of each fixed fusion to run (weight of the local descriptor).
        reduction: how the global descriptor is reduced to the local dimension: pca, random or gaussian.
        checkpoint: a train.py checkpoint whose learned fusion is evaluated too.
        query_global: ``light`` (the query's own global descriptor) or ``heavy`` (its nearest database image's).
        min_inliers: PnP inliers below which a query is marked failed and gets the nearest database pose.
        ransac_max_error: RANSAC inlier threshold in pixels.
        triangulation: how a map is triangulated when the reference model has no points.
        output_dir: root of outputs and caches.
        progress: show progress bars.
    """
    from fuseloc.data.readers.town import EmbeddedTown
    from fuseloc.eval.plots import plot_recall_curves
    from fuseloc.eval.runner import format_table, prepare_features, prepare_scene, run_method
    from fuseloc.models.fusion import FixedFusion

    data_reader = data if data is not None else EmbeddedTown()
    local_features = local_features or Sift()
    global_features = global_features or Vlad()
    localizer = LocalizerConfig(query_global=query_global, min_inliers=min_inliers,  # type: ignore[arg-type]
                                pnp=PnPConfig(max_reproj_error=ransac_max_error))
    loaded = data_reader.load()
    bench_dir = Path(output_dir) / loaded.spec.name
    cache_dir = bench_dir / "cache"
    features = prepare_features(loaded, local_features, global_features, cache_dir, progress)
    scene = prepare_scene(loaded, features, triangulation or TriangulationConfig(), cache_dir)
    local_dim = features.cache.local(scene.image_names[0]).descriptors.shape[1]
    global_dim = features.cache.global_descriptor(scene.image_names[0]).shape[0]
    outcomes = []
    for lam in lambdas:
        label = "local-only" if lam == 1.0 else f"fused-lam{lam:g}"
        fusion = FixedFusion(local_dim, global_dim, lam=lam, reduction=reduction)  # type: ignore[arg-type]
        outcomes.append(run_method(label, fusion, scene, loaded, features, localizer, cache_dir, bench_dir, progress=progress))
    if checkpoint is not None:
        from fuseloc.models.module import load_fusion_from_checkpoint

        fusion = load_fusion_from_checkpoint(checkpoint)
        fusion.check_dims(local_dim, global_dim, str(checkpoint))
        outcomes.append(run_method("learned", fusion, scene, loaded, features, localizer, cache_dir, bench_dir,
                                   fit=False, progress=progress))
    features.cache.close()
    if loaded.queries.has_ground_truth:
        print(f"\n{loaded.spec.name}: {scene.num_images} database images, {scene.num_points} points, "
              f"{len(loaded.queries)} queries\n")
        print(format_table(outcomes, loaded.spec))
        plot_path = plot_recall_curves(outcomes, loaded.queries, bench_dir / "recall_curves.png")
        print(f"\nrecall curves: {plot_path}")
    for o in outcomes:
        print(f"{o.label}: {o.output_dir / 'submission.txt'}")
    return outcomes


def main(argv: list[str] | None = None) -> int:
    from jsonargparse import ActionConfigFile, ArgumentParser

    parser = ArgumentParser(description=__doc__.split("\n")[0], default_meta=False)
    parser.add_argument("--config", action=ActionConfigFile, help="YAML file(s) with any of the options below")
    parser.add_function_arguments(evaluate)
    parser.add_argument("--log_level", default="INFO", help="logging level")
    cfg = parser.parse_args(argv)
    logging.basicConfig(level=cfg.pop("log_level"), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg.pop("config", None)
    init = parser.instantiate_classes(cfg)
    try:
        evaluate(**init)
    except InputError as exc:
        logger.error("%s", exc)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

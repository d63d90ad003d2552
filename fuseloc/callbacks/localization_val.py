"""Validation by localization: the same map building, matching, PnP and metrics as evaluate.py.

At the end of each validation epoch the fused map of the training scene is rebuilt with the current fusion
(:func:`fuseloc.localize.fused_map.build_fused_map`), the validation queries are localized with
:func:`fuseloc.localize.pipeline.localize_queries` (evaluate.py's query loop, with a hook that scores each
query's matches) and scored with :func:`fuseloc.eval.metrics.evaluate_results`.
Under DDP the queries are split across processes and the results gathered, so every query is localized once
and every process logs the same numbers.

Logged (``<bench>`` is the benchmark name, ``<split>`` a query condition group or ``all``):

- ``val/<bench>/<split>/recall_<t>m_<r>deg``, ``.../median_t_m``, ``.../median_R_deg``
- ``val/<bench>/correct_match_pct``: share of 2D-3D matches whose 3D point reprojects (ground-truth pose)
  within ``correct_match_px`` of the keypoint; ``val/<bench>/localized_pct``: queries with enough inliers.
- ``val/score``: recall of the ``all`` split averaged over the benchmark's thresholds, plus
  0.001 x ``correct_match_pct`` so that ties between saturated recalls go to the better matcher
  (``ModelCheckpoint`` monitors it).

With a TensorBoard logger it also adds a recall-vs-threshold figure and one query with its RANSAC inlier
(green) and outlier (red) matches; with a logger, rank 0 writes ``<log_dir>/validation/epoch_<n>.json``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch

from fuseloc.data.extract import read_image
from fuseloc.eval.metrics import evaluate_results
from fuseloc.eval.predictions import result_to_record
from fuseloc.eval.report import condition_recall_curve
from fuseloc.io import write_json_atomic
from fuseloc.localize.fused_map import build_fused_map
from fuseloc.localize.pipeline import Localizer, LocalizerConfig, QueryMatches, localize_queries
from fuseloc.localize.pose import estimate_absolute_pose
from fuseloc.types import Camera, Pose, PoseResult, project

logger = logging.getLogger(__name__)


@dataclass
class MatchStats:
    """Correctness of one query's 2D-3D matches under its ground-truth pose."""

    num_matches: int
    num_correct: int


def correct_matches(keypoints: np.ndarray, p3d: np.ndarray, camera: Camera, gt: Pose, max_px: float) -> np.ndarray:
    """(M,) bool: the matched 3D point reprojects within ``max_px`` pixels of its keypoint under ``gt``."""
    if len(keypoints) == 0:
        return np.zeros(0, bool)
    uv, front = project(camera, gt, p3d)
    return front & (np.linalg.norm(uv - keypoints, axis=1) <= max_px)


class LocalizationValidation(pl.Callback):
    """Localize the DataModule's ``validation_set`` with the current fusion and log recall (see module doc).

    Args:
        localizer: query-time settings, as evaluate.py's.
        correct_match_px: reprojection error (pixels) under which a 2D-3D match counts as correct.
        figure_query: index of the validation query drawn with its matches in TensorBoard (-1: none).
        skip_sanity_check: do not localize during Lightning's sanity-check validation.
    """

    def __init__(self, localizer: LocalizerConfig = LocalizerConfig(), correct_match_px: float = 5.0,  # noqa: B008
                 figure_query: int = 0, skip_sanity_check: bool = True):
        self.localizer = localizer
        self.correct_match_px = correct_match_px
        self.figure_query = figure_query
        self.skip_sanity_check = skip_sanity_check
        self.last_metrics: dict[str, float] = {}

    @torch.no_grad()
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking and self.skip_sanity_check:
            return
        vs = getattr(trainer.datamodule, "validation_set", None)
        if vs is None:
            raise RuntimeError("LocalizationValidation needs a DataModule with a validation_set (FuseLocDataModule)")
        fusion = pl_module.fusion
        was_training = fusion.training
        fusion.eval()
        cache = vs.features.cache
        observations = vs.correspondences.iter_images() if vs.correspondences is not None else None
        fused_map = build_fused_map(vs.scene, cache, fusion, feature_tag=vs.features.local_tag, progress=False,
                                    observations=observations)
        localizer = Localizer(fused_map, self.localizer, fusion)
        rank, world = trainer.global_rank, trainer.world_size
        mine = vs.queries.subset(list(range(rank, len(vs.queries), world)))
        truth = {name: (camera, gt) for name, camera, gt in zip(mine.names, mine.cameras, mine.gt_poses, strict=True)}
        stats: dict[str, MatchStats] = {}

        def score_matches(name: str, matches: QueryMatches) -> None:
            camera, gt = truth[name]
            ok = correct_matches(matches.p2d, fused_map.points_xyz[matches.point_index], camera, gt, self.correct_match_px)
            stats[name] = MatchStats(len(ok), int(ok.sum()))

        # evaluate.py's query loop; one match per query serves both the pose and the share of correct matches.
        results = localize_queries(localizer, mine, cache, progress=False, on_matches=score_matches)
        if world > 1:
            gathered: list = [None] * world
            torch.distributed.all_gather_object(gathered, (results, stats))
            results, stats = {}, {}
            for part_results, part_stats in gathered:
                results.update(part_results)
                stats.update(part_stats)
        fusion.train(was_training)
        metrics = self._metrics(results, stats, vs)
        for key, value in metrics.items():
            # Identical in every process already; sync_dist only silences Lightning's DDP warning.
            pl_module.log(key, value, sync_dist=world > 1)
        self.last_metrics = metrics
        # trainer.log_dir is a collective under DDP (a broadcast): every process must ask for it.
        log_dir = trainer.log_dir
        # Without a real logger (fast_dev_run, logger=False) there is no run directory to write into; falling
        # back to the working directory would litter wherever the trainer was started.
        if trainer.is_global_zero and log_dir and trainer.loggers and not trainer.fast_dev_run:
            self._write(trainer, Path(log_dir), metrics, results, stats)
            self._figures(trainer, vs, results, localizer, fused_map)

    def _metrics(self, results: dict[str, PoseResult], stats: dict[str, MatchStats], vs) -> dict[str, float]:  # noqa: ANN001
        bench = vs.spec.name
        summary = evaluate_results(results, vs.queries, vs.spec)
        metrics: dict[str, float] = {}
        for split, values in summary.items():
            for key, value in values.items():
                if key != "num_queries":
                    metrics[f"val/{bench}/{split}/{key}"] = float(value)
        total = sum(s.num_matches for s in stats.values())
        metrics[f"val/{bench}/correct_match_pct"] = 100.0 * sum(s.num_correct for s in stats.values()) / max(total, 1)
        metrics[f"val/{bench}/localized_pct"] = 100.0 * np.mean([r.success for r in results.values()]) if results else 0.0
        recalls = [v for k, v in summary.get("all", {}).items() if k.startswith("recall_")]
        metrics["val/score"] = float(np.mean(recalls)) + 1e-3 * metrics[f"val/{bench}/correct_match_pct"]
        return metrics

    def _write(self, trainer: pl.Trainer, root: Path, metrics: dict, results: dict, stats: dict) -> None:
        records = [{**result_to_record(n, r), "correct_matches": stats[n].num_correct} for n, r in sorted(results.items())]
        write_json_atomic(root / "validation" / f"epoch_{trainer.current_epoch:03d}.json",
                          {"epoch": trainer.current_epoch, "global_step": trainer.global_step, "metrics": metrics,
                           "queries": records})

    def _figures(self, trainer: pl.Trainer, vs, results: dict, localizer: Localizer, fused_map) -> None:  # noqa: ANN001
        from lightning.pytorch.loggers import TensorBoardLogger

        tb = next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)
        if tb is None:
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        step = trainer.global_step
        thresholds = np.logspace(-2, 1, 60)
        fig, ax = plt.subplots(figsize=(5, 4))
        conditions = sorted(set(vs.queries.conditions))
        for condition in conditions:
            curve = condition_recall_curve(results, vs.queries, condition, thresholds)
            if curve is not None:
                ax.plot(thresholds, curve, label=condition)
        ax.set_xscale("log")
        ax.set_xlabel("translation threshold (m); rotation = max(2°, 10°/m)")
        ax.set_ylabel("recall (%)")
        ax.set_ylim(0, 100)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
        fig.tight_layout()
        tb.experiment.add_figure(f"val/{vs.spec.name}/recall_curve", fig, step)
        if not 0 <= self.figure_query < len(vs.queries):
            return
        name = vs.queries.names[self.figure_query]
        path = Path(vs.queries.image_root or "") / name
        if not path.is_file():
            logger.debug("no image at %s; skipping the match figure", path)
            return
        cache = vs.features.cache
        local = cache.local(name)
        matches = localizer.match(local.descriptors, local.keypoints, cache.global_descriptor(name), {})
        pnp = estimate_absolute_pose(matches.p2d, fused_map.points_xyz[matches.point_index], vs.queries.cameras[self.figure_query],
                                     self.localizer.pnp)
        inliers = np.zeros(len(matches.p2d), bool) if pnp is None else pnp.inliers
        fig, ax = plt.subplots(figsize=(8, 6))
        ax.imshow(read_image(path))
        ax.scatter(*matches.p2d[~inliers].T - 0.5, s=4, c="red", label=f"outliers ({int((~inliers).sum())})")
        ax.scatter(*matches.p2d[inliers].T - 0.5, s=6, c="lime", label=f"inliers ({int(inliers.sum())})")
        ax.set_title(name)
        ax.legend(loc="lower right")
        ax.axis("off")
        fig.tight_layout()
        tb.experiment.add_figure(f"val/{vs.spec.name}/matches", fig, step)

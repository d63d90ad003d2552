"""Scoring: pose errors, recall tables (visuallocalization.net thresholds, Cambridge medians) and timings."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fuseloc.data.readers.base import BenchmarkSpec
from fuseloc.data.scene import QuerySet
from fuseloc.types import Pose, PoseResult


def pose_errors(estimate: Pose | None, truth: Pose) -> tuple[float, float]:
    """(translation error in metres between camera centres, rotation error in degrees); inf/180 when missing."""
    if estimate is None:
        return float("inf"), 180.0
    dt = float(np.linalg.norm(estimate.center - truth.center))
    cos = (np.trace(truth.R.T @ estimate.R) - 1.0) / 2.0
    dr = float(np.rad2deg(np.arccos(np.clip(cos, -1.0, 1.0))))
    return dt, dr


def recall_at(errors_t: np.ndarray, errors_r: np.ndarray, thresholds: Sequence[tuple[float, float]]) -> list[float]:
    """Percentage of queries with translation <= t and rotation <= r, for each (t m, r deg) threshold."""
    errors_t, errors_r = np.asarray(errors_t, float), np.asarray(errors_r, float)
    if len(errors_t) == 0:
        return [0.0 for _ in thresholds]
    return [100.0 * float(np.mean((errors_t <= t) & (errors_r <= r))) for t, r in thresholds]


def threshold_key(t: float, r: float) -> str:
    """Unit-bearing metric key, e.g. ``recall_0.25m_2deg``."""
    return f"recall_{t:g}m_{r:g}deg"


def summarize(
    errors_t: np.ndarray, errors_r: np.ndarray, thresholds: Sequence[tuple[float, float]]
) -> dict[str, float]:
    """Recall per threshold plus median errors for one group of queries."""
    out = {threshold_key(t, r): v for (t, r), v in zip(thresholds, recall_at(errors_t, errors_r, thresholds))}
    out["median_t_m"] = float(np.median(errors_t)) if len(errors_t) else float("nan")
    out["median_R_deg"] = float(np.median(errors_r)) if len(errors_r) else float("nan")
    out["num_queries"] = int(len(errors_t))
    return out


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

"""Pose errors and recall tables (visuallocalization.net thresholds, Cambridge medians)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fuseloc.types import Pose


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

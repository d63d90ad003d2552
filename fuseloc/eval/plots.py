"""Recall-against-threshold curves (a picture of the whole error distribution, not just three points)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fuseloc.data.scene import QuerySet
from fuseloc.eval.metrics import pose_errors
from fuseloc.io import atomic_path


def recall_curve(errors_t: np.ndarray, errors_r: np.ndarray, thresholds_m: np.ndarray, deg_per_m: float = 10.0) -> np.ndarray:
    """Recall (%) at each translation threshold, with the rotation threshold scaled alongside (``deg_per_m``)."""
    return np.array([100.0 * np.mean((errors_t <= t) & (errors_r <= max(t * deg_per_m, 2.0))) for t in thresholds_m])


def condition_recall_curve(results: dict, queries: QuerySet, condition: str, thresholds_m: np.ndarray) -> np.ndarray | None:
    """:func:`recall_curve` over the queries of one condition that have ground truth (None if there are none)."""
    errs = np.array([pose_errors(results[n].pose if n in results else None, gt)
                     for n, gt, c in zip(queries.names, queries.gt_poses, queries.conditions) if c == condition and gt is not None])
    return recall_curve(errs[:, 0], errs[:, 1], thresholds_m) if len(errs) else None


def plot_recall_curves(outcomes: Sequence, queries: QuerySet, path: Path) -> Path:
    """Plot recall vs translation threshold per method and condition; writes a PNG atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    thresholds = np.logspace(-2, 1, 60)
    conditions = sorted(set(queries.conditions))
    fig, axes = plt.subplots(1, len(conditions), figsize=(5 * len(conditions), 4), squeeze=False)
    for ax, condition in zip(axes[0], conditions):
        for o in outcomes:
            curve = condition_recall_curve(o.results, queries, condition, thresholds)
            if curve is not None:
                ax.plot(thresholds, curve, label=o.label)
        ax.set_xscale("log")
        ax.set_xlabel("translation threshold (m); rotation threshold = max(2°, 10°/m)")
        ax.set_ylabel("recall (%)")
        ax.set_title(condition)
        ax.set_ylim(0, 100)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return path

"""What a person reads of an evaluation: the recall table, the text evaluate.py prints, and recall curves
(a picture of the whole error distribution, not just three points)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fuseloc.data.readers.base import BenchmarkSpec
from fuseloc.data.scene import QuerySet
from fuseloc.eval.metrics import pose_errors
from fuseloc.eval.submission import MethodOutcome
from fuseloc.io import atomic_path


def ms_per_query(outcome: MethodOutcome) -> float:
    """Median milliseconds a query takes, every timed stage together (feature reading, fusion and search or
    retrieval and matching, PnP); map building is not per query."""
    totals = [sum(r.timings.values()) for r in outcome.results.values()]
    if totals:
        return 1e3 * float(np.median(totals))
    return 1e3 * sum(v for k, v in outcome.timings.items() if not k.endswith("_total"))


def format_table(outcomes: Sequence[MethodOutcome], spec: BenchmarkSpec) -> str:
    """A plain-text table: one row per method and split with recall, medians, timings and map size, and with a
    hierarchical method among them, each method's speed against it."""
    keys = [f"{t:g}m,{r:g}°" for t, r in spec.thresholds]
    # Cambridge-style benchmarks are reported as medians in centimetres (BenchmarkSpec.report == "median").
    t_scale, t_unit = (100.0, "cm") if spec.report == "median" else (1.0, "m")
    hierarchical = next((o for o in outcomes if o.label.startswith("hierarchical")), None)
    header = ["method", "split", "n", *keys, f"med t ({t_unit})", "med R (°)", "match (ms)", "pnp (ms)", "map (MB)", "ms/query"]
    if hierarchical is not None:
        header.append("x faster than hierarchical")
    rows = [header]
    for o in outcomes:
        # Hierarchical runs time retrieval + 2D-2D matching where fused runs time fusion + 1-NN search.
        fuse_search = 1e3 * sum(o.timings.get(k, 0) for k in ("fusion", "search", "retrieval", "matching"))
        per_query = ms_per_query(o)
        speed = [] if hierarchical is None else [f"{ms_per_query(hierarchical) / per_query:.1f}" if per_query > 0 else "-"]
        for split, m in sorted(o.summary.items(), key=lambda kv: (kv[0] == "all", kv[0])):
            recalls = [f"{m[k]:.1f}" for k in m if k.startswith("recall_")]
            rows.append([o.label, split, str(m["num_queries"]), *recalls, f"{t_scale * m['median_t_m']:.3f}", f"{m['median_R_deg']:.2f}",
                         f"{fuse_search:.1f}", f"{1e3 * o.timings.get('pnp', 0):.1f}", f"{o.map_bytes / 1e6:.2f}",
                         f"{per_query:.1f}", *speed])
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def recall_report(heading: str, outcomes: Sequence[MethodOutcome], spec: BenchmarkSpec, curves: Path | None = None) -> str:
    """``heading``, the table and, if drawn, where the recall curves are."""
    text = f"\n{heading}\n\n{format_table(outcomes, spec)}"
    return text if curves is None else f"{text}\n\nrecall curves: {curves}"


def submission_report(outcomes: Sequence[MethodOutcome], suffix: str = "") -> str:
    """One ``<method><suffix>: <submission path>`` line per method."""
    return "\n".join(f"{o.label}{suffix}: {o.output_dir / 'submission.txt'}" for o in outcomes)


def recall_curve(errors_t: np.ndarray, errors_r: np.ndarray, thresholds_m: np.ndarray, deg_per_m: float = 10.0) -> np.ndarray:
    """Recall (%) at each translation threshold, with the rotation threshold scaled alongside (``deg_per_m``)."""
    return np.array([100.0 * np.mean((errors_t <= t) & (errors_r <= max(t * deg_per_m, 2.0))) for t in thresholds_m])


def condition_recall_curve(results: dict, queries: QuerySet, condition: str, thresholds_m: np.ndarray) -> np.ndarray | None:
    """:func:`recall_curve` over the queries of one condition that have ground truth (None if there are none)."""
    errs = np.array([pose_errors(results[n].pose if n in results else None, gt)
                     for n, gt, c in zip(queries.names, queries.gt_poses, queries.conditions) if c == condition and gt is not None])
    return recall_curve(errs[:, 0], errs[:, 1], thresholds_m) if len(errs) else None


def plot_recall_curves(outcomes: Sequence[MethodOutcome], queries: QuerySet, path: Path) -> Path:
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

"""A method's files: ``submission.txt`` (visuallocalization.net format) and ``summary.json``, and their merge
over the parts of a multi-map dataset."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from fuseloc.data.readers.base import BenchmarkSpec, LocalizationData
from fuseloc.data.scene import QuerySet
from fuseloc.errors import InputError
from fuseloc.eval.metrics import evaluate_results, timing_summary
from fuseloc.io import write_json_atomic, write_text_atomic
from fuseloc.types import PoseResult


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

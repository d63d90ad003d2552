"""Per-query predictions: JSON records of :class:`~fuseloc.types.PoseResult` and the append-only log of a run."""

from __future__ import annotations

import json
import os
from pathlib import Path

from fuseloc.io import write_text_atomic
from fuseloc.types import Pose, PoseResult


def result_to_record(name: str, result: PoseResult) -> dict:
    return {"name": name, "qvec": result.pose.qvec.tolist(), "tvec": result.pose.t.tolist(), "success": result.success,
            "num_matches": result.num_matches, "num_inliers": result.num_inliers, "reason": result.reason,
            "timings": result.timings}


def record_to_result(record: dict) -> PoseResult:
    return PoseResult(Pose.from_qt(record["qvec"], record["tvec"]), bool(record["success"]), int(record["num_matches"]),
                      int(record["num_inliers"]), record.get("reason", ""), dict(record.get("timings", {})))


def read_records(path: Path) -> dict[str, dict]:
    """The JSON records of a prediction log by query name; a torn last line (killed mid-write) is ignored."""
    records: dict[str, dict] = {}
    if not path.is_file():
        return records
    with open(path) as f:
        for line in f:
            if not line.endswith("\n"):
                break
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                break
            records[record["name"]] = record
    return records


class PredictionLog:
    """Append-only JSON-lines log of per-query results; each line is flushed and fsynced.

    Each record may carry ``source``, the key of what that query's result was computed from
    (:func:`fuseloc.eval.keys.query_sources`); records named in ``drop`` (stale ones) are removed on opening.
    """

    def __init__(self, path: Path, drop: set[str] | frozenset[str] = frozenset()):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_file():
            # Drop a torn last line (and stale records) so appends start on a clean line.
            valid = read_records(path)
            text = "".join(json.dumps(r) + "\n" for n, r in valid.items() if n not in drop)
            write_text_atomic(path, text)
        self._file = open(path, "a")

    def __call__(self, name: str, result: PoseResult, source: str | None = None) -> None:
        record = result_to_record(name, result)
        if source is not None:
            record["source"] = source
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()

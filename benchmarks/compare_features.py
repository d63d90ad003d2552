"""Compare local features for fuseloc's default: each with VLAD over its own descriptors, local-only and fused.

    python benchmarks/compare_features.py                                    # every feature, town + Strecha
    python benchmarks/compare_features.py --features sift aliked-n16 --datasets town --output_dir /tmp/feat
    FUSELOC_CACHE=/tmp/feat/cache python benchmarks/compare_features.py     # the town generated (once) there

For each feature (RootSIFT, the current default; ALIKED n16 and n32; DISK; XFeat, all at their extractor
defaults) and each dataset (the embedded town; Strecha fountain-P11 and Herz-Jesu-P8, which need
``../shared/data/strecha`` and are skipped with a message without it), the script runs ``evaluate.py
--lambdas [1.0,0.5] --progress false --overwrite true`` as a subprocess, one at a time, with the feature's own
``--data.output_dir <output_dir>/<feature>`` so that caches never mix, and prints one table per dataset:

- recall (%) per condition at the benchmark's thresholds, for local-only (λ = 1) and fused (λ = 0.5);
- ms/query: the median over queries of every timed stage together (features_io + fusion + search + pnp, from
  ``predictions.jsonl``, as evaluate.py's own table; the sum of the stage medians of ``summary.json`` when
  there are no predictions); map MB and points of the fused/local map;
- wall s: the whole evaluate.py run from an empty feature cache (``--overwrite true``), timed around the
  subprocess: Python start-up, feature extraction (local + VLAD), triangulation, both methods' map building
  and localization. The town is generated once before the first run (timed on its own, not in wall s);
- CPU s: user + system seconds of that run's processes (resource.RUSAGE_CHILDREN), less dependent on what
  else the machine runs than wall s; on an otherwise idle machine wall s is at least CPU s / cores;
- feat s/img: ``features ready in X s`` from the log (local extraction + VLAD training and description) over
  the number of images extracted; local s/img: the local extraction alone (from the log line that starts it
  to the last write of the local feature file).

Every run's log is kept in ``<output_dir>/logs/``, its timings in ``<output_dir>/runs/`` (a run with a record
and both summaries is reused, so an interrupted comparison resumes; ``--rerun`` runs everything again), and
all rows in ``<output_dir>/compare_features.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shlex
import statistics
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("local-only", "fused-lam0.5")


def extractor(class_name: str, **init_args: object) -> str:
    """A ``--data.local_features`` value in jsonargparse's class_path / init_args syntax."""
    spec: dict[str, object] = {"class_path": f"fuseloc.data.extractors.{class_name}"}
    if init_args:
        spec["init_args"] = init_args
    return json.dumps(spec)


FEATURES: dict[str, str] = {
    "sift": extractor("Sift"),
    "aliked-n16": extractor("Aliked"),
    "aliked-n32": extractor("Aliked", model="aliked-n32"),
    "disk": extractor("Disk"),
    "xfeat": extractor("XFeat"),
}

# name -> (evaluate.py arguments, benchmark folder under the output dir, data folder it needs or None)
DATASETS: dict[str, tuple[list[str], str, Path | None]] = {
    "town": ([], "town", None),
    "strecha-fountain": (["--config", "configs/data/strecha_fountain.yaml"], "strecha-fountain",
                         ROOT.parent / "shared" / "data" / "strecha" / "fountain-P11"),
    "strecha-herzjesu": (["--config", "configs/data/strecha_herzjesu.yaml"], "strecha-herzjesu",
                         ROOT.parent / "shared" / "data" / "strecha" / "Herz-Jesus-P8"),
}

LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")
EXTRACTING = re.compile(r"extracting (\S+) for (\d+) images into (.+\.h5)\s*$")
FEATURES_READY = re.compile(r"features ready in ([\d.]+) s")


def generate_town() -> float:
    """Generate the embedded town (a no-op when it is already there, under $FUSELOC_CACHE or ~/.cache); seconds."""
    code = ("import logging; logging.basicConfig(level='INFO', format='%(asctime)s %(message)s'); "
            "from fuseloc.data.readers.town import TownReader; TownReader().load()")
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
    return time.perf_counter() - start


def extraction_times(log: Path) -> dict[str, float | int | None]:
    """From an evaluate.py log: images extracted, (local + global) feature seconds, local extraction seconds."""
    images = local_s = features_s = None
    for line in log.read_text(errors="replace").splitlines():
        match = EXTRACTING.search(line)
        stamp = LOG_TIME.match(line)
        if match and stamp:
            images = (images or 0) + int(match.group(2))
            path = Path(match.group(3))
            if not path.is_absolute():
                path = ROOT / path
            if path.is_file():
                started = datetime.strptime(stamp.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
                local_s = (local_s or 0.0) + max(0.0, path.stat().st_mtime - started)
        ready = FEATURES_READY.search(line)
        if ready and features_s is None:
            features_s = float(ready.group(1))
    return {"images": images, "features_s": features_s, "local_s": local_s}


def last_error(log: Path) -> str:
    """The line of a failed run's log that says why (its last error line, else its last line)."""
    lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    errors = [ln for ln in lines if "ERROR" in ln or ln.startswith(("error:", "Traceback")) or "Error" in ln]
    return (errors or lines or ["(empty log)"])[-1][:300]


def run_evaluate(feature: str, dataset: str, out: Path, timeout: float) -> dict:
    """One evaluate.py run from an empty cache; its record (wall time, exit code, extraction times, log)."""
    args, _, _ = DATASETS[dataset]
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"{feature}-{dataset}.log"
    cmd = [sys.executable, "evaluate.py", *args, "--data.local_features", FEATURES[feature],
           "--data.output_dir", str(out / feature), "--lambdas", "[1.0,0.5]", "--progress", "false",
           "--overwrite", "true"]
    print(f"[{time.strftime('%H:%M:%S')}] {feature} on {dataset}: {shlex.join(cmd[1:])}", flush=True)
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    with open(log, "w") as handle:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT)
        try:
            code = proc.wait(timeout=timeout or None)
        except subprocess.TimeoutExpired:
            proc.terminate()
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            code = None
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - usage.ru_utime) + (after.ru_stime - usage.ru_stime)
    record = {"feature": feature, "dataset": dataset, "command": shlex.join(cmd), "log": str(log),
              "exit_code": code, "wall_s": wall, "cpu_s": cpu, **extraction_times(log)}
    if code is None:
        record["error"] = f"stopped after the {timeout:.0f} s timeout"
    elif code != 0:
        record["error"] = f"exit code {code}: {last_error(log)}"
    failed = f", FAILED ({record['error']})" if "error" in record else ""
    print(f"    {wall:.0f} s wall, {cpu:.0f} s CPU{failed}", flush=True)
    return record


def ms_per_query(method_dir: Path, summary: dict) -> float | None:
    """Median over queries of all timed stages together (evaluate.py's ms/query); else the stage medians' sum."""
    predictions = method_dir / "predictions.jsonl"
    if predictions.is_file():
        totals = [sum(json.loads(line).get("timings", {}).values())
                  for line in predictions.read_text().splitlines() if line.strip()]
        if totals:
            return 1e3 * statistics.median(totals)
    stages = {k: v for k, v in summary.get("timings_median_s", {}).items() if not k.endswith("_total")}
    return 1e3 * sum(stages.values()) if stages else None


def method_row(bench: Path, method: str) -> dict | None:
    """Recall per condition and threshold, ms/query and map size of one method, from its summary.json."""
    path = bench / method / "summary.json"
    if not path.is_file():
        return None
    summary = json.loads(path.read_text())
    recalls = {split: {k[len("recall_"):]: v for k, v in m.items() if k.startswith("recall_")}
               for split, m in summary["metrics"].items()}
    return {"recall": recalls, "ms_per_query": ms_per_query(bench / method, summary),
            "map_mb": summary.get("map_bytes", 0) / 1e6, "points": summary.get("num_points"),
            "queries": {split: m.get("num_queries") for split, m in summary["metrics"].items()}}


def threshold_label(key: str) -> str:
    """``0.25m_2deg`` -> ``0.25m,2°``."""
    return key.replace("_", ",").replace("deg", "°")


def format_table(dataset: str, rows: list[dict]) -> str:
    """One dataset's table: a row per feature and method."""
    splits: list[str] = []
    thresholds: list[str] = []
    for row in rows:
        for split, values in (row.get("recall") or {}).items():
            if split not in splits:
                splits.append(split)
            for key in values:
                if key not in thresholds:
                    thresholds.append(key)
    splits.sort(key=lambda s: (s == "all", s))
    header = ["feature", "method", *(f"{s} {threshold_label(t)}" for s in splits for t in thresholds),
              "ms/query", "map MB", "points", "wall s", "CPU s", "feat s/img", "local s/img"]
    table = [header]
    notes = []
    for row in rows:
        run = row["run"]
        images = run.get("images")
        feat = f"{run['features_s'] / images:.2f}" if images and run.get("features_s") is not None else "-"
        local = f"{run['local_s'] / images:.2f}" if images and run.get("local_s") is not None else "-"
        wall = f"{run['wall_s']:.0f}" if run.get("wall_s") is not None else "-"
        cpu = f"{run['cpu_s']:.0f}" if run.get("cpu_s") is not None else "-"
        if row.get("recall") is None:
            table.append([row["feature"], row["method"], *["-"] * (len(splits) * len(thresholds)), "-", "-", "-",
                          wall, cpu, feat, local])
            continue
        recalls = [f"{row['recall'].get(s, {}).get(t, float('nan')):.1f}" for s in splits for t in thresholds]
        ms = f"{row['ms_per_query']:.1f}" if row["ms_per_query"] is not None else "-"
        table.append([row["feature"], row["method"], *recalls, ms, f"{row['map_mb']:.2f}", str(row["points"]),
                      wall, cpu, feat, local])
    for feature in dict.fromkeys(r["feature"] for r in rows):
        run = next(r["run"] for r in rows if r["feature"] == feature)
        if run.get("error"):
            notes.append(f"  {feature}: {run['error']} (log {run['log']})")
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    queries = next((r["queries"] for r in rows if r.get("queries")), {})
    count = ", ".join(f"{s} {queries[s]}" for s in splits if s in queries)
    text = f"\n{dataset} (queries: {count or '?'})\n\n" + "\n".join(lines)
    if notes:
        text += "\n\nfailed:\n" + "\n".join(notes)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", type=Path, default=Path("outputs/features"))
    parser.add_argument("--features", nargs="+", default=list(FEATURES), choices=list(FEATURES))
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--rerun", action="store_true", help="run every evaluation again, even one already recorded")
    parser.add_argument("--timeout", type=float, default=0.0,
                        help="seconds after which one evaluate.py run is stopped and reported as too slow (0: none)")
    args = parser.parse_args()
    out = args.output_dir if args.output_dir.is_absolute() else (Path.cwd() / args.output_dir)
    out = out.resolve()
    runs_dir = out / "runs"
    runs_dir.mkdir(parents=True, exist_ok=True)

    datasets = []
    for dataset in args.datasets:
        needed = DATASETS[dataset][2]
        if needed is not None and not needed.is_dir():
            print(f"skipping {dataset}: its data is not there ({needed}; it comes with ../shared)", flush=True)
            continue
        datasets.append(dataset)

    if "town" in datasets:
        where = os.environ.get("FUSELOC_CACHE", "~/.cache/fuseloc")
        print(f"generating the embedded town under {where} (a no-op when it is there)", flush=True)
        print(f"    town ready in {generate_town():.0f} s (not included in the wall times below)", flush=True)

    results: dict[str, list[dict]] = {}
    for dataset in datasets:
        bench_name = DATASETS[dataset][1]
        rows: list[dict] = []
        for feature in args.features:
            bench = out / feature / bench_name
            record_path = runs_dir / f"{feature}-{dataset}.json"
            done = (record_path.is_file() and all((bench / m / "summary.json").is_file() for m in METHODS)
                    and json.loads(record_path.read_text()).get("exit_code") == 0)
            if done and not args.rerun:
                record = json.loads(record_path.read_text())
                print(f"{feature} on {dataset}: reusing the run recorded in {record_path}", flush=True)
            else:
                record = run_evaluate(feature, dataset, out, args.timeout)
                record_path.write_text(json.dumps(record, indent=1))
            for method in METHODS:
                row = method_row(bench, method) if record.get("exit_code") == 0 else None
                rows.append({"feature": feature, "method": method, "run": record, **(row or {"recall": None})})
        results[dataset] = rows

    print("\nrecall (%) per condition at each threshold; ms/query: median per query (feature reading, fusion, "
          "search, PnP);\nwall s: the whole evaluate.py run (both methods) from an empty feature cache, extraction "
          "included;\nCPU s: user + system seconds of that run; feat s/img: local extraction + VLAD per image; "
          "local s/img: local extraction alone")
    for dataset, rows in results.items():
        print(format_table(dataset, rows), flush=True)
    (out / "compare_features.json").write_text(json.dumps(results, indent=1, default=str))
    print(f"\nrows: {out / 'compare_features.json'}; logs: {out / 'logs'}")


if __name__ == "__main__":
    main()

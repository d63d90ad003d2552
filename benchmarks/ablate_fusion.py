"""Ablation of the learned fusion against the fixed-λ sweep, on evaluation queries that training never sees.

    python benchmarks/ablate_fusion.py                                  # the embedded town, every variant
    python benchmarks/ablate_fusion.py --variants gates projection --output_dir /tmp/ablation
    python benchmarks/ablate_fusion.py --train_args "--trainer.max_epochs 3"   # extra train.py arguments

For each variant (λ only; + per-dimension gates; + learned projection of the global descriptor; + image-
conditioned gate; + local projection; the learned projection started from PCA instead of the learned whitening
of the global descriptor), with and without cross-condition samples (``--data.conditions []``),
the script trains with ``train.py fit`` (the checkpoint chosen by ``val/score`` on the validation queries),
evaluates that checkpoint with ``evaluate.py --checkpoint`` and prints recall per condition next to every fixed
λ of the sweep. The best fixed λ is chosen on the evaluation queries themselves (an advantage to the fixed
fusion). Training and evaluation share ``<output_dir>``'s caches. Results go to ``<output_dir>/ablation.json``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FUSION = "--model.fusion.init_args."

VARIANTS: dict[str, list[str]] = {
    "lambda": [f"{FUSION}per_dim_gate", "false", f"{FUSION}train_projection", "false"],
    "gates": [f"{FUSION}train_projection", "false"],
    "projection": [f"{FUSION}train_projection", "true", f"{FUSION}projection_decay", "0.01"],
    "conditioned": [f"{FUSION}train_projection", "true", f"{FUSION}projection_decay", "0.01",
                    f"{FUSION}conditioned_gate", "true"],
    "local_projection": [f"{FUSION}train_projection", "true", f"{FUSION}projection_decay", "0.01",
                         f"{FUSION}project_local", "true"],
    # the learned projection started from PCA instead of the learned whitening (the default before it)
    "projection_pca": [f"{FUSION}train_projection", "true", f"{FUSION}projection_decay", "0.01",
                       f"{FUSION}init", "pca"],
}


def run(cmd: list[str], log: Path) -> None:
    start = time.perf_counter()
    with open(log, "w") as out:
        code = subprocess.call(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    print(f"  {' '.join(cmd[1:3])} ... {time.perf_counter() - start:.0f} s (log {log})", flush=True)
    if code != 0:
        sys.exit(f"command failed ({code}): {shlex.join(cmd)}; see {log}")


def recalls(summary: Path) -> dict[str, float]:
    metrics = json.loads(summary.read_text())["metrics"]
    key = next(k for k in metrics["all"] if k.startswith("recall_"))
    return {split: values[key] for split, values in metrics.items()}


def validation_recalls(run_dir: Path, ckpt: Path) -> dict[str, float]:
    """Recall per condition on the validation queries at the epoch of ``ckpt`` (what selected it)."""
    epoch = int(ckpt.stem.split("epoch=")[-1])
    found = run_dir / "validation" / f"epoch_{epoch:03d}.json"
    if not found.is_file():
        return {}
    metrics = json.loads(found.read_text())["metrics"]
    key = next((k for k in metrics if "/all/recall_" in k), None)
    if key is None:
        return {}
    threshold = key.split("/")[-1]
    return {k.split("/")[-2]: v for k, v in metrics.items() if k.endswith("/" + threshold)}


def best_checkpoint(run_dir: Path) -> Path:
    found = sorted((run_dir / "checkpoints").glob("best-*.ckpt"))
    if not found:
        sys.exit(f"no best-*.ckpt in {run_dir / 'checkpoints'}")
    return found[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", type=Path, default=Path("outputs"))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--cross_condition", choices=["both", "with", "without"], default="both")
    parser.add_argument("--lambdas", default="[0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9]")
    parser.add_argument("--data_args", default="", help="arguments for both tools (e.g. --config files)")
    parser.add_argument("--train_args", default="", help="extra train.py arguments")
    args = parser.parse_args()
    py = sys.executable
    out = args.output_dir.resolve()
    logs = out / "ablation-logs"
    logs.mkdir(parents=True, exist_ok=True)
    data_args = [*shlex.split(args.data_args), "--data.output_dir", str(out)]
    print("fixed-λ sweep", flush=True)
    run([py, "evaluate.py", *data_args, "--lambdas", args.lambdas, "--progress", "false"], logs / "sweep.log")
    bench = next(p.parent.parent for p in out.glob("*/fused-lam*/summary.json"))
    fixed = {p.parent.name: recalls(p) for p in sorted(bench.glob("fused-lam*/summary.json"))}
    rows = []
    modes = {"both": [True, False], "with": [True], "without": [False]}[args.cross_condition]
    for variant in args.variants:
        for cross in modes:
            name = f"ablation-{variant}" + ("" if cross else "-nocond")
            print(f"{name}", flush=True)
            version = f"v{int(time.time())}"
            train = [py, "train.py", "fit", *data_args, "--trainer.logger.init_args.name", name,
                     "--trainer.logger.init_args.version", version, *VARIANTS[variant],
                     *([] if cross else ["--data.conditions", "[]"]), *shlex.split(args.train_args)]
            run(train, logs / f"{name}-train.log")
            run_dir = out / "train" / name / version
            ckpt = best_checkpoint(run_dir)
            run([py, "evaluate.py", *data_args, "--lambdas", "[]", "--checkpoint", str(ckpt), "--progress", "false"],
                logs / f"{name}-eval.log")
            rows.append({"variant": variant, "cross_condition": cross, "checkpoint": str(ckpt),
                         "recall": recalls(bench / "learned" / "summary.json"),
                         "validation": validation_recalls(run_dir, ckpt)})
            print(f"  evaluation {rows[-1]['recall']}, validation {rows[-1]['validation']}", flush=True)
    splits = sorted({s for r in fixed.values() for s in r if s != "all"}) + ["all"]
    best_night = max(fixed, key=lambda k: (fixed[k].get("night", fixed[k]["all"]), fixed[k]["all"]))
    print(f"\nrecall (%) at the first threshold; best fixed λ for night (or all): {best_night}\n")
    print(f"{'method':34s}" + "".join(f"{s:>8s}" for s in splits))
    for label, r in fixed.items():
        print(f"{label:34s}" + "".join(f"{r.get(s, float('nan')):8.1f}" for s in splits))
    for row in rows:
        label = f"learned {row['variant']}" + (" +cond" if row["cross_condition"] else " no-cond")
        print(f"{label:34s}" + "".join(f"{row['recall'].get(s, float('nan')):8.1f}" for s in splits))
    (out / "ablation.json").write_text(json.dumps({"fixed": fixed, "learned": rows, "best_fixed": best_night}, indent=1))


if __name__ == "__main__":
    main()

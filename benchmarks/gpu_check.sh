#!/usr/bin/env bash
# GPU acceptance check of fuseloc, in one go (about 5 minutes on 1 GPU + 16 cores):
#   1. the @pytest.mark.gpu tests (CUDA fusion = CPU fusion for maps and queries, Lightning on the GPU through
#      the validation callback, train.py --trainer.accelerator gpu, faiss GPU indexes when faiss-gpu is there);
#   2. train.py fit on 1 GPU, 2 epochs on the embedded town;
#   3. DDP with 2 processes: on 2 GPUs when there are 2, else 2 processes sharing GPU 0 (see below);
#   4. evaluate.py with the fusion on CUDA (--device cuda) and the faiss index on the GPU (--localizer.index.use_gpu),
#      fixed fusions next to the checkpoint of step 2; prints the recall table.
# It exits non-zero when a step fails, and prints a summary line per step at the end.
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]        # default OUT_DIR: outputs/gpu_check (or $OUT when set)
#   bash benchmarks/gpu_check.sh --download-wheels # on a networked CPU machine: the wheels a bare GPU box lacks
#
# Python: $PY, else .venv/bin/python when its torch sees CUDA, else python3. A bare GPU image (CUDA torch,
# Lightning, h5py, OpenCV, scikit-learn... but no network) lacks faiss, pycolmap, poselib, pytorch-metric-learning
# and jsonargparse: `--download-wheels` puts them (cp312, ~57 MB) in outputs/gpu_wheels, and this script installs
# whatever lies there into /tmp/fuseloc-site before anything runs (WHEELS=dir to use another folder).
# faiss-gpu is not among them (its CUDA 12 libraries are >400 MB); where it is missing the GPU-index test is
# skipped and step 4 uses the CPU index, saying so. FAISS_GPU_REQUIRED=1 makes that a failure.
#
# GPU_CHECK_CPU=1 runs the same steps on the CPU (accelerator cpu, --device cpu): a rehearsal of this script's
# plumbing on a machine without a GPU, where the gpu tests skip.
#
# One GPU and DDP: Lightning refuses the same GPU twice in one trainer ("Device ID's (GPU) must be unique"),
# and NCCL refuses two ranks on one GPU. So on one GPU this script starts the 2 processes itself, each as a
# "node" of 1 device (NODE_RANK 0/1, LOCAL_RANK 0, both on cuda:0), with the gloo backend. That exercises the
# same code paths (rank-0 cache preparation and broadcast, sharded validation, all_gather_object, DDP
# gradient sync), not the NCCL transport; with 2 GPUs it is a plain --trainer.devices 2 --trainer.strategy ddp.
set -uo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"

if [[ "${1:-}" == "--download-wheels" ]]; then
    dest=${WHEELS:-outputs/gpu_wheels}
    mkdir -p "$dest"
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d "$dest" \
        faiss-cpu==1.15.1 pycolmap==4.2.1 poselib==2.0.5 pytorch-metric-learning==2.9.0 jsonargparse==4.53.0 \
        docstring_parser typeshed_client || exit 1
    du -sh "$dest"
    echo "carry $dest along (it is under the ignored outputs/) and run: bash benchmarks/gpu_check.sh"
    exit 0
fi

OUT_DIR=${1:-${OUT:-outputs/gpu_check}}
mkdir -p "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)
LOG="$OUT_DIR/gpu_check.log"
: >"$LOG"
export PYTHONUNBUFFERED=1

WHEELS=${WHEELS:-outputs/gpu_wheels}
if compgen -G "$WHEELS/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/fuseloc-site \
        "$WHEELS"/*.whl || exit 1
    export PYTHONPATH=/tmp/fuseloc-site${PYTHONPATH:+:$PYTHONPATH}
fi
# fuseloc from this checkout (installed or not); tests/ for the toy readers that configs name by class_path.
export PYTHONPATH=$REPO:$REPO/tests${PYTHONPATH:+:$PYTHONPATH}

ACCEL=gpu DEVICE=cuda
if [[ "${GPU_CHECK_CPU:-0}" == 1 ]]; then ACCEL=cpu DEVICE=cpu; fi
cuda_ok() { [[ $ACCEL == cpu ]] || "$1" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; }
if [[ -z "${PY:-}" ]]; then
    if [[ -x .venv/bin/python ]] && cuda_ok .venv/bin/python; then PY=.venv/bin/python; else PY=python3; fi
fi
if ! cuda_ok "$PY"; then
    echo "FAIL: $PY: torch sees no CUDA device (a CPU-only torch build, or no GPU); set PY=<python with CUDA torch>"
    exit 1
fi

"$PY" - <<'EOF' | tee -a "$LOG"
import faiss, torch
from fuseloc.localize.index import faiss_has_gpu_support, gpu_available
print(f"python torch {torch.__version__} (CUDA {torch.version.cuda}), {torch.cuda.device_count()} GPU(s): "
      + ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())))
print(f"faiss {faiss.__version__}: GPU support {faiss_has_gpu_support()}, GPU index usable {gpu_available()}")
EOF
NGPU=$("$PY" -c 'import torch; print(torch.cuda.device_count())')
[[ $ACCEL == gpu ]] || NGPU=1
FAISS_GPU=$("$PY" -c 'from fuseloc.localize.index import gpu_available; print(str(gpu_available()).lower())')
if [[ "$FAISS_GPU" != true && "${FAISS_GPU_REQUIRED:-0}" == 1 ]]; then
    echo "FAIL: FAISS_GPU_REQUIRED=1 but faiss has no usable GPU (install faiss-gpu)"
    exit 1
fi

declare -a SUMMARY
STATUS=0
step() {  # step NAME COMMAND...: run, time, log, remember the outcome
    local name=$1
    shift
    echo "=== $name: $*" | tee -a "$LOG"
    local t0=$SECONDS
    "$@" 2>&1 | tee -a "$LOG" | grep -vE "^\s*$" | tail -n 25
    local rc=${PIPESTATUS[0]}
    SUMMARY+=("$(printf '%-28s %s (%ds)' "$name" "$([[ $rc == 0 ]] && echo ok || echo "FAILED rc=$rc")" $((SECONDS - t0)))")
    [[ $rc == 0 ]] || STATUS=1
}

val_metrics() {  # val_metrics RUN_DIR: the last validation epoch's headline numbers
    "$PY" - "$1" <<'EOF'
import json, sys
from pathlib import Path
files = sorted(Path(sys.argv[1]).glob("validation/epoch_*.json"))
if not files:
    sys.exit(f"no validation/epoch_*.json under {sys.argv[1]}")
data = json.loads(files[-1].read_text())
keys = [k for k in data["metrics"] if k == "val/score" or k.endswith(("all/recall_0.25m_2deg", "all/recall_5m_10deg",
                                                                       "correct_match_pct", "localized_pct"))]
print(f"epoch {data['epoch']}: " + ", ".join(f"{k} = {data['metrics'][k]:.3f}" for k in sorted(keys)))
EOF
}

# 1. GPU tests ----------------------------------------------------------------------------------------------
# Only the files that hold gpu tests: collecting every test module would need packages a bare GPU image lacks.
mapfile -t GPU_TESTS < <(grep -l "pytest.mark.gpu" tests/test_*.py)
step "pytest -m gpu" "$PY" -m pytest -q -p no:cacheprovider -m gpu -rs "${GPU_TESTS[@]}"

# 2. one GPU ------------------------------------------------------------------------------------------------
TRAIN=(train.py fit --data.output_dir "$OUT_DIR/outputs" --trainer.logger.init_args.save_dir "$OUT_DIR/train"
       --trainer.max_epochs 2 --trainer.accelerator "$ACCEL")
step "train 1 GPU" "$PY" "${TRAIN[@]}" --trainer.devices 1 --trainer.logger.init_args.version gpu1
step "train 1 GPU metrics" val_metrics "$OUT_DIR/train/town/gpu1"

# 3. DDP, 2 processes -----------------------------------------------------------------------------------------
if ((NGPU >= 2)); then
    step "train DDP 2 GPUs" "$PY" "${TRAIN[@]}" --trainer.devices 2 --trainer.strategy ddp \
        --trainer.logger.init_args.version ddp2
else
    ddp_one_gpu() {
        local port=$((29500 + RANDOM % 2000)) pids=() rc=0
        for rank in 0 1; do
            MASTER_ADDR=127.0.0.1 MASTER_PORT=$port WORLD_SIZE=2 NODE_RANK=$rank LOCAL_RANK=0 \
                "$PY" "${TRAIN[@]}" --trainer.devices 1 --trainer.num_nodes 2 \
                --trainer.strategy lightning.pytorch.strategies.DDPStrategy \
                --trainer.strategy.process_group_backend gloo --trainer.logger.init_args.version ddp2 \
                >"$OUT_DIR/ddp_rank$rank.log" 2>&1 &
            pids+=($!)
        done
        for pid in "${pids[@]}"; do wait "$pid" || rc=1; done
        tail -n 5 "$OUT_DIR/ddp_rank0.log"
        return $rc
    }
    step "train DDP 2 procs on 1 GPU" ddp_one_gpu
fi
step "train DDP metrics" val_metrics "$OUT_DIR/train/town/ddp2"

# 4. evaluate.py: fusion on CUDA, faiss index on the GPU -------------------------------------------------------
CKPT=$(ls "$OUT_DIR"/train/town/gpu1/checkpoints/best-*.ckpt 2>/dev/null | head -n 1)
[[ "$FAISS_GPU" == true ]] || echo "NOTE: faiss has no usable GPU here: evaluate.py uses the CPU index" | tee -a "$LOG"
step "evaluate $DEVICE" "$PY" evaluate.py --device "$DEVICE" --localizer.index.use_gpu "$FAISS_GPU" --data.output_dir "$OUT_DIR/outputs" \
    --progress false ${CKPT:+--checkpoint "$CKPT"}

echo
echo "=== summary (full log: $LOG)"
printf '%s\n' "${SUMMARY[@]}" | tee -a "$LOG"
exit $STATUS

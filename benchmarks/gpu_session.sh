#!/usr/bin/env bash
# The measurements only a GPU can make, in as few device calls as a lease allows (see BENCHMARKS.md, RESULTS.md).
# Run from the repository root on the GPU machine; results go to $OUT (default /tmp/peerkd_out).
#
#   bash benchmarks/gpu_session.sh check                  # CUDA tests (tests/test_cuda.py), device and versions
#   bash benchmarks/gpu_session.sh bench [ROWS] [MODE]    # peerkd bench with the fuse comparison; ROWS: a row-name
#                                                         # substring (every row compiles: all of them overrun one
#                                                         # 10-minute call, so split: dml, css, one, ...); MODE:
#                                                         # compile (default) or graph
#   bash benchmarks/gpu_session.sh accuracy CIFAR100_DIR  # issue 3: 30-epoch DML ResNet-32, fast vs fp32 eager,
#                                                         # seeds 0 and 1, the four runs side by side on one GPU
#
# The device image has PyTorch but no peerkd install: everything runs from the checkout with PYTHONPATH.
# CIFAR100_DIR holds train.npz / test.npz (../shared/tools/stage_cifar100.py brings them over in three calls).
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
OUT="${OUT:-/tmp/peerkd_out}"
mkdir -p "$OUT"
PYTHON="${PYTHON:-python3}"

environment() {
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    "$PYTHON" -c "import torch, sys; print('torch', torch.__version__, 'python', sys.version.split()[0])"
    git rev-parse --short HEAD 2>/dev/null || true
}

case "${1:-}" in
check)
    environment | tee "$OUT/environment.txt"
    "$PYTHON" -m pytest -q -x tests/test_cuda.py 2>&1 | tail -40 | tee "$OUT/test_cuda.txt"
    ;;
bench)
    environment | tee "$OUT/environment.txt"
    # H100 SXM: 989 dense bf16 TFLOP/s; the fuse comparison adds the fast path with fuse off and streams
    rows="${2:-}"
    mode="${3:-compile}"
    tag="${rows:-all}_$mode"
    "$PYTHON" benchmarks/bench.py --peak-tflops 989 --fuse-compare --fast-mode "$mode" ${rows:+--only "$rows"} \
        --out "$OUT/bench_$tag.json" 2>&1 | tee "$OUT/bench_$tag.txt"
    ;;
accuracy)
    data="${2:?give the folder holding CIFAR-100 train.npz / test.npz}"
    runs=/tmp/peerkd_runs  # run folders stay on the device; only the summaries come back
    common=(-c configs/cifar100/dml_resnet32.yaml --data-dir "$data" --out "$runs"
            --set schedule.kind=cosine --set schedule.epochs=30 --set trainer.progress=off)
    fp32_eager=(--set trainer.fast=off --set trainer.precision=fp32 --set trainer.channels_last=off
                --set method.fuse=off)
    for seed in 0 1; do
        "$PYTHON" -m peerkd train "${common[@]}" --set seed=$seed --set name=dml_r32_30ep_fast_s$seed \
            > "$OUT/fast_s$seed.log" 2>&1 &
        "$PYTHON" -m peerkd train "${common[@]}" --set seed=$seed --set name=dml_r32_30ep_fp32eager_s$seed \
            "${fp32_eager[@]}" > "$OUT/fp32eager_s$seed.log" 2>&1 &
    done
    wait
    "$PYTHON" - "$runs" "$OUT/accuracy.json" <<'EOF'
import json, pathlib, sys
runs, out = pathlib.Path(sys.argv[1]), sys.argv[2]
rows = {}
for summary in sorted(runs.glob("dml_r32_30ep_*/summary.json")):
    keys = json.loads(summary.read_text())["keys"]
    rows[summary.parent.name] = {k: v["last"]["top1"] for k, v in keys.items()}
    print(summary.parent.name, " ".join(f"{k} {v:.2f}" for k, v in rows[summary.parent.name].items()))
json.dump(rows, open(out, "w"), indent=2)
EOF
    ;;
*)
    sed -n 2,15p "$0"
    exit 2
    ;;
esac

#!/usr/bin/env bash
# The measurements only a GPU can make, in as few device calls as a lease allows (see BENCHMARKS.md, RESULTS.md).
# Run from the repository root on the GPU machine; results go to $OUT (default /tmp/peerkd_out).
#
#   bash benchmarks/gpu_session.sh check                  # CUDA tests (tests/training/test_cuda.py), device and versions
#   bash benchmarks/gpu_session.sh bench [ROWS] [MODE]    # python benchmarks/bench.py --members-compare; ROWS: a
#                                                         # row-name substring (every row compiles: all of them
#                                                         # overrun one 10-minute call, so split: dml, css, one,
#                                                         # ...); MODE: the --step, compile (default) or graph
#   bash benchmarks/gpu_session.sh call1                  # issue 15 call 1: check, then bench on the six rows that
#                                                         # decide the design (each row its own time limit), a
#                                                         # profile of the DML and CSS steps; ~9 minutes
#   bash benchmarks/gpu_session.sh cells CIFAR100_DIR SECONDS [RUNS_DIR]
#                                                         # issue 15 calls 2-3: the full-schedule CIFAR-100 cells side
#                                                         # by side; SIGTERM after SECONDS (each run checkpoints,
#                                                         # exit 143); the run folders come back under $OUT/runs and
#                                                         # continue with RUNS_DIR = the folder carried back
#   bash benchmarks/gpu_session.sh accuracy CIFAR100_DIR  # issue 3: 30-epoch DML ResNet-32, fast vs fp32 eager,
#                                                         # seeds 0 and 1, the four runs side by side on one GPU
#   bash benchmarks/gpu_session.sh sweep-throughput [CIFAR100_DIR]  # issue 13: peerkd sweep of short DML ResNet-32
#                                                         # runs, 1, 2, 4 and 8 at once on one GPU (images/s of
#                                                         # all runs together); without a folder, generated data
#                                                         # of CIFAR-100's shape. ~8 min; SWEEP_TP_COUNTS,
#                                                         # SWEEP_TP_EPOCHS, SWEEP_TP_TRAIN, SWEEP_TP_SET,
#                                                         # SWEEP_TP_RUNS (the run folders' parent) override
#   bash benchmarks/gpu_session.sh dry-run                # call1, cells and sweep-throughput exactly as above but on
#                                                         # the CPU with tiny sizes (generated CIFAR-100-shaped
#                                                         # data, one short epoch, a couple of steps), then checks
#                                                         # every output; exit 0 = a GPU session loses no minute to
#                                                         # a renamed key or row. ~1.5 CPU-minutes (two cores:
#                                                         # about one minute; exit 1 lists what failed)
#
# BENCH_ARGS (extra bench.py arguments) and TRAIN_SET (extra `--set key=value` words for peerkd train / sweep) are
# empty in a GPU session; dry-run fills them with the tiny sizes.
# The device image has PyTorch but no peerkd install: everything runs from the checkout with PYTHONPATH.
# CIFAR100_DIR holds train.npz / test.npz (../shared/tools/stage_cifar100.py brings them over in three calls).
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
OUT="${OUT:-/tmp/peerkd_out}"
mkdir -p "$OUT"
PYTHON="${PYTHON:-python3}"

# as arrays (words split at any white space, lines included; no glob expansion of values like [resnet8,resnet8])
read -ra bench_args -d '' <<< "${BENCH_ARGS:-}"
read -ra train_set -d '' <<< "${TRAIN_SET:-}"
CALL1_ROWS=("vanilla R32" "DML 2xR32" "CSS 2xR110x3" "ONE R32x4" "KDCL 2xR32" "PS-KD+BYOT+DMFL R18")  # the six
# rows that decide the design, and the two whose steps are profiled:
PROFILE_ROWS=("DML 2xR32" "CSS 2xR110x3")
CELLS=(cifar100/vanilla_resnet32 cifar100/dml_resnet32 kdcl/table7/kdcl_general_icl)  # side by side in `cells`

environment() {
    if command -v nvidia-smi > /dev/null; then
        nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    else
        echo "no nvidia-smi: no NVIDIA driver on this machine"
    fi
    "$PYTHON" -c "import torch, sys; print('torch', torch.__version__, 'python', sys.version.split()[0])"
    git rev-parse --short HEAD 2>/dev/null || true
}

case "${1:-}" in
check)
    environment | tee "$OUT/environment.txt"
    "$PYTHON" -m pytest -q -x tests/training/test_cuda.py 2>&1 | tail -40 | tee "$OUT/test_cuda.txt"
    ;;
bench)
    environment | tee "$OUT/environment.txt"
    # H100 SXM: 989 dense bf16 TFLOP/s; --members-compare adds the fast path with separate, streamed and vmapped
    # members (trainer.members) to the grouped one
    rows="${2:-}"
    mode="${3:-compile}"
    tag="${rows:-all}_$mode"
    "$PYTHON" benchmarks/bench.py --peak-tflops 989 --members-compare --step "$mode" ${rows:+--only "$rows"} \
        --out "$OUT/bench_$tag.json" 2>&1 | tee "$OUT/bench_$tag.txt"
    ;;
call1)
    environment | tee "$OUT/environment.txt"
    timeout 150 "$PYTHON" -m pytest -q -x tests/training/test_cuda.py 2>&1 | tail -40 | tee "$OUT/test_cuda.txt"
    # one row per run, each under its own limit, so a row that hangs in compilation costs only its own minute
    for row in "${CALL1_ROWS[@]}"; do
        tag=$(echo "$row" | tr ' +' '__')
        timeout 75 "$PYTHON" benchmarks/bench.py --peak-tflops 989 --members-compare --only "$row" \
            --out "$OUT/bench_$tag.json" "${bench_args[@]}" > "$OUT/bench_$tag.txt" 2>&1
        echo "$row: exit $? ($OUT/bench_$tag.txt)"; tail -3 "$OUT/bench_$tag.txt"
    done
    # where the time goes in the two target rows: torch.profiler over a few fast steps (tables under $OUT/profile_*)
    for row in "${PROFILE_ROWS[@]}"; do
        tag=$(echo "$row" | tr ' +' '__')
        timeout 60 "$PYTHON" benchmarks/bench.py --only "$row" --profile "$OUT/profile_$tag.txt" "${bench_args[@]}" \
            > "$OUT/profile_$tag.log" 2>&1 || echo "$row profile: exit $? (see $OUT/profile_$tag.log)"
    done
    ;;
cells)
    data="${2:?give the folder holding CIFAR-100 train.npz / test.npz}"
    seconds="${3:?give the seconds the runs may train before SIGTERM}"
    runs="${4:-$OUT/runs}"  # a folder carried back from an earlier call continues where its runs stopped
    mkdir -p "$OUT/runs"
    if [ "$runs" != "$OUT/runs" ]; then cp -r "$runs"/. "$OUT/runs"/; fi
    for cell in "${CELLS[@]}"; do
        name=$(basename "$cell")
        if [ -f "$OUT/runs/$name/checkpoint.pt" ]; then
            args=(--resume "$OUT/runs/$name")
        else
            args=(-c "configs/$cell.yaml" --out "$OUT/runs/$name" --set name="$name")  # --out: the run folder
        fi
        timeout -s TERM "$seconds" "$PYTHON" -m peerkd train "${args[@]}" --data-dir "$data" \
            --set trainer.progress=off "${train_set[@]}" > "$OUT/$name.log" 2>&1 &
    done
    wait
    for cell in "${CELLS[@]}"; do
        name=$(basename "$cell")
        echo "$name: $(tail -1 "$OUT/$name.log")"
    done
    ;;
accuracy)
    data="${2:?give the folder holding CIFAR-100 train.npz / test.npz}"
    runs=/tmp/peerkd_runs  # run folders stay on the device; only the summaries come back
    common=(-c configs/cifar100/dml_resnet32.yaml --data-dir "$data" --out "$runs"
            --set schedule.kind=cosine --set schedule.epochs=30 --set trainer.progress=off)
    fp32_eager=(--set trainer.step=eager --set trainer.precision=fp32 --set trainer.channels_last=off
                --set trainer.members=separate)
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
sweep-throughput)
    data="${2:-}"
    runs="${SWEEP_TP_RUNS:-/tmp/peerkd_sweep_tp}"  # run folders stay on the device; logs and the table come back
    rm -rf "$runs" "$OUT/sweep_tp_times.txt"
    epochs="${SWEEP_TP_EPOCHS:-3}"
    train="${SWEEP_TP_TRAIN:-20000}"
    if [ -n "$data" ]; then
        source=(--set "data.root=$data" --set "data.train_subset=$train")
    else
        source=(--set data.dataset=synthetic --set data.synthetic.num_classes=100
                --set "data.synthetic.train_size=$train" --set data.synthetic.test_size=2000)
    fi
    environment | tee "$OUT/environment.txt"
    for n in ${SWEEP_TP_COUNTS:-1 2 4 8}; do
        start=$(date +%s.%N)
        "$PYTHON" -m peerkd sweep configs/cifar100/dml_resnet32.yaml --seeds "0-$((n - 1))" --jobs "$n" \
            --out "$runs/n$n" --set "schedule.epochs=$epochs" --set schedule.kind=cosine --set trainer.progress=off \
            "${source[@]}" ${SWEEP_TP_SET:-} "${train_set[@]}" > "$OUT/sweep_tp_n$n.log" 2>&1
        code=$?
        echo "$n $start $(date +%s.%N) $code" >> "$OUT/sweep_tp_times.txt"
    done
    "$PYTHON" - "$runs" "$OUT/sweep_tp_times.txt" "$OUT/sweep_throughput.json" "$train" "$epochs" <<'EOF'
import json, pathlib, sys
runs, times, out = pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3]
train, epochs = int(sys.argv[4]), int(sys.argv[5])
rows = []
for line in open(times):
    n, start, end, code = line.split()
    n, wall = int(n), float(end) - float(start)
    steady = 0.0  # the runs' training images/s in their last epoch (compile and eval left out), summed over runs
    for metrics in sorted((runs / f"n{n}").glob("*/metrics.jsonl")):
        records = [json.loads(r) for r in metrics.read_text().splitlines()]
        last = [r["images_per_s"] for r in records if r.get("kind") == "train" and r.get("epoch") == epochs - 1]
        steady += sum(last) / len(last) if last else 0.0
    rows.append({"concurrent_runs": n, "exit": int(code), "wall_s": round(wall, 1),
                 "images_per_s_wall": round(n * epochs * train / wall, 1), "images_per_s_steady": round(steady, 1)})
    print(f"{n} run(s) at once: {wall:7.1f} s wall, {rows[-1]['images_per_s_wall']:9.1f} img/s over the wall "
          f"time, {steady:9.1f} img/s steady (last epoch, summed over runs), exit {code}")
json.dump(rows, open(out, "w"), indent=2)
EOF
    ;;
dry-run)
    # The three commands of a GPU session above, unchanged, on the CPU with tiny sizes; each writes under its own
    # folder of $OUT/dry_run, then every output they should have written is checked.
    dry="$OUT/dry_run"
    rm -rf "$dry"
    mkdir -p "$dry"
    # CIFAR-100's files with 51 random images per class (the KDCL cell holds 50 per class out) and 100 test images
    "$PYTHON" - "$dry/cifar100" <<'EOF' || exit 1
import pathlib, sys
import numpy as np
folder = pathlib.Path(sys.argv[1])
folder.mkdir(parents=True)
rng = np.random.default_rng(0)
for split, per_class in (("train", 51), ("test", 1)):
    labels = np.repeat(np.arange(100), per_class)
    images = rng.integers(0, 256, (len(labels), 32, 32, 3), dtype=np.uint8)
    np.savez(folder / f"{split}.npz", images=images, labels=labels)
EOF
    export BENCH_ARGS="--quick --device cpu --threads 1 --steps 1 --warmup 0 --batch-size 8 --images 64"
    export TRAIN_SET="--set trainer.device=cpu --set trainer.threads=1 --set schedule.epochs=1 --set data.batch_size=16
        --set data.train_subset=32 --set data.test_subset=50 --set method.models=[resnet8,resnet8]"
    export SWEEP_TP_COUNTS="${SWEEP_TP_COUNTS:-1}" SWEEP_TP_EPOCHS=1 SWEEP_TP_TRAIN=32 SWEEP_TP_RUNS="$dry/sweep_runs"
    # call1 (one process at a time) beside cells then sweep-throughput: the two halves keep two cores busy
    OUT="$dry/call1" bash "$0" call1 > "$dry/call1.log" 2>&1 &
    OUT="$dry/cells" bash "$0" cells "$dry/cifar100" 300 > "$dry/cells.log" 2>&1
    OUT="$dry/sweep" bash "$0" sweep-throughput > "$dry/sweep.log" 2>&1
    wait
    rows=$(printf '%s\n' "${CALL1_ROWS[@]}")
    profiled=$(printf '%s\n' "${PROFILE_ROWS[@]}")
    cells=$(printf '%s\n' "${CELLS[@]}")
    "$PYTHON" - "$dry" "$rows" "$profiled" "$cells" <<'EOF'
import json, pathlib, re, sys
dry = pathlib.Path(sys.argv[1])
rows, profiled, cells = (arg.splitlines() for arg in sys.argv[2:5])
tag = lambda row: row.replace(" ", "_").replace("+", "_")
problems = []
tests = (dry / "call1" / "test_cuda.txt").read_text() if (dry / "call1" / "test_cuda.txt").is_file() else ""
if not re.search(r"\d+ (passed|skipped)", tests) or re.search(r"\d+ (failed|errors?)\b", tests):
    problems.append(f"call1: tests/training/test_cuda.py did not pass or skip: {tests.strip()[-300:]!r}")
for row in rows:
    path = dry / "call1" / f"bench_{tag(row)}.json"
    if not path.is_file():
        problems.append(f"call1: no {path.name} ({path.with_suffix('.txt')})")
        continue
    for record in json.loads(path.read_text()) or [{"shape": row, "error": "no row timed"}]:
        paths = [k for k in ("reference", "fast", "fast_separate", "fast_streams", "fast_vmap") if k in record]
        failed = [record.get(k) for k in ("error", "skipped") if k in record]
        failed += [f"{k}: {record[k]['error']}" for k in paths if "error" in record[k]]
        if failed or not paths:
            problems.append(f"call1: row {record['shape']!r}: {failed or 'no path timed'}")
for row in profiled:
    path = dry / "call1" / f"profile_{tag(row)}.txt"
    if not (path.is_file() and "== reference:" in path.read_text()):
        problems.append(f"call1: no profile table {path.name} (see {path.with_suffix('.log')})")
for cell in cells:
    name = pathlib.Path(cell).name
    if not (dry / "cells" / "runs" / name / "summary.json").is_file():
        log = dry / "cells" / f"{name}.log"
        tail = log.read_text().strip().splitlines()[-1:] if log.is_file() else ["no log"]
        problems.append(f"cells: {name} wrote no summary.json ({log}: {tail})")
table = dry / "sweep" / "sweep_throughput.json"
sweeps = json.loads(table.read_text()) if table.is_file() else []
if not sweeps or any(r["exit"] != 0 or r["images_per_s_steady"] <= 0 for r in sweeps):
    problems.append(f"sweep-throughput: {sweeps or 'no sweep_throughput.json'} (logs in {dry / 'sweep'})")
print("\n".join(problems) or f"dry run OK: call1 ({len(rows)} rows, {len(profiled)} profiles), cells "
      f"({len(cells)} runs), sweep-throughput ({len(sweeps)} sweeps) under {dry}")
sys.exit(1 if problems else 0)
EOF
    ;;
*)
    sed -n 2,36p "$0"
    exit 2
    ;;
esac

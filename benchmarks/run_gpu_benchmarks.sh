#!/usr/bin/env bash
# Every GPU check in one call on a CUDA machine: the CUDA tests, then the GPU benchmarks, then the whole suite.
# Each step has its own time limit (cut to what is left of BUDGET_S) and a failing step does not stop the others.
# Results (JSON + Markdown) go to RESULTS, each step's log to RESULTS/logs; AFTER_STEP runs after every step
# (say, to copy results off a machine that may be taken back).
#   RESULTS=/tmp/gpu-results BUDGET_S=900 bash benchmarks/run_gpu_benchmarks.sh
#   STEPS="memory_demo suite" bash benchmarks/run_gpu_benchmarks.sh      # only these steps
# The H200 results of 2026-11-28 (benchmarks/results/*cuda*) came from calls of this script with
# RESULTS=/tmp/gpu-results; the first ones before spleen_ct.yaml's num_workers became "auto" (it was 4, which
# training_spleen then ran; the 12 that auto gives 16 cores ran as --option data.num_workers=12). Each result file
# names its command. TRAINING_SUFFIX and INFERENCE_SUFFIX name a later run's files apart from earlier ones.
set -u
cd "$(dirname "$0")/.."
RESULTS=${RESULTS:-benchmarks/results}
LOGS=$RESULTS/logs
PYTHON=${PYTHON:-python3}
DATA=${DATA:-/tmp/medseg-training-benchmark}
STEPS=${STEPS:-"environment cuda_tests memory_spleen precision precision_channels_last precision_compile training_spleen training_spleen_workers4 inference training_spleen_gpu_augmentation memory_demo suite"}
DEADLINE=$(( $(date +%s) + ${BUDGET_S:-3600} ))
mkdir -p "$LOGS"
export PYTHONUNBUFFERED=1

step() {  # step NAME LIMIT_S COMMAND...: run COMMAND if NAME is wanted and time is left, log it, summarise it
    local name=$1 limit=$2 left start rc
    shift 2
    [[ " $STEPS " == *" $name "* ]] || return 0
    left=$(( DEADLINE - $(date +%s) ))
    if (( left < 15 )); then echo "$name: skipped, ${left}s left"; return 0; fi
    (( limit > left )) && limit=$left
    start=$(date +%s)
    timeout -k 10 "$limit" "$@" >"$LOGS/$name.log" 2>&1
    rc=$?
    echo "$name: exit $rc after $(( $(date +%s) - start ))s (limit ${limit}s)"
    tail -n 4 "$LOGS/$name.log" | cut -c1-300
    eval "${AFTER_STEP:-true}"
}

# the benchmarks' CT-like scans, written in the background while the CUDA tests run
"$PYTHON" -c "import sys; from pathlib import Path; sys.path.insert(0, '.'); from benchmarks.training_benchmark import write_dataset; write_dataset(Path('$DATA'))" \
    >"$LOGS/dataset.log" 2>&1 &
dataset=$!

step environment 30 bash -c "nvidia-smi; $PYTHON -c 'import torch, monai, lightning; print(torch.__version__, torch.version.cuda, torch.backends.cudnn.version(), torch.cuda.get_device_name(), monai.__version__, lightning.__version__)'"
step cuda_tests 150 "$PYTHON" -m pytest -m cuda -v -p no:cacheprovider --ignore=tests/test_notebooks.py  # nbclient is a test extra
step memory_spleen 190 "$PYTHON" benchmarks/memory_benchmark.py --config configs/spleen_ct.yaml --precisions 32-true 16-mixed --gpu-memory-gib 8 --endurance-seconds 10 --out "$RESULTS/memory_cuda_spleen"
step precision 100 "$PYTHON" benchmarks/gpu_precision_benchmark.py --settings spleen --batch-sizes 2 16 --steps 15 --repeats 2 --out "$RESULTS/precision_cuda"
step precision_channels_last 100 "$PYTHON" benchmarks/gpu_precision_benchmark.py --settings spleen --batch-sizes 2 16 --modes fp32-tf32 16-mixed bf16-mixed --variants eager channels_last --steps 15 --repeats 1 --out "$RESULTS/precision_cuda_channels_last"
step precision_compile 150 "$PYTHON" benchmarks/gpu_precision_benchmark.py --settings spleen --batch-sizes 16 --modes fp32-tf32 16-mixed --variants eager compile --steps 15 --repeats 1 --out "$RESULTS/precision_cuda_compile"
wait "$dataset"
step training_spleen 170 "$PYTHON" benchmarks/training_benchmark.py --setting spleen --steps 30 --repeats ${TRAINING_REPEATS:-2} --data "$DATA" --output "$RESULTS/training_cuda_spleen${TRAINING_SUFFIX:-}"
step training_spleen_workers4 120 "$PYTHON" benchmarks/training_benchmark.py --setting spleen --steps 30 --repeats 1 --data "$DATA" --option data.num_workers=4 --output "$RESULTS/training_cuda_spleen_workers4"
step inference 120 "$PYTHON" benchmarks/inference_benchmark.py --device cuda --size 512 512 256 --repeats 2 --data "$DATA" --output "$RESULTS/inference_cuda${INFERENCE_SUFFIX:-}"
step training_spleen_gpu_augmentation 120 "$PYTHON" benchmarks/training_benchmark.py --setting spleen --steps 30 --repeats 1 --data "$DATA" --option data.augment_on_gpu=true --output "$RESULTS/training_cuda_spleen_gpu_augmentation"
step memory_demo 150 "$PYTHON" benchmarks/memory_benchmark.py --precisions 32-true 16-mixed --gpu-memory-gib 4 --endurance-seconds 8 --out "$RESULTS/memory_cuda_demo"
# one pytest per folder, so that each prints its failures' summary even if the step's time limit ends the last one
# (the notebook tests need nbclient, a test extra the GPU image lacks)
step suite 900 bash -c "for part in tests/memory tests/planning tests/inference tests/data tests/training tests/test_*.py; do
    [[ \$part == tests/test_notebooks.py ]] || $PYTHON -m pytest -q -p no:cacheprovider -rfE --tb=short \$part; done"
exit 0

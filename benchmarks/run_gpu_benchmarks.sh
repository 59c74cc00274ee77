#!/usr/bin/env bash
# Issue 19's GPU checks (and issue 35's presets) in one call on a CUDA machine, sized for about 9 minutes (BUDGET_S=540): the planning tests
# (the 13 fake-tensor plans at 16-mixed that failed on the H200 among them) and the CUDA tests of the planner, then
# the memory benchmark (steady-state planning, first-step autotuning peak beside it, 200 training steps at every
# planned batch within a time cap, Lightning's scale_batch_size(mode="binsearch") side by side) for spleen_ct.yaml,
# demo.yaml and a config planned by `python -m medseg.plan`, at 32-true, 16-mixed and bf16-mixed, under an 8 GiB
# per-process cap and spleen_ct.yaml once uncapped (the demo and planned configs uncapped are steps to name in STEPS when
# time allows); then the rest of the suite folder by folder with whatever time is left.
# Each step has its own time limit (cut to what is left of BUDGET_S) and a failing step does not stop the others.
# Results (JSON + Markdown) go to RESULTS ($OUT on the device machine, else benchmarks/results), each step's log to
# RESULTS/logs, as each step ends; AFTER_STEP runs after every step (say, to copy results off a machine).
#   bash benchmarks/run_gpu_benchmarks.sh                                  # on the device machine: results in $OUT
#   RESULTS=/tmp/gpu-results BUDGET_S=900 bash benchmarks/run_gpu_benchmarks.sh
#   STEPS="memory_demo_8gib suite" bash benchmarks/run_gpu_benchmarks.sh   # only these steps
#   DRY_RUN=1 bash benchmarks/run_gpu_benchmarks.sh                        # print each step's command, run nothing
# The H200 results of 2026-11-28 (benchmarks/results/*/*cuda*) came from an earlier version of this script (first-step
# peaks then); each result file names its command.
set -u
cd "$(dirname "$0")/.."
RESULTS=${RESULTS:-${OUT:-benchmarks/results}}
LOGS=$RESULTS/logs
PYTHON=${PYTHON:-python3}
DATA=${DATA:-/tmp/medseg-planning-benchmark}
STEPS=${STEPS:-"environment planning_tests presets memory_spleen_8gib memory_demo_8gib memory_planned_8gib memory_spleen_uncapped suite"}
DEADLINE=$(( $(date +%s) + ${BUDGET_S:-540} ))
MEMORY="$PYTHON -m benchmarks.memory --precisions 32-true 16-mixed bf16-mixed --endurance-steps 200"
[[ -n ${DRY_RUN:-} ]] || mkdir -p "$LOGS"
export PYTHONUNBUFFERED=1

step() {  # step NAME LIMIT_S COMMAND: run COMMAND (one string, through bash) if NAME is wanted and time is left
    local name=$1 limit=$2 command=$3 left start rc
    [[ " $STEPS " == *" $name "* ]] || return 0
    if [[ -n ${DRY_RUN:-} ]]; then echo "$name (limit ${limit}s): $command"; return 0; fi
    left=$(( DEADLINE - $(date +%s) ))
    if (( left < 15 )); then echo "$name: skipped, ${left}s left"; return 0; fi
    (( limit > left )) && limit=$left
    start=$(date +%s)
    timeout -k 10 "$limit" bash -c "$command" >"$LOGS/$name.log" 2>&1
    rc=$?
    echo "$name: exit $rc after $(( $(date +%s) - start ))s (limit ${limit}s)"
    tail -n 4 "$LOGS/$name.log" | cut -c1-300
    eval "${AFTER_STEP:-true}"
}

# CPU work in the background while the GPU tests run: CT-like scans, then their plan for an 8 GiB GPU (fake tensors)
PLANNED=$RESULTS/plan_ct_8gib
planning=""
if [[ -z ${DRY_RUN:-} && ( " $STEPS " == *" memory_planned_"* ) ]]; then
    { "$PYTHON" -c "from pathlib import Path; from medseg.testing import write_ct_phantoms; write_ct_phantoms(Path('$DATA'))" &&
      { "$PYTHON" -m medseg.plan --data.root "$DATA" --data.cache_dir "$RESULTS/cache" --capacity_gib 8 --precisions 32-true 16-mixed bf16-mixed --output "$PLANNED" ||
        # fake-tensor plans at 16-mixed failed on the H200 (torch 2.11): the fp32 plan still gives a config to benchmark
        "$PYTHON" -m medseg.plan --data.root "$DATA" --data.cache_dir "$RESULTS/cache" --capacity_gib 8 --precisions 32-true --output "$PLANNED"; }; } \
        >"$LOGS/plan_ct_8gib.log" 2>&1 &
    planning=$!
fi

step environment 15 "nvidia-smi; $PYTHON -c 'import torch, monai, lightning; print(torch.__version__, torch.version.cuda, torch.backends.cudnn.version(), torch.cuda.get_device_name(), torch.cuda.is_bf16_supported(), monai.__version__, lightning.__version__)'"
# every planning test (fake-tensor dataset plans at 16-mixed: 12 in test_dataset_plan.py, 1 in test_store.py failed on
# the H200) and the planner's CUDA tests in tests/training
step planning_tests 90 "$PYTHON -m pytest -q -p no:cacheprovider -rfE --tb=short tests/planning && $PYTHON -m pytest -m cuda -q -p no:cacheprovider -rfE --tb=short tests/training tests/inference"
# issue 35: nnU-Net's residual-encoder presets M, L, XL as medseg plans them (fake tensors), then trained for real: the
# measured steady-state peak beside the estimate and nnU-Net's 9.1 / 22.7 / 36.6 GB (a preset larger than the GPU: n/a)
step presets 120 "$PYTHON -m benchmarks.presets --output $RESULTS/presets/presets_cuda"
step memory_spleen_8gib 200 "$MEMORY --config configs/spleen_ct.yaml --gpu-memory-gib 8 --endurance-seconds 6 --output $RESULTS/memory/memory_cuda_spleen_steady"
step memory_demo_8gib 80 "$MEMORY --config configs/demo.yaml --gpu-memory-gib 8 --endurance-seconds 4 --output $RESULTS/memory/memory_cuda_demo_steady"
[[ -n $planning ]] && wait "$planning"
step memory_planned_8gib 90 "$MEMORY --config $PLANNED/plan.yaml --gpu-memory-gib 8 --endurance-seconds 4 --no-tuner --output $RESULTS/memory/memory_cuda_planned_steady"
step memory_spleen_uncapped 60 "$MEMORY --config configs/spleen_ct.yaml --endurance-seconds 3 --no-tuner --output $RESULTS/memory/memory_cuda_spleen_uncapped_steady"
step memory_demo_uncapped 45 "$MEMORY --config configs/demo.yaml --endurance-seconds 3 --no-tuner --output $RESULTS/memory/memory_cuda_demo_uncapped_steady"
step memory_planned_uncapped 45 "$MEMORY --config $PLANNED/plan.yaml --endurance-seconds 3 --no-tuner --output $RESULTS/memory/memory_cuda_planned_uncapped_steady"
# issue 23's fit-loop checks (name them in STEPS): the tutorial's 8 patches per step and 4, compiled as the GPU default;
# the loop's host time a step; AMP against TF32, eager, compiled and channels-last + compiled
step fit_spleen_8_patches 150 "$PYTHON -m benchmarks.training --setting spleen --steps 30 --output $RESULTS/training/training_cuda_spleen_8_patches"
step fit_spleen_4_patches 150 "$PYTHON -m benchmarks.training --setting spleen --samples 2 --steps 30 --output $RESULTS/training/training_cuda_spleen_4_patches"
# the fit loop's host time a step, piece by piece, beside the bare step: what a compiled GPU step cannot hide
step loop_overhead 90 "$PYTHON -m benchmarks.loop_overhead --device cuda --steps 200 --repeats 2 --output $RESULTS/loop_overhead/loop_overhead_cuda"
step precision_spleen_variants 240 "$PYTHON -m benchmarks.gpu_precision --settings spleen --batch-sizes 2 16 --modes fp32-tf32 16-mixed --variants eager compile channels_last+compile --steps 15 --output $RESULTS/gpu_precision/precision_cuda_variants"
# one pytest per folder, so that each prints its failures' summary even if the step's time limit ends the last one
# (the notebook tests need nbclient, a test extra the GPU image may lack)
step suite 900 "for part in tests/training tests/inference tests/data tests/test_*.py; do
    [[ \$part == tests/test_notebooks.py ]] || $PYTHON -m pytest -q -p no:cacheprovider -rfE --tb=short \$part; done"
exit 0

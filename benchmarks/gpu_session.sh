#!/usr/bin/env bash
# Issue 6's GPU measurements, in parts that each fit one device call of at most 10 minutes
# (README, "Performance", GPU runbook). Runs from the repository root, without installing the
# package (PYTHONPATH=.), on a machine that already has JAX with CUDA, flax, optax and PyTorch.
#
#   bash benchmarks/gpu_session.sh steps            # train steps vs PyTorch CUDA (float32, bf16)
#   bash benchmarks/gpu_session.sh more             # true float32, memory, profile of MNIST
#   bash benchmarks/gpu_session.sh sweep [DATA_DIR] # MNIST Table-1 sweep: one class, 10 seeds
#   bash benchmarks/gpu_session.sh sweep-width1 [DATA_DIR]  # the same, seeds not vmapped
#
# Results go to $OUT (default runs/gpu): *.log as printed, *.json machine-readable.
# QUICK=1 shrinks every run to seconds (to check the script on a CPU machine).
set -euo pipefail

part=${1:?"usage: gpu_session.sh steps|more|sweep|sweep-width1 [DATA_DIR]"}
data=${2:-.devicedata/mnist}
out=${OUT:-runs/gpu}
py=${PYTHON:-python3}
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

if [[ ${QUICK:-0} == 1 ]]; then
    step_args=(--models arrhythmia --batches 64 --steps 2 --repeats 1 --warmup 1 --min-round-s 0)
    high_args=(--models arrhythmia --batches 64 --steps 2 --repeats 1 --warmup 1 --min-round-s 0)
    profile_args=(--model arrhythmia --calls 1 --scan 2)
    memory_models=(arrhythmia)
    sweep_args=(--classes 0 --seeds 2 --steps 20 --batch-size 64 --val-limit 100 --test-limit 100)
else
    step_args=(--models mnist cifar10 arrhythmia --batches paper 64 --steps 20 --repeats 3)
    high_args=(--models mnist cifar10 --batches paper --steps 10 --repeats 3 --scan 1)
    profile_args=(--model mnist --calls 2 --scan 5)
    memory_models=(mnist fmnist cifar10 cifar100 arrhythmia)
    # One class of Table 1 at 400 of its 2000 steps: the protocol's cost is linear in steps
    # (a lax.scan), and bench_sweep extrapolates to 10 classes × 2000 steps.
    sweep_args=(--classes 0 --seeds 10 --steps 400)
fi

failed=()
run() {  # run NAME CMD...: print the command, log its output to $out/NAME.log; a failure is
    # reported at the end and does not stop the other measurements of the part
    local name=$1; shift
    echo "== $name: $*" | tee "$out/$name.log"
    "$@" 2>&1 | tee -a "$out/$name.log" || failed+=("$name")
}

# JAX and PyTorch share the GPU in one process: allocate on demand, not 75 % up front.
export XLA_PYTHON_CLIENT_PREALLOCATE=false
case "$part" in
steps)
    (nvidia-smi || echo "no nvidia-smi") > "$out/nvidia-smi.txt" 2>&1
    "$py" -c "import jax, torch; print(jax.__version__, jax.devices(), torch.__version__, \
torch.cuda.is_available())" 2>&1 | tee "$out/versions.txt"
    run train_step "$py" benchmarks/bench_train_step.py "${step_args[@]}" \
        --dtype float32,bfloat16 --json "$out/train_step.json"
    ;;
more)
    run train_step_highest "$py" benchmarks/bench_train_step.py "${high_args[@]}" \
        --precision highest --json "$out/train_step_highest.json"
    run memory "$py" benchmarks/memory.py --models "${memory_models[@]}" --conv plain \
        --json "$out/memory.json"
    run profile "$py" benchmarks/profile_step.py "${profile_args[@]}" --json "$out/profile.json"
    ;;
sweep)
    unset XLA_PYTHON_CLIENT_PREALLOCATE  # JAX alone: its default (75 % of the GPU)
    run sweep_float32 "$py" benchmarks/bench_sweep.py --dataset mnist --data-dir "$data" \
        "${sweep_args[@]}" --json "$out/sweep_float32.json"
    run sweep_bfloat16 "$py" benchmarks/bench_sweep.py --dataset mnist --data-dir "$data" \
        "${sweep_args[@]}" --dtype bfloat16 --json "$out/sweep_bfloat16.json"
    ;;
sweep-width1)
    # Seeds one at a time instead of vmapped: vmapping a convolution over seeds makes it a
    # grouped convolution (one group per seed), whose cuDNN kernels may be slower.
    unset XLA_PYTHON_CLIENT_PREALLOCATE
    run sweep_float32_width1 "$py" benchmarks/bench_sweep.py --dataset mnist --data-dir "$data" \
        "${sweep_args[@]}" --json "$out/sweep_float32_width1.json" -- --vmap-width 1
    ;;
*)
    echo "unknown part '$part': choose steps, more, sweep or sweep-width1" >&2
    exit 2
    ;;
esac
if ((${#failed[@]})); then
    echo "failed: ${failed[*]} (see their logs in $out)" >&2
    exit 1
fi

#!/usr/bin/env bash
# Issue 6's GPU measurements, in parts that each fit one device call of at most 10 minutes
# (README, "Performance", "GPU: measured on one H200"). Runs from the repository root,
# without installing the package (PYTHONPATH=.), on a machine that already has JAX with CUDA,
# flax, optax and PyTorch. Parts, most important first:
#
#   bash benchmarks/gpu_session.sh sweep [DATA_DIR]  # MNIST Table-1 protocol: class 0, 10 seeds
#   bash benchmarks/gpu_session.sh phases [DATA_DIR] # the sweep and steps, strided transposed
#                                                    # convolutions split into phases
#   bash benchmarks/gpu_session.sh sweep-vmapped [DATA_DIR] # the sweep, seeds vmapped
#   bash benchmarks/gpu_session.sh more              # profiles, memory, true float32 step
#   bash benchmarks/gpu_session.sh steps             # MNIST train step vs PyTorch CUDA, MFU
#   bash benchmarks/gpu_session.sh steps-small       # CIFAR-10 and Arrhythmia train steps
#   bash benchmarks/gpu_session.sh impls             # XLA's plain layers vs the GEMM fast path
#
# Results go to $OUT (default runs/gpu): *.log as printed, *.json machine-readable (bundled in
# $OUT/PART.tar.gz where a part alone writes more than MAX_FILES, default 8). DATA_DIR
# (default .devicedata/mnist) is read by the parts that run sweeps only (sweep, phases,
# sweep-vmapped); the other parts take none.
# A part alone also keeps to BUDGET_S (below): a run's limit is cut to what is left of it, and
# a run with less than 10 s left is not started (reported as failed).
#
#   bash benchmarks/gpu_session.sh all [FIRST_PART] [DATA_DIR]
#
# runs the parts in that order, from FIRST_PART (default: the first), as many as fit in one
# call: BUDGET_S seconds in all (default 540, for the device tool's 600 s limit). A run's own
# limit is cut to what is left; no part starts with less than MIN_PART_S seconds left
# (default 60), and the command to go on from there is printed. The files go to
# $OUT/gpu_results.tar.gz, one folder per part, rewritten after every part (a call cut short
# still returns the parts it finished), and $OUT/summary.txt says of each part: done, its
# failed runs, or not run.
#
# QUICK=1 shrinks every run to seconds (to check the script on a CPU machine).
set -euo pipefail

part_list=(sweep phases sweep-vmapped more steps steps-small impls)
parts=$(IFS='|'; echo "${part_list[*]}")
usage="usage: gpu_session.sh {sweep|phases|sweep-vmapped} [DATA_DIR] | gpu_session.sh \
{steps|more|steps-small|impls} | gpu_session.sh all [FIRST_PART] [DATA_DIR]"
if (($# == 0)); then
    echo "$usage" >&2
    exit 2
fi
if [[ $1 == -h || $1 == --help ]]; then
    echo "$usage"
    exit 0
fi
part=$1
first=${part_list[0]}
if [[ $part == all && $# -ge 2 && " ${part_list[*]} " == *" $2 "* ]]; then
    first=$2; shift
elif [[ $part == all && $# -ge 2 && ! -d $2 ]]; then
    echo "all: '$2' is neither a part ($parts) nor a data folder" >&2
    exit 2
fi
if [[ $part != all && " ${part_list[*]} " != *" $part "* ]]; then
    echo "unknown part '$part': choose one of $parts or all" >&2
    exit 2
fi
# $2 is now DATA_DIR, if given: for `all` and the sweep parts only, and then a folder.
if (($# > 2)); then
    echo "unexpected argument(s) after '$part ${2}': ${*:3}" >&2
    echo "$usage" >&2
    exit 2
elif (($# == 2)); then
    if [[ $part != all && $part != sweep && $part != phases && $part != sweep-vmapped ]]; then
        echo "$part takes no DATA_DIR (only the sweep parts read data), got '$2'" >&2
        echo "$usage" >&2
        exit 2
    elif [[ ! -d $2 ]]; then
        echo "DATA_DIR '$2' is not a folder" >&2
        exit 2
    fi
fi
for knob in BUDGET_S MIN_PART_S MAX_FILES; do
    if [[ -n ${!knob:-} && ! ${!knob} =~ ^[0-9]+$ ]]; then
        echo "$knob must be a whole number of seconds or files, got '${!knob}'" >&2
        exit 2
    fi
done
data=${2:-.devicedata/mnist}
out=${OUT:-runs/gpu}
py=${PYTHON:-python3}
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

if [[ ${QUICK:-0} == 1 ]]; then
    short=(--batches 64 --steps 2 --repeats 1 --warmup 1 --min-round-s 0)
    mnist_steps=(--models arrhythmia "${short[@]}")
    small_steps=(--models arrhythmia "${short[@]}")
    high_steps=(--models arrhythmia "${short[@]}" --scan 1)
    impl_steps=(--models cifar10 "${short[@]}" --scan 1)
    phase_steps=(--models cifar10 "${short[@]}" --scan 2)
    profile_args=(--model arrhythmia --calls 1 --scan 2)
    memory_models=(arrhythmia)
    sweep_seeds=2
    # batch 8: the phases part runs XLA:CPU's stride-1 transposed convolutions (1.1 s per MNIST
    # step at batch 8 on 2 cores; at batch 64 its QUICK sweeps did not end within 280 s)
    sweep_args=(--classes 0 --seeds 2 --steps 20 --batch-size 8 --val-limit 100 --test-limit 100)
else
    mnist_steps=(--models mnist --batches paper 64 --steps 20 --repeats 3)
    small_steps=(--models cifar10 arrhythmia --batches paper 64 --steps 20 --repeats 3)
    high_steps=(--models mnist --batches paper --steps 10 --repeats 3 --scan 1)
    impl_steps=(--models mnist cifar10 --batches paper --steps 10 --repeats 3 --scan 1)
    phase_steps=(--models mnist cifar10 --batches paper --steps 10 --repeats 3 --scan 5)
    profile_args=(--model mnist --calls 2 --scan 5)
    memory_models=(mnist fmnist cifar10 cifar100 arrhythmia)
    # One class of Table 1 at 200 of its 2000 steps (10 checkpoints): the protocol's cost is
    # linear in steps (a lax.scan), and bench_sweep extrapolates to 10 classes × 2000 steps.
    sweep_seeds=10
    sweep_args=(--classes 0 --seeds $sweep_seeds --steps 200)
fi

# Each run gets at most $limit seconds (set per part below), so that one slow run cannot
# take the whole 10-minute call and the part's other runs with it; timeout(1) signals the
# run's whole process group (the CLI that bench_sweep starts too).
# Every run is also cut to what is left of the call's budget, BUDGET_S seconds from the start
# ($deadline, in bash's SECONDS), in `all` mode and for a part alone.
limit=560
deadline=$((SECONDS + ${BUDGET_S:-540}))
budget_left() {  # seconds left of the call's budget, never below 0 (SECONDS can tick past the
    # deadline between two reads)
    local left=$((deadline - SECONDS))
    echo $((left > 0 ? left : 0))
}
failed=()
run() {  # run NAME CMD...: print the command, log its output to $out/NAME.log; a failure or
    # timeout is reported at the end and does not stop the other measurements of the part
    local name=$1; shift
    local cap=$limit
    local left
    left=$(budget_left)
    ((left < cap)) && cap=$left
    if ((cap < 10)); then
        echo "== $name: not run, the call's budget is spent" | tee "$out/$name.log"
        failed+=("$name")
        return
    fi
    echo "== $name (at most ${cap} s): $*" | tee "$out/$name.log"
    timeout -k 10 "$cap" "$@" 2>&1 | tee -a "$out/$name.log" || failed+=("$name")
}

sweep() {  # sweep NAME [bench_sweep flags...]
    local name=$1; shift
    run "$name" "$py" benchmarks/bench_sweep.py --dataset mnist --data-dir "$data" \
        "${sweep_args[@]}" --json "$out/$name.json" "$@"
}

environment() {  # the GPU and the library versions, into $out
    (nvidia-smi || echo "no nvidia-smi") > "$out/nvidia-smi.txt" 2>&1
    "$py" -c "import jax, torch; print('jax', jax.__version__, jax.devices(), 'torch', \
torch.__version__, 'cuda', torch.cuda.is_available())" > "$out/versions.txt" 2>&1 || true
}

run_part() {  # run_part PART: that part's runs, files to $out
    case "$1" in
    sweep)  # JAX alone on the GPU: its default memory preallocation (75 %); the CLI's
        # default vmap width (on GPUs, the image models' seeds one at a time)
        limit=280
        sweep sweep_float32
        sweep sweep_bfloat16 --dtype bfloat16
        ;;
    phases)  # tolljax.ops.conv_transpose_phases: XLA's GPU compiler runs flax's strided
        # transposed convolution (forward and kernel gradient) over the zero-dilated input;
        # the phase split makes them stride-1 convolutions. The same sweeps and the train
        # steps against XLA's plain layers (auto), both dtypes.
        limit=280
        TOLLJAX_CONV_TRANSPOSE=phases sweep sweep_float32_phases
        TOLLJAX_CONV_TRANSPOSE=phases sweep sweep_bfloat16_phases --dtype bfloat16
        limit=560
        XLA_PYTHON_CLIENT_PREALLOCATE=false run train_step_phases "$py" \
            benchmarks/bench_train_step.py "${phase_steps[@]}" --conv-transpose auto,phases \
            --dtype float32,bfloat16 --json "$out/train_step_phases.json"
        ;;
    sweep-vmapped)
        limit=280
        # All seeds vmapped in one program, the default off GPUs. On GPUs the CLI's default
        # (part sweep) runs the image models' seeds one at a time: vmapped over seeds, each
        # convolution becomes a grouped convolution (one group per seed), and cuDNN's grouped
        # kernels were slower (H200: 84.1 s against 54.6 s of run time in float32).
        sweep sweep_float32_vmapped -- --vmap-width "$sweep_seeds"
        sweep sweep_bfloat16_vmapped --dtype bfloat16 -- --vmap-width "$sweep_seeds"
        ;;
    steps | steps-small | more | impls)
        # JAX and PyTorch share the GPU in one process: allocate on demand, not 75 % up front.
        export XLA_PYTHON_CLIENT_PREALLOCATE=false
        case "$1" in
        steps)
            run train_step "$py" benchmarks/bench_train_step.py "${mnist_steps[@]}" \
                --dtype float32,bfloat16 --json "$out/train_step.json"
            ;;
        steps-small)
            run train_step_small "$py" benchmarks/bench_train_step.py "${small_steps[@]}" \
                --dtype float32,bfloat16 --json "$out/train_step_small.json"
            ;;
        impls)  # issue 6: keep XLA's plain layers where they are fastest; on GPUs, measure that
            run train_step_impls "$py" benchmarks/bench_train_step.py "${impl_steps[@]}" \
                --conv-transpose auto,fast --conv auto,fast --json "$out/train_step_impls.json"
            ;;
        more)
            limit=180
            run profile "$py" benchmarks/profile_step.py "${profile_args[@]}" \
                --json "$out/profile.json"
            run profile_bfloat16 "$py" benchmarks/profile_step.py "${profile_args[@]}" \
                --dtype bfloat16 --json "$out/profile_bfloat16.json"
            run memory "$py" benchmarks/memory.py --models "${memory_models[@]}" --conv plain \
                --json "$out/memory.json"
            run train_step_highest "$py" benchmarks/bench_train_step.py "${high_steps[@]}" \
                --precision highest --json "$out/train_step_highest.json"
            ;;
        esac
        ;;
    esac
}

if [[ $part != all ]]; then
    # The device tool returns at most 8 files from $OUT: a part that writes more (`more`: 4
    # runs × log + JSON and the 2 environment files) has them bundled in $out/PART.tar.gz at
    # the end. They are written loose until then, so a call cut short still returns 8.
    marker=$(mktemp)
    environment
    run_part "$part"
    mapfile -t written < <(find "$out" -maxdepth 1 -type f -newer "$marker" -printf '%f\n' | sort)
    rm -f "$marker"
    if ((${#written[@]} > ${MAX_FILES:-8})); then
        tar -czf "$out/$part.tar.gz" -C "$out" "${written[@]}"
        (cd "$out" && rm -f "${written[@]}")
        echo "$part wrote ${#written[@]} files, more than the ${MAX_FILES:-8} a device call" \
             "returns: bundled in $out/$part.tar.gz"
    fi
    if ((${#failed[@]})); then
        echo "failed: ${failed[*]} (see their logs in $out)" >&2
        exit 1
    fi
    exit 0
fi

# all: the parts in order, each in a subshell (a part's exports stay its own) writing to its
# own folder of a staging directory, bundled into $out after every part.
stage=$(mktemp -d)
final=$out
out=$stage
environment
summary=$final/summary.txt
: > "$summary"
started=0 status=0
for p in "${part_list[@]}"; do
    [[ $p == "$first" ]] && started=1
    ((started)) || continue
    left=$(budget_left)
    if ((left < ${MIN_PART_S:-60})); then
        echo "$p and the parts after it: not run, $left s of the budget" \
             "left; go on with: bash benchmarks/gpu_session.sh all $p" | tee -a "$summary"
        status=1
        break
    fi
    echo "#### part $p ($left s of the budget left)"
    mkdir -p "$stage/$p"
    rc=0
    (
        out=$stage/$p
        run_part "$p"
        ((${#failed[@]} == 0)) || { echo "${failed[*]}" > "$out/FAILED"; exit 1; }
    ) || rc=$?
    if ((rc)); then
        echo "$p: failed runs: $(cat "$stage/$p/FAILED" 2>/dev/null || echo "exit $rc")" \
             "(again alone: bash benchmarks/gpu_session.sh $p)" | tee -a "$summary"
        status=1
    else
        echo "$p: done" | tee -a "$summary"
    fi
    tar -czf "$final/gpu_results.tar.gz.tmp" -C "$stage" .
    mv "$final/gpu_results.tar.gz.tmp" "$final/gpu_results.tar.gz"
done
rm -rf "$stage"
exit $status

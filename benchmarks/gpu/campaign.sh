#!/usr/bin/env bash
# Issue 14's GPU campaign, on the device machine, from the repository root. Steps run in the order given:
#
#   bash benchmarks/gpu/campaign.sh stage bench                               # call 1: encoders, wheels, item 1
#   bash benchmarks/gpu/campaign.sh unpack data1                              # call 2: training data
#   bash benchmarks/gpu/campaign.sh unpack data2 launch wait 420 collect      # call 3: validation data, every run
#   bash benchmarks/gpu/campaign.sh wait 200 collect                          # call 4, if runs were left
# (benchmarks/gpu/README.md has the device calls with their carry lists and time limits.)
#
#   stage    unpack enc (below) and install its wheels into $STAGE/site (pip --no-index --no-deps --target)
#   unpack NAME   unpack .device/gpu/NAME/NAME.tgz (stage.sh built it) into $STAGE and check its sha256 sums
#   bench    benchmarks/train_throughput.py --device cuda: eager bf16 and the fast path (first mode of
#            $COMPILE_MODES that works); JSON lines to $OUT/throughput.json
#   launch   start every run of $RUNS with setsid nohup (they outlive the call, not the machine)
#   wait N   print progress (poll.sh) every $POLL_EVERY s until every run has ended or N seconds have passed
#   poll     print progress once
#   collect  pack finished runs (weights without the frozen text encoder, 16-bit) into $OUT (collect.py)
#
# The runs (names end in -seedN; benchmarks/ablation_table.py groups seeds):
#   tmca-seed1..3       the released configuration (/work/runs/launch.sh): alignment_weight 0.1,
#                       cross_attention_init 1.0, alignment_position, text_dropout 0.2
#   baseline-seed1..3   no alignment, no LTE (--alignment_levels none --no_target_enhancement), cross_attention_init
#                       1.0 and the same text_dropout 0.2, so it differs from tmca by the alignment alone and can be
#                       scored without a report too
#   joint-seed1         the released configuration on QaTa-COV19 train + Kvasir-SEG train (medvlsm prompt p6)
#   lite2-seed1         the released configuration on EfficientNet-Lite2 (item 4)
#   check-eager-seed1, check-fast-seed1   the released configuration for $CHECK_EPOCHS epochs, eager and fast: item 1's
#                       "same validation Dice as eager within 0.3 on a short run" (their train_log.jsonl, in status.json)
# All: 25 epochs, bf16, batch 32; training images as JPEG q80 copies, the full validation split as the original files
# (per-epoch selection and the final evaluation at original sizes with the own, a shuffled and no report).
set -euo pipefail
cd "$(dirname "$0")/../.."
STAGE=${STAGE:-/tmp/tmca14}
PY=${PY:-python3}
OUT=${OUT:-$STAGE/out}
EPOCHS=${EPOCHS:-25}
RUNS=${RUNS:-joint-seed1 tmca-seed1 tmca-seed2 tmca-seed3 baseline-seed1 baseline-seed2 baseline-seed3 check-eager-seed1 check-fast-seed1}  # collect brings them back in this order
CHECK_EPOCHS=${CHECK_EPOCHS:-3}
COMPILE_MODES=${COMPILE_MODES:-reduce-overhead default}  # bench tries them in order; the runs use the first that works
FAST=${FAST:-auto}                       # 1: --torch_compile + --fused_adamw; 0: eager; auto: 1 if bench's fast row ran
FINAL_MODES=${FINAL_MODES:-report shuffled empty}  # train.py's final evaluation, on the original validation files
BENCH_STEPS=${BENCH_STEPS:-100}
BENCH_WARMUP=${BENCH_WARMUP:-10}
BENCH_DEVICE=${BENCH_DEVICE:-cuda}       # cpu for the rehearsal (the fast row is then skipped, with the reason)
BENCH_DATASET=${BENCH_DATASET:-samples/qata_cov19}
POLL_EVERY=${POLL_EVERY:-30}
TRAIN_OPTIONS=${TRAIN_OPTIONS:-}         # extra train.py options for every run (e.g. --max_train_steps 2 on a CPU)
ACCELERATE_CPU=${ACCELERATE_CPU:-0}      # 1: train on the CPU (the tiny CPU rehearsal)
SKIP_WHEELS=${SKIP_WHEELS:-0}            # 1: the rehearsal's Python already has the wheels' packages
mkdir -p "$STAGE" "$OUT"
export PYTHONPATH="$STAGE/site:$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error \
       HF_DATASETS_DISABLE_PROGRESS_BARS=1 HF_HUB_DISABLE_PROGRESS_BARS=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
ENC=$STAGE/enc DATA=$STAGE/data RUNS_DIR=$STAGE/runs
RELEASE=(--alignment_weight 0.1 --cross_attention_init 1.0 --alignment_position --text_dropout 0.2)
BASELINE=(--alignment_levels none --no_target_enhancement --cross_attention_init 1.0 --text_dropout 0.2)

run_flags() {  # name -> train.py flags
    local name=$1 seed=${1##*-seed}
    local qata=(--dataset "$DATA/qata_cov19")
    local common=(--text_encoder "$ENC/minilm-fp16" --num_train_epochs "$EPOCHS" --mixed_precision bf16 --per_device_train_batch_size 32
                  --per_device_eval_batch_size 64 --preprocessing_num_workers 2 --checkpointing_steps none
                  --seed "$seed" --output_dir "$RUNS_DIR/$name" --final_eval_text_modes $FINAL_MODES)
    local fast=$FAST mode=${COMPILE_MODE:-$(cat "$STAGE/fast_ok" 2>/dev/null || echo "${COMPILE_MODES%% *}")}
    [ "$fast" = auto ] && { [ -e "$STAGE/fast_ok" ] && fast=1 || fast=0; }
    case ${name%-seed*} in check-eager) fast=0 ;; check-fast) fast=1 ;; esac
    [ "$fast" = 1 ] && common+=(--torch_compile "$mode" --fused_adamw)
    case ${name%-seed*} in
        tmca) echo "${common[@]}" "${qata[@]}" --image_encoder "$ENC/lite0-fp16" "${RELEASE[@]}" ;;
        baseline) echo "${common[@]}" "${qata[@]}" --image_encoder "$ENC/lite0-fp16" "${BASELINE[@]}" ;;
        joint) echo "${common[@]}" --dataset "$DATA/qata_cov19" "$DATA/kvasir_seg" --prompt_key p6 \
                    --image_encoder "$ENC/lite0-fp16" "${RELEASE[@]}" ;;
        lite2) echo "${common[@]}" "${qata[@]}" --image_encoder "$ENC/lite2-fp16" "${RELEASE[@]}" ;;
        check-eager|check-fast) echo "${common[@]}" "${qata[@]}" --image_encoder "$ENC/lite0-fp16" "${RELEASE[@]}" \
                                     --num_train_epochs "$CHECK_EPOCHS" ;;
        *) echo "unknown run $name" >&2; return 1 ;;
    esac
}

step_unpack() {
    local started=$SECONDS
    tar -xzf ".device/gpu/$1/$1.tgz" -C "$STAGE"
    (cd "$STAGE" && sha256sum -c --quiet "$1.sha256")
    echo "unpack $1: $((SECONDS - started)) s"
}

step_stage() {
    local started=$SECONDS
    step_unpack enc
    [ "$SKIP_WHEELS" = 1 ] || "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$STAGE/site" "$STAGE"/wheels/*.whl
    "$PY" - <<'EOF'
import importlib.metadata as m, torch, transformers
import datasets, monai, tmca_hf  # noqa: F401  (what train.py needs beyond the image)
names = ["torch", "transformers", "accelerate", "datasets", "monai", "pyarrow", "fsspec", "huggingface-hub", "triton"]
def version(name):
    try:
        return m.version(name)
    except m.PackageNotFoundError:
        return None
print("versions:", {name: version(name) for name in names})
print("device:", torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA")
EOF
    echo "stage: $((SECONDS - started)) s"
}

step_bench() {
    # Eager bf16 and the fast path in the first mode of $COMPILE_MODES; if that fast row fails, the fast path alone in
    # the next mode, and so on (all of them with BENCH_ALL_MODES=1). The runs then use the first mode that worked
    # ($STAGE/fast_ok holds it), or the eager path if none did.
    local started=$SECONDS rows="bf16 fast" mode
    rm -f "$STAGE/fast_ok"
    for mode in $COMPILE_MODES; do
        "$PY" benchmarks/train_throughput.py --device "$BENCH_DEVICE" --dataset "$BENCH_DATASET" --rows $rows \
            --release_config --compile_mode "$mode" --text_encoder "$ENC/minilm-fp16" --image_encoder "$ENC/lite0-fp16" \
            --steps "$BENCH_STEPS" --warmup_steps "$BENCH_WARMUP" --num_workers 8 \
            --output_json "$OUT/throughput-$mode.json" 2>"$STAGE/bench-$mode.err" \
            || { tail -30 "$STAGE/bench-$mode.err"; cp "$STAGE/bench-$mode.err" "$OUT/"; }
        grep -i "skipping cudagraphs\|recompil" "$STAGE/bench-$mode.err" | sort | uniq -c | head -5 || true
        if grep -q fast_images_per_second "$OUT/throughput-$mode.json" 2>/dev/null; then
            [ -e "$STAGE/fast_ok" ] || echo "$mode" >"$STAGE/fast_ok"
            [ "${BENCH_ALL_MODES:-0}" = 1 ] || break
        fi
        grep -q fast_skipped "$OUT/throughput-$mode.json" 2>/dev/null && break  # a CPU: no fast path to try
        rows=fast
    done
    cat "$OUT"/throughput-*.json >"$OUT/throughput.json" 2>/dev/null || true
    rm -f "$OUT"/throughput-*.json
    echo "bench: $((SECONDS - started)) s; the runs' fast path: $(cat "$STAGE/fast_ok" 2>/dev/null || echo 'none (eager)')"
}

step_launch() {
    mkdir -p "$RUNS_DIR"
    local name launcher=()
    [ "$ACCELERATE_CPU" = 1 ] && launcher=(-m accelerate.commands.launch --cpu --num_processes 1 --num_machines 1
                                           --mixed_precision bf16 --dynamo_backend no)
    for name in $RUNS; do
        if [ -e "$RUNS_DIR/$name.pid" ] && kill -0 "$(cat "$RUNS_DIR/$name.pid")" 2>/dev/null; then
            echo "launch: $name is running already"; continue
        fi
        if [ -e "$RUNS_DIR/$name/eval_results.json" ]; then echo "launch: $name has finished already"; continue; fi
        if [ "${name%-seed*}" = check-fast ] && [ "$FAST" != 1 ] && [ ! -e "$STAGE/fast_ok" ]; then
            echo "launch: $name left out: the fast path did not run in bench"; continue
        fi
        # shellcheck disable=SC2046
        OMP_NUM_THREADS=1 TORCHINDUCTOR_COMPILE_THREADS=4 setsid nohup "$PY" "${launcher[@]}" train.py \
            $(run_flags "$name") $TRAIN_OPTIONS >"$RUNS_DIR/$name.log" 2>&1 </dev/null &
        echo $! >"$RUNS_DIR/$name.pid"
        echo "launch: $name (pid $!)"
    done
    date +%s >"$RUNS_DIR/launched_at"
}

running() {  # how many of $RUNS still run
    local name count=0
    for name in $RUNS; do
        [ -e "$RUNS_DIR/$name.pid" ] && kill -0 "$(cat "$RUNS_DIR/$name.pid")" 2>/dev/null && count=$((count + 1))
    done
    echo $count
}

step_wait() {
    local deadline=$((SECONDS + $1))
    while [ "$(running)" -gt 0 ] && [ $SECONDS -lt $deadline ]; do
        sleep "$(( POLL_EVERY < deadline - SECONDS ? POLL_EVERY : (deadline - SECONDS > 0 ? deadline - SECONDS : 1) ))"
        STAGE=$STAGE RUNS="$RUNS" EPOCHS=$EPOCHS bash benchmarks/gpu/poll.sh
    done
    echo "wait: $(running) of $(echo $RUNS | wc -w) runs still running"
}

while [ $# -gt 0 ]; do
    case $1 in
        stage) step_stage ;;
        bench) step_bench ;;
        unpack) step_unpack "$2"; shift ;;
        launch) step_launch ;;
        wait) step_wait "$2"; shift ;;
        poll) STAGE=$STAGE RUNS="$RUNS" EPOCHS=$EPOCHS bash benchmarks/gpu/poll.sh ;;
        collect) "$PY" benchmarks/gpu/collect.py "$RUNS_DIR" "$OUT" --runs $RUNS ;;
        *) echo "unknown step $1" >&2; exit 2 ;;
    esac
    shift
done

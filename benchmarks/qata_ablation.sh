#!/usr/bin/env bash
# The QaTa-COV19 ablation of the README and the model card: every row x seeds 1-3, all at once on one GPU, then the
# release candidate (the position-aware TMCA with text dropout). Summarise with benchmarks/ablation_table.py.
#
#   bash benchmarks/qata_ablation.sh DATASET TEXT_ENCODER OUT_DIR [EPOCHS]
set -euo pipefail
dataset=$1 text_encoder=$2 out=$3 epochs=${4:-20}
common=(--dataset "$dataset" --text_encoder "$text_encoder" --num_train_epochs "$epochs" --mixed_precision bf16
        --per_device_train_batch_size 32 --per_device_eval_batch_size 64 --preprocessing_num_workers 2
        --checkpointing_steps none --final_eval_text_modes report)
declare -A rows=(
    [baseline]="--alignment_levels none --no_target_enhancement --cross_attention_init 1.0"
    [tmca]="--alignment_weight 0.1 --cross_attention_init 1.0"
    [tmca-position]="--alignment_weight 0.1 --cross_attention_init 1.0 --alignment_position"
)
mkdir -p "$out"
launch() {  # name, then train.py flags
    local name=$1; shift
    OMP_NUM_THREADS=1 setsid nohup python3 train.py "${common[@]}" "$@" --output_dir "$out/$name" >"$out/$name.log" 2>&1 &
}
for row in "${!rows[@]}"; do
    for seed in 1 2 3; do
        # shellcheck disable=SC2086
        launch "$row-seed$seed" ${rows[$row]} --seed "$seed"
    done
done
launch release-tmca-position-textdrop --alignment_weight 0.1 --cross_attention_init 1.0 --alignment_position \
    --text_dropout 0.2 --seed 1 --final_eval_text_modes report shuffled empty

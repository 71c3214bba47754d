#!/usr/bin/env bash
# One line per run of the GPU campaign, and one for the GPU: `bash benchmarks/gpu/poll.sh` (campaign.sh's poll and
# wait steps call it). STAGE and RUNS as campaign.sh's.
STAGE=${STAGE:-/tmp/tmca14}
RUNS=${RUNS:-joint-seed1 tmca-seed1 tmca-seed2 tmca-seed3 baseline-seed1 baseline-seed2 baseline-seed3 check-eager-seed1 check-fast-seed1}
EPOCHS=${EPOCHS:-25}
dir=$STAGE/runs
since=""
[ -e "$dir/launched_at" ] && since=" $(( $(date +%s) - $(cat "$dir/launched_at") )) s since launch;"
echo "--- $(date +%T)$since $(nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader 2>/dev/null | sed 's/^/GPU /')"
for name in $RUNS; do
    log=$dir/$name/train_log.jsonl
    epochs=$( [ -e "$log" ] && wc -l <"$log" || echo 0 )
    if [ -e "$dir/$name/config.json" ] && [ -e "$dir/$name/eval_results.json" ]; then state=done
    elif [ -e "$dir/$name.pid" ] && kill -0 "$(cat "$dir/$name.pid")" 2>/dev/null; then state=running
    elif [ -e "$dir/$name.pid" ]; then state=FAILED
    else state=not-launched; fi
    last=""
    if [ "$epochs" -gt 0 ]; then
        last=$(tail -1 "$log" | python3 -c 'import json, sys; r = json.load(sys.stdin)
print("dice %.2f | %.0f img/s | data wait %.1f %%" % (100 * r["dice_per_image"], r["images_per_second"], 100 * r["data_wait_fraction"]))')
    elif [ -e "$dir/$name.log" ]; then
        last=$(tr '\r' '\n' <"$dir/$name.log" | grep -v '^\s*$' | tail -1 | cut -c1-90)
    fi
    [ "$state" = FAILED ] && last=$(grep -E "Error|error:|Exit|Killed" "$dir/$name.log" | tail -1 | cut -c1-120)
    printf '%-16s %-12s epoch %2s/%s  %s\n' "$name" "$state" "$epochs" "$EPOCHS" "$last"
done

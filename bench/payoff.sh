#!/usr/bin/env bash
# Does the search pay off on CamVid? Every step of issue 16's payoff measurement, each resumable:
#   bash bench/payoff.sh search|rerank|fresh|scratch|report
# search   an evolution search of 200 trained trials with the proxy of experiments/camvid/search.flags
#          (PREFILTER="--prefilter=synflow --prefilter_ratio=4" adds the zero-cost pre-filter);
#          about 2-4 h on 2 cores.
# rerank   its top 5 distinct cells fine-tuned under the ground-truth protocol (rerank.flags: the
#          backbone frozen, as experiments/camvid/fidelity_truth.flags, 900 steps); the winner is copied to
#          experiments/camvid/searched_cell.json. About 6.5 min a cell.
# fresh    the winner, the published cell and the ASPP-equivalent cell (fresh heads) and the backbone's
#          own ASPP head (continued), 3 seeds each, same protocol: bench/data/camvid_payoff.json.
# scratch  the winner and ASPP trained from scratch as the shared backbone was (3,500 steps of batch 4 at
#          240x320, about an hour each on 2 cores), seeds 1-3 (ASPP's seed 1 is the shared backbone,
#          51.78), each scored on val at 360x480.
# report   the fresh-head table and the from-scratch scores.
# Needs runs/camvid/tfrecord and runs/camvid/features (the commands in search_proxy.flags' header).
set -euo pipefail
cd "$(dirname "$0")/.."
export TF_CPP_MIN_LOG_LEVEL=3
SEARCH=${SEARCH:-runs/camvid/search_evolution200}
DATA=${DATA:-runs/camvid/tfrecord}
BACKBONE=${BACKBONE:-../shared/data/camvid_backbone}
WINNER=experiments/camvid/searched_cell.json
echo "# command: bash bench/payoff.sh $*  ($(date -u +%F), $(nproc) cores)"

fresh() {  # extra flags...
  python bench/fidelity_truth.py --flagfile=experiments/camvid/fidelity_truth.flags --dataset_dir="$DATA" \
    --tf_initial_checkpoint="$BACKBONE" --cell_json=searched="$WINNER" --runs_dir=runs/camvid/payoff \
    --names=searched,published_cityscapes,aspp,aspp_head_continued --seeds=1,2,3 \
    --output_json=bench/data/camvid_payoff.json "$@"
}

case ${1:-} in
  search)
    python -m deeplab_dpc.search --flagfile=experiments/camvid/search.flags --search_dir="$SEARCH" \
      --strategy=evolution --max_trials=200 ${PREFILTER:-} ;;
  rerank)
    python -m deeplab_dpc.rerank --flagfile=experiments/camvid/rerank.flags --search_dir="$SEARCH" \
      --dataset_dir="$DATA" --top_k=5 --spread_k=0 --noinclude_reference
    cp "$SEARCH/best_cell.json" "$WINNER" && echo "winner: $WINNER" ;;
  fresh) fresh ;;
  scratch)
    mkdir -p runs/camvid/scratch
    for run in "aspp 2" "aspp 3" "dpc 1" "dpc 2" "dpc 3"; do
      set -- $run
      dir=runs/camvid/scratch/$1_seed$2
      cell=(); [ "$1" = dpc ] && cell=(--context=dpc --dense_prediction_cell_json="$WINNER")
      python -m deeplab_dpc.train --flagfile=experiments/camvid/mobilenet_v2_aspp.flags "${cell[@]}" \
        --dataset_dir="$DATA" --train_logdir="$dir" --train_crop_size=240,320 --train_batch_size=4 \
        --training_number_of_steps=3500 --mixed_precision=false --jit_compile=false --eval_interval_steps=0 \
        --log_steps=100 --save_interval_secs=900 --seed="$2" > "$dir.log" 2>&1
      python -m deeplab_dpc.eval --checkpoint_dir="$dir" --dataset=camvid --dataset_dir="$DATA" \
        --eval_split=val --eval_crop_size=360,480 > /dev/null 2>&1
      python -c "import json; print('$1 seed $2: val mIoU', round(100 * json.load(open('$dir/eval/latest.json'))['miou'], 2))"
    done ;;
  report)
    fresh --report_only
    for f in runs/camvid/scratch/*/eval/latest.json; do
      [ -f "$f" ] && python -c "import json; print('$f', round(100 * json.load(open('$f'))['miou'], 2))"
    done ;;
  *) echo "usage: bash bench/payoff.sh search|rerank|fresh|scratch|report" >&2; exit 2 ;;
esac

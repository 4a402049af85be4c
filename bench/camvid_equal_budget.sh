#!/usr/bin/env bash
# MobileNet-v2 + published DPC vs + ASPP on CamVid, from scratch, equal step budget.
#   [CONTEXTS="dpc aspp"] [EXTRA_FLAGS="--min_scale_factor=0.75 ..."] bash bench/camvid_equal_budget.sh [STEPS] [CROP] [BATCH] [OUT]
# Uses the camvid flagfiles with CPU-sized overrides (no mixed precision, no XLA,
# smaller crops); on a GPU host run the flagfiles as they are. Prints val mIoU of
# both (whole 360x480 images, single scale) and the wall time of each run.
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${1:-400}; CROP=${2:-240,320}; BATCH=${3:-4}; OUT=${4:-/tmp/camvid_equal_budget}
CAMVID=${CAMVID:-../shared/data/camvid}
export TF_CPP_MIN_LOG_LEVEL=3
echo "# command: EXTRA_FLAGS=\"${EXTRA_FLAGS:-}\" bash bench/camvid_equal_budget.sh $STEPS $CROP $BATCH $OUT  ($(date -u +%F), $(nproc) cores)"
[ -d "$OUT/tfrecord" ] || python -m tools.build_camvid_data --camvid_root="$CAMVID" --output_dir="$OUT/tfrecord" --splits=train,val >/dev/null 2>&1
for ctx in ${CONTEXTS:-dpc aspp}; do
  start=$(date +%s)
  python -m deeplab_dpc.train --flagfile=experiments/camvid/mobilenet_v2_$ctx.flags \
    --dataset_dir="$OUT/tfrecord" --train_logdir="$OUT/$ctx" --train_crop_size="$CROP" \
    --train_batch_size="$BATCH" --training_number_of_steps="$STEPS" --mixed_precision=false \
    --jit_compile=false --eval_interval_steps=0 --log_steps=50 --save_interval_secs=600 ${EXTRA_FLAGS:-} \
    >"$OUT/$ctx.log" 2>&1
  train_s=$(( $(date +%s) - start ))
  python -m deeplab_dpc.eval --checkpoint_dir="$OUT/$ctx" --dataset=camvid --dataset_dir="$OUT/tfrecord" \
    --eval_split=val --eval_crop_size=360,480 >"$OUT/$ctx.eval.json" 2>"$OUT/$ctx.eval.log"
  miou=$(python -c "import json,sys; print(round(100*json.load(open('$OUT/$ctx/eval/latest.json'))['miou'], 2))")
  echo "mobilenet_v2 + $ctx: $STEPS steps of batch $BATCH at $CROP in ${train_s} s; CamVid val mIoU $miou"
done

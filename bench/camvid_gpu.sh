#!/usr/bin/env bash
# MobileNet-v2 + published DPC vs + ASPP on CamVid, from scratch, equal step budget, on a GPU host
# with JAX and no TensorFlow (issue "Training, evaluation ...", section "Measure").
#
# Here (a machine with pip and the repo's venv active), once:
#   bash bench/camvid_gpu.sh prepare [CAMVID_DIR]
#     packs CamVid train/val into .carry/camvid_npz (JPEG q95, ~35 MB) and downloads
#     Keras 3.15.1 + namex + optree wheels for Python 3.12 into .whl (both git-ignored).
# On the GPU host (the device tool: carry [".whl", ".carry"]), one command per model:
#   bash bench/camvid_gpu.sh run dpc [STEPS] [EXTRA FLAGS...]
#   bash bench/camvid_gpu.sh run aspp [STEPS] [EXTRA FLAGS...]
#     trains experiments/camvid/mobilenet_v2_<ctx>.flags as they are (batch 16, 352x480 crops,
#     mixed bfloat16, XLA) for STEPS (default: the flagfile's 10000), evaluates on the 101 val
#     images at 360x480, single scale, and prints the command, the times and the val mIoU.
#     Results (eval JSON, configs, log) go to $OUT when set (the device tool returns it).
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:?usage: camvid_gpu.sh prepare [CAMVID_DIR] | run dpc|aspp [STEPS] [FLAGS...]}
shift
if [ "$mode" = prepare ]; then
  camvid=${1:-../shared/data/camvid}
  python -m tools.build_npz_data --dataset=camvid --dataset_format=folder --dataset_dir="$camvid" \
    --label_remap=11:255 --output_dir=.carry/camvid_npz --splits=train,val
  python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d .whl keras==3.15.1 namex optree
  du -sh .carry .whl
  exit 0
fi
[ "$mode" = run ] || { echo "unknown mode $mode: prepare or run" >&2; exit 2; }
ctx=${1:?run needs dpc or aspp}; shift
steps=${1:-10000}; [ $# -gt 0 ] && shift
[ -f .carry/camvid_npz/train.npz ] || { echo ".carry/camvid_npz missing: run 'bash bench/camvid_gpu.sh prepare' first and carry .carry" >&2; exit 2; }
if ! python3 -c "import keras" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export KERAS_BACKEND=jax PYTHONUNBUFFERED=1
run=/tmp/camvid_gpu/$ctx
rm -rf "$run"  # from scratch: never resume an earlier run
out=${OUT:-/tmp/camvid_gpu}
mkdir -p "$out"
data=(--dataset=camvid --dataset_format=npz --dataset_dir=.carry/camvid_npz --loader=numpy)  # one reader per core
train=(python3 -m deeplab_dpc.train --flagfile=experiments/camvid/mobilenet_v2_$ctx.flags "${data[@]}"
  --train_logdir="$run" --training_number_of_steps="$steps" "$@")
evaluate=(python3 -m deeplab_dpc.eval --checkpoint_dir="$run" "${data[@]}" --eval_split=val --eval_crop_size=360,480)
echo "# $(date -u +%FT%TZ) $(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)"
echo "# command: ${train[*]}"
start=$(date +%s)
"${train[@]}" 2>&1 | tee "$out/$ctx.train.log" | grep -E "step [0-9]+/|Error|error" || true
train_s=$(( $(date +%s) - start ))
echo "# command: ${evaluate[*]}"
"${evaluate[@]}" > "$out/$ctx.eval.stdout" 2> "$out/$ctx.eval.log"
cp "$run/eval/latest.json" "$out/$ctx.eval.json"
cp "$run/train_config.json" "$out/$ctx.train_config.json"
miou=$(python3 -c "import json; print(round(100 * json.load(open('$out/$ctx.eval.json'))['miou'], 2))")
echo "mobilenet_v2 + $ctx: $steps steps in ${train_s} s (compilation included); CamVid val mIoU $miou"

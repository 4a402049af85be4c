#!/usr/bin/env bash
# Which proxy ranks the fidelity set best per CPU-second: every row of BENCHMARKS.md's proxy table, resumably.
#   bash bench/fidelity_table.sh [ROW ...]        (no ROW: every row, in this order)
# Each row is bench/fidelity.py on experiments/camvid/search_proxy.flags (the search's proxy: 100 steps since
# this table chose it, 64 filters, lr 0.2, batch 8) with its changes spelled out (the rows measured against the
# former 200-step default name --proxy_steps=200), its trials in bench/data/proxy_fidelity/<file>.json:
# rerunning skips the recorded trials, so the script can be stopped and run again at any time, and a row
# whose trials are all recorded costs only its statistics against today's ground truth
# (bench/data/camvid_fidelity.json). Needs the CamVid feature cache of search_proxy.flags' header, made
# with --teacher_checkpoint_path=../shared/data/camvid_backbone on the train split for the distillation row.
# Prints each row's markdown line; run it alone on the machine (CPU seconds per cell are a column).
set -euo pipefail
cd "$(dirname "$0")/.."
export TF_CPP_MIN_LOG_LEVEL=3
OUT=${OUT:-bench/data/proxy_fidelity}   # data, committed: the trials are what later sessions reuse
LOGS=${LOGS:-runs/camvid/proxy_fidelity}
mkdir -p "$OUT" "$LOGS"
echo "# command: bash bench/fidelity_table.sh $*  ($(date -u +%F), $(nproc) cores)"

row() {  # NAME FILE FLAGS...
  local name=$1 file=$2; shift 2
  python bench/fidelity.py --flagfile=experiments/camvid/search_proxy.flags --name="$name" \
    --output_json="$OUT/$file.json" "$@" 2>"$LOGS/$file.log" | grep '^| ' | grep -v '^| proxy |' || true
}

ALL="synflow grad_norm snip naswot zico p100 p200 p50 p600 p100s2 seeds2 f32 f128 p100f128 p100f256 label lossf kl ema lr05"
echo "| proxy | rho [90% CI] | tau [90% CI] | top-5 recall | rho better half | CPU s/cell | cells |"
echo "|---|---|---|---|---|---|---|"
for r in ${*:-$ALL}; do
  case $r in
    synflow|grad_norm|snip|naswot|zico) row "zero-cost $r (one batch of 8)" "$r" --score="$r" --proxy_steps=200 --seeds=0 ;;  # as recorded; no training
    p200) row "proxy 200 steps, 64 filters (search.flags until 2026-12-07)" proxy_200_64 --proxy_steps=200 --seeds=0 ;;
    p100) row "proxy 100 steps, 64 filters (search.flags)" proxy_100_64 --proxy_steps=100 --seeds=0 ;;
    p600) row "proxy 600 steps" proxy_600_64 --proxy_steps=600 --seeds=0 ;;
    f32) row "proxy 32 filters" proxy_200_32 --proxy_steps=200 --proxy_filters=32 --seeds=0 ;;
    f128) row "proxy 128 filters" proxy_200_128 --proxy_steps=200 --proxy_filters=128 --seeds=0 ;;
    seeds2) row "proxy 200 steps, mean of 2 seeds" proxy_200_64 --proxy_steps=200 --seeds=0,1 ;;
    label) row "proxy, loss at label resolution" proxy_200_64_label --proxy_steps=200 --proxy_loss_resolution=label --seeds=0 ;;
    lossf) row "proxy, loss on the feature grid (26% cheaper step)" proxy_200_64_lossfeatures \
          --proxy_steps=200 --proxy_loss_resolution=features --seeds=0 ;;
    kl) row "proxy + distillation (KL, T=2, w=1)" proxy_200_64_kl --proxy_steps=200 --proxy_distillation_weight=1 \
          --proxy_distillation_loss=kl --proxy_distillation_temperature=2 --seeds=0 ;;
    ema) row "proxy + EMA 0.99" proxy_200_64_ema --proxy_steps=200 --proxy_ema_decay=0.99 --seeds=0 ;;
    p50) row "proxy 50 steps" proxy_50_64 --proxy_steps=50 --seeds=0 ;;
    p100s2) row "proxy 100 steps, mean of 2 seeds" proxy_100_64 --proxy_steps=100 --seeds=0,1 ;;
    lr05) row "proxy 200 steps, lr 0.05" proxy_200_64_lr0.05 --proxy_steps=200 --proxy_learning_rate=0.05 --seeds=0 ;;
    p100f128) row "proxy 100 steps, 128 filters" proxy_100_128 --proxy_steps=100 --proxy_filters=128 --seeds=0 ;;
    p100f256) row "proxy 100 steps, 256 filters (the paper's width)" proxy_100_256 --proxy_steps=100 \
          --proxy_filters=256 --seeds=0 ;;
    *) echo "unknown row $r (valid: $ALL)" >&2; exit 2 ;;
  esac
done

#!/usr/bin/env bash
# Does the search pay off on CamVid? Every step of issue 16's payoff measurement, each resumable:
#   bash bench/payoff.sh search|save|rerank|fresh|scratch|report
# search   an evolution search of 200 trained trials with the proxy of experiments/camvid/search.flags
#          (PREFILTER="--prefilter=synflow --prefilter_ratio=4" adds the zero-cost pre-filter);
#          about 2-4 h on 2 cores. Its study is copied to bench/data/payoff_search/ when it ends
#          (`save` copies it at any time, also while it runs); a fresh checkout resumes from that copy.
# rerank   its top 5 distinct cells (bench/payoff_top.py -> bench/data/payoff_top/) fine-tuned under the
#          ground truth's protocol and seeds (experiments/camvid/fidelity_truth.flags: the backbone frozen,
#          900 steps, seeds 1 and 2; bench/data/camvid_payoff_rerank.json, resumable, a cell already in the
#          ground truth reused); the best mean is copied to experiments/camvid/searched_cell.json. About
#          6.5 min a run alone, 10 runs.
# fresh    the winner, the published cell and the ASPP-equivalent cell (fresh heads) and the backbone's
#          own ASPP head (continued), 3 seeds each, same protocol: bench/data/camvid_payoff.json (the
#          references' runs already in the ground truth, bench/data/camvid_fidelity.json, are reused).
# scratch  the winner and ASPP trained from scratch as the shared backbone was (3,500 steps of batch 4 at
#          240x320, about 22 min each alone on 2 cores), seeds 1-3 (ASPP's seed 1 is the shared backbone,
#          51.78), each scored on val at 360x480 and recorded in bench/data/camvid_scratch.json (a
#          recorded run is skipped; a cut-short one resumes from its checkpoint). SCRATCH_RUNS="aspp 2,aspp 3"
#          picks runs (ASPP's need no winner and can start any time).
# report   the fresh-head table and the from-scratch scores.
# Needs runs/camvid/tfrecord and runs/camvid/features (the commands in search_proxy.flags' header).
set -euo pipefail
cd "$(dirname "$0")/.."
export TF_CPP_MIN_LOG_LEVEL=3
SEARCH=${SEARCH:-runs/camvid/search_evolution200}
SAVED=${SAVED:-bench/data/payoff_search}  # the search's study, committed: a later session resumes from it
DATA=${DATA:-runs/camvid/tfrecord}
BACKBONE=${BACKBONE:-../shared/data/camvid_backbone}
WINNER=experiments/camvid/searched_cell.json
export SCRATCH_JSON=${SCRATCH_JSON:-bench/data/camvid_scratch.json}  # data, committed: carried across sessions
echo "# command: bash bench/payoff.sh $*  ($(date -u +%F), $(nproc) cores)"

fresh() {  # extra flags...
  python bench/fidelity_truth.py --flagfile=experiments/camvid/fidelity_truth.flags --dataset_dir="$DATA" \
    --tf_initial_checkpoint="$BACKBONE" --cell_json=searched="$WINNER" --runs_dir=runs/camvid/payoff \
    --names=searched,published_cityscapes,aspp,aspp_head_continued --seeds=1,2,3 \
    --output_json=bench/data/camvid_payoff.json \
    --reuse_runs_from=bench/data/camvid_fidelity.json,bench/data/camvid_payoff_rerank.json "$@"
}

scratch_recorded() {  # NAME SEED HASH: is this run in $SCRATCH_JSON already?
  python - "$@" <<'PY'
import json, os, sys
name, seed, graph = sys.argv[1], int(sys.argv[2]), sys.argv[3]
path = os.environ["SCRATCH_JSON"]
runs = json.load(open(path))["runs"] if os.path.exists(path) else []
sys.exit(0 if any(r["model"] == name and r["seed"] == seed and r["graph_hash"] == graph for r in runs) else 1)
PY
}

scratch_record() {  # NAME SEED HASH RUN_DIR: appends the run's val score to $SCRATCH_JSON (atomically)
  python - "$@" <<'PY'
import datetime, json, os, sys
from deeplab_dpc.fileio import write_json
name, seed, graph, run_dir = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
path = os.environ["SCRATCH_JSON"]
record = json.load(open(path)) if os.path.exists(path) else {"format": 1, "runs": []}
result = json.load(open(os.path.join(run_dir, "eval", "latest.json")))
record["runs"] = [r for r in record["runs"] if (r["model"], r["seed"], r["graph_hash"]) != (name, seed, graph)]
record["runs"].append({"model": name, "seed": seed, "graph_hash": graph, "miou": result["miou"],
                       "steps": 3500, "date": datetime.date.today().isoformat(),
                       "command": "bash bench/payoff.sh scratch"})
write_json(path, record)
print(f"{name} seed {seed}: val mIoU {100 * result['miou']:.2f} (recorded in {path})")
PY
}

. bench/carry_search.sh

case ${1:-} in
  search)
    restore_search "$SEARCH" "$SAVED"
    python -m deeplab_dpc.search --flagfile=experiments/camvid/search.flags --search_dir="$SEARCH" \
      --strategy=evolution --max_trials=200 ${PREFILTER:-}
    save_search "$SEARCH" "$SAVED" ;;
  save) save_search "$SEARCH" "$SAVED" ;;
  rerank)
    restore_search "$SEARCH" "$SAVED"
    # The top 5 distinct cells by proxy score under the ground truth's own protocol and seeds (900 steps,
    # seeds 1 and 2; recorded in bench/data, resumable), the winner the best mean of the two.
    top=$(python bench/payoff_top.py --search_dir="$SEARCH" --top_k=5 --output_dir=bench/data/payoff_top)
    echo "$top"
    read -ra cells <<< "$(tail -n 1 <<< "$top")"  # --names=rank1,... --cell_json=rank1=PATH ...
    python bench/fidelity_truth.py --flagfile=experiments/camvid/fidelity_truth.flags --dataset_dir="$DATA" \
      --tf_initial_checkpoint="$BACKBONE" "${cells[@]}" --seeds=1,2 \
      --runs_dir=runs/camvid/payoff_rerank --output_json=bench/data/camvid_payoff_rerank.json \
      --reuse_runs_from=bench/data/camvid_fidelity.json
    python bench/payoff_top.py --pick_winner=bench/data/camvid_payoff_rerank.json --output_dir=bench/data/payoff_top \
      --winner="$WINNER" ;;
  fresh) fresh ;;
  scratch)
    mkdir -p runs/camvid/scratch
    runs=${SCRATCH_RUNS:-"aspp 2,aspp 3,dpc 1,dpc 2,dpc 3"}
    IFS=, read -ra runs <<< "$runs"
    for run in "${runs[@]}"; do
      set -- $run
      dir=runs/camvid/scratch/$1_seed$2
      graph=none; cell=()
      if [ "$1" = dpc ]; then
        [ -f "$WINNER" ] || { echo "no $WINNER yet: run 'bash bench/payoff.sh rerank' first" >&2; exit 2; }
        graph=$(python -c "from deeplab_dpc.core.spec import CellSpec; print(CellSpec.load('$WINNER').canonical_hash())")
        cell=(--context=dpc --dense_prediction_cell_json="$WINNER")
      fi
      if scratch_recorded "$1" "$2" "$graph"; then echo "$1 seed $2: recorded, skipped"; continue; fi
      python -m deeplab_dpc.train --flagfile=experiments/camvid/mobilenet_v2_aspp.flags "${cell[@]}" \
        --dataset_dir="$DATA" --train_logdir="$dir" --train_crop_size=240,320 --train_batch_size=4 \
        --training_number_of_steps=3500 --mixed_precision=false --jit_compile=false --eval_interval_steps=0 \
        --log_steps=100 --save_interval_secs=900 --seed="$2" > "$dir.log" 2>&1
      python -m deeplab_dpc.eval --checkpoint_dir="$dir" --dataset=camvid --dataset_dir="$DATA" \
        --eval_split=val --eval_crop_size=360,480 > /dev/null 2>&1
      scratch_record "$1" "$2" "$graph" "$dir"
    done ;;
  report)
    fresh --report_only
    [ -f "$SCRATCH_JSON" ] && python -c "
import json
for r in json.load(open('$SCRATCH_JSON'))['runs']:
    print(f\"from scratch: {r['model']} seed {r['seed']} ({r['graph_hash']}): val mIoU {100 * r['miou']:.2f}\")" ;;
  *) echo "usage: bash bench/payoff.sh search|save|rerank|fresh|scratch|report" >&2; exit 2 ;;
esac

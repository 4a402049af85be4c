#!/usr/bin/env bash
# Does the zero-cost pre-filter make the search more sample-efficient? (issue 16, section 3)
#   bash bench/prefilter_study.sh run|report
# run     for evolution and random, seeds 1-3, a search of N trained trials (N=${TRIALS:-50}) without and
#         with the pre-filter (PREFILTER, default naswot: set it to the zero-cost score that ranks the fidelity
#         set best in BENCHMARKS.md's proxy table; RATIO proposals per trained trial, default 4), each in its own folder under
#         runs/camvid/prefilter/. Each search resumes where it stopped (kill -9 included), so the script can
#         be stopped and run again at any time. Cost: 12 searches x N trials of the search.flags proxy
#         (about 19 s of one worker each on 2 cores with the 100-step proxy, ~350 trials an hour; a pre-filtered
#         trial adds ~4 s of zero-cost scoring): about 1.5 h for N=50.
# report  bench/search_report.py over the 12 searches: the best proxy val mIoU after 10, 25, 50 trained
#         trials, mean over the 3 seeds (lowest-highest), one row per strategy with and without the
#         pre-filter, and runs/camvid/prefilter/best_so_far.png.
# Needs runs/camvid/features (the commands in experiments/camvid/search_proxy.flags' header).
set -euo pipefail
cd "$(dirname "$0")/.."
export TF_CPP_MIN_LOG_LEVEL=3
ROOT=${ROOT:-runs/camvid/prefilter}
TRIALS=${TRIALS:-50}
PREFILTER=${PREFILTER:-naswot}
RATIO=${RATIO:-4}
SAVED=${SAVED:-bench/data/prefilter}  # each search's study, committed as it ends: a fresh checkout resumes
. bench/carry_search.sh
echo "# command: TRIALS=$TRIALS PREFILTER=$PREFILTER RATIO=$RATIO bash bench/prefilter_study.sh $*  ($(date -u +%F), $(nproc) cores)"

dirs=()
for strategy in evolution random; do
  for seed in 1 2 3; do
    dirs+=("$ROOT/${strategy}_seed$seed" "$ROOT/${strategy}_${PREFILTER}x${RATIO}_seed$seed")
  done
done

case ${1:-} in
  run)
    mkdir -p "$ROOT"
    for strategy in evolution random; do
      for seed in 1 2 3; do
        for pf in none "$PREFILTER"; do
          if [ "$pf" = none ]; then dir=$ROOT/${strategy}_seed$seed; extra=()
          else dir=$ROOT/${strategy}_${pf}x${RATIO}_seed$seed; extra=(--prefilter="$pf" --prefilter_ratio="$RATIO"); fi
          echo "$(date -u +%T) $dir"
          saved=$SAVED/$(basename "$dir")
          restore_search "$dir" "$saved"
          python -m deeplab_dpc.search --flagfile=experiments/camvid/search.flags --search_dir="$dir" \
            --strategy="$strategy" --seed="$seed" --max_trials="$TRIALS" "${extra[@]}" > "$dir.log" 2>&1 \
            || { save_search "$dir" "$saved"; exit 1; }
          save_search "$dir" "$saved"
        done
      done
    done ;;
  report)
    existing=(); for d in "${dirs[@]}"; do restore_search "$d" "$SAVED/$(basename "$d")"; [ -d "$d" ] && existing+=("$d"); done
    python bench/search_report.py "${existing[@]}" --at=10,25,"$TRIALS" --plot="$ROOT/best_so_far.png" ;;
  *) echo "usage: bash bench/prefilter_study.sh run|report" >&2; exit 2 ;;
esac

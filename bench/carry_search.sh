# Carrying a search across sessions: runs/ is not committed, so a long benchmark's search folders are
# copied into bench/data (their study, a consistent SQLite snapshot even while the search runs, the config
# and the best cell: a few MB, no checkpoints) and restored from there on a fresh checkout. A search
# folder is relocatable (search_config.relocate), so the restored copy continues where the saved one
# stopped. Sourced by bench/payoff.sh and bench/prefilter_study.sh.
#   restore_search SEARCH_DIR SAVED_DIR    (nothing if SEARCH_DIR has a search or nothing was saved)
#   save_search SEARCH_DIR SAVED_DIR

restore_search() {
  local search=$1 saved=$2
  if [ ! -f "$search/search_config.json" ] && [ -f "$saved/search_config.json" ]; then
    mkdir -p "$search" && cp "$saved"/* "$search"/ && echo "restored $search from $saved"
  fi
}

save_search() {
  local search=$1 saved=$2
  [ -f "$search/study.db" ] || { echo "save_search: $search has no study.db" >&2; return 1; }
  mkdir -p "$saved"
  python - "$search" "$saved" <<'PY'
import os, shutil, sqlite3, sys
search, saved = sys.argv[1], sys.argv[2]
tmp = os.path.join(saved, "study.db.tmp")
source, target = sqlite3.connect(os.path.join(search, "study.db")), sqlite3.connect(tmp)
source.backup(target)
target.close(); source.close()
os.replace(tmp, os.path.join(saved, "study.db"))
for name in ("search_config.json", "best_proxy_cell.json"):
    if os.path.exists(os.path.join(search, name)):
        shutil.copyfile(os.path.join(search, name), os.path.join(saved, name + ".tmp"))
        os.replace(os.path.join(saved, name + ".tmp"), os.path.join(saved, name))
print(f"saved {search} -> {saved}")
PY
}

r"""A search's best distinct cells by proxy score, as DeepLab JSON files for the ground-truth protocol.

    python bench/payoff_top.py --search_dir=runs/camvid/search_evolution200 --top_k=5 \
        --output_dir=bench/data/payoff_top

writes ``rank1.json`` ... ``rank<k>.json`` (each a cell as ``train --dense_prediction_cell_json`` and
``bench/fidelity_truth.py --cell_json=rank1=...`` take it) and ``top.json`` (rank, trial number, proxy
mIoU, graph hash, file of each), each atomically, and prints, as its last line, the ``--names`` and
``--cell_json`` flags for ``bench/fidelity_truth.py``. ``bench/payoff.sh rerank`` uses it: the top cells
are re-ranked under the fidelity set's protocol (900 steps, seeds 1 and 2) and recorded in
``bench/data``, so that the winner is chosen by the same measurement as the ground truth and the runs
survive the session.

``--pick_winner=RECORD`` instead reads a fidelity_truth record of the runs of ``top.json``'s cells and
copies the cell with the best mean over its seeds to ``--winner``
(``experiments/camvid/searched_cell.json``, atomically), printing the table it chose from.
"""

from __future__ import annotations

import json
import os
import sys

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from deeplab_dpc import cli  # noqa: E402,F401  (first: it quiets TensorFlow's start-up)
from deeplab_dpc.fileio import write_bytes_atomically, write_json  # noqa: E402
from deeplab_dpc.nas import ground_truth  # noqa: E402
from deeplab_dpc.nas import rerank as rerank_lib  # noqa: E402


def define_flags() -> None:
    """The command's flags, registered only when it runs (the tests import the module's functions)."""
    flags.DEFINE_string("search_dir", None, "The search whose best cells to write.")
    flags.DEFINE_integer("top_k", 5, "How many distinct cells, best proxy score first.")
    flags.DEFINE_string("output_dir", "bench/data/payoff_top", "Where rank<i>.json and top.json go.")
    flags.DEFINE_string(
        "pick_winner", None, "A fidelity_truth record of the top cells' runs: copy the best to --winner."
    )
    flags.DEFINE_string("winner", "experiments/camvid/searched_cell.json", "Where --pick_winner copies the winner.")
    flags.DEFINE_integer("steps", 900, "With --pick_winner: the budget whose runs choose.")


def write_top(search_dir: str, top_k: int, output_dir: str) -> list[dict]:
    """Writes the cells and ``top.json``; returns its entries."""
    search_config = rerank_lib.load_search_config(search_dir)
    study = rerank_lib.open_study(search_config)
    ranking = rerank_lib.proxy_ranking(study.get_trials(deepcopy=False), search_config.space)[:top_k]
    if not ranking:
        raise ValueError(f"search_dir={search_dir}: no completed trial to rank")
    os.makedirs(output_dir, exist_ok=True)
    entries = []
    for candidate in ranking:
        name = f"rank{candidate.proxy_rank}"
        path = os.path.join(output_dir, name + ".json")
        candidate.spec.save(path)
        entries.append({
            "name": name, "proxy_rank": candidate.proxy_rank, "trial": candidate.number,
            "proxy_miou": candidate.proxy_miou, "graph_hash": candidate.graph_hash, "file": path,
        })
    write_json(os.path.join(output_dir, "top.json"), {"search_dir": search_dir, "cells": entries})
    return entries


def pick_winner(record_path: str, top_dir: str, steps: int, winner: str) -> tuple[str, list[tuple[str, float, int]]]:
    """The top cell with the best mean over its seeds at ``steps``, copied to ``winner`` (atomically);
    returns (name, [(name, mean, seeds)] best first). Every cell must have as many runs as the most
    complete one (ValueError naming those that lack some): a winner is never chosen from part of them."""
    scores = ground_truth.scores_by_budget(ground_truth.read_record(record_path)).get(steps, {})
    top = os.path.join(top_dir, "top.json")
    if not os.path.exists(top):
        raise ValueError(f"{top}: no such file (run this with --search_dir first)")
    with open(top, encoding="utf-8") as f:
        files = {c["name"]: c["file"] for c in json.load(f)["cells"]}
    names = list(files)
    seeds = max(len(scores.get(n, {})) for n in names)
    incomplete = [n for n in names if len(scores.get(n, {})) < max(seeds, 1)]
    if incomplete:
        raise ValueError(
            f"{record_path}: {incomplete} lack runs at {steps} steps ({max(seeds, 1)} seeds wanted): run them first"
        )
    table = sorted(((n, sum(scores[n].values()) / seeds, seeds) for n in names), key=lambda row: -row[1])
    name = table[0][0]
    with open(files[name], "rb") as f:
        write_bytes_atomically(winner, f.read())
    return name, table


def main(argv):
    fv = flags.FLAGS
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    try:
        if fv.pick_winner:
            name, table = pick_winner(fv.pick_winner, fv.output_dir, fv.steps, fv.winner)
            for n, mean, runs in table:
                print(f"  {n:8s} mean val mIoU {100 * mean:.2f} over {runs} seeds")
            print(f"winner: {name} -> {fv.winner}")
            return
        if not fv.search_dir:
            raise app.UsageError("--search_dir is required (or --pick_winner)")
        entries = write_top(fv.search_dir, fv.top_k, fv.output_dir)
    except ValueError as e:
        raise app.UsageError(str(e)) from None
    for e in entries:
        print(f"  {e['name']}: trial {e['trial']}, proxy mIoU {100 * e['proxy_miou']:.2f}, {e['file']}")
    # Last line: bench/fidelity_truth.py's flags for these cells (bench/payoff.sh reads it).
    print(" ".join(["--names=" + ",".join(e["name"] for e in entries)]
                   + [f"--cell_json={e['name']}={e['file']}" for e in entries]))


if __name__ == "__main__":
    define_flags()
    app.run(main)

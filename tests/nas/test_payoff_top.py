"""bench/payoff_top.py: a search's best distinct cells written as DeepLab JSON for the ground-truth
re-rank, and the winner picked from that re-rank's record only when every cell has its runs."""

import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest

from deeplab_dpc.core.spec import CellSpec
from deeplab_dpc.fileio import write_json
from tests.nas.test_rerank import B, D, standard_study

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def payoff_top(monkeypatch):
    spec = importlib.util.spec_from_file_location("bench_payoff_top", REPO / "bench" / "payoff_top.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "bench_payoff_top", module)
    spec.loader.exec_module(module)
    return module


def _record(path, runs):
    write_json(str(path), {"format": 1, "protocol": {}, "runs": [
        {"cell": c, "graph_hash": None, "steps": 900, "seed": s, "miou": m} for c, s, m in runs
    ]})


def test_top_cells_are_written_best_proxy_first_without_duplicates(tmp_path, payoff_top):
    config, _ = standard_study(tmp_path)  # B 0.60 (and its duplicate), D 0.55, A 0.50, E 0.40
    entries = payoff_top.write_top(config.search_dir, 2, str(tmp_path / "top"))
    assert [(e["name"], e["trial"], e["proxy_miou"]) for e in entries] == [("rank1", 1, 0.60), ("rank2", 4, 0.55)]
    assert CellSpec.load(tmp_path / "top" / "rank1.json") == B
    assert CellSpec.load(tmp_path / "top" / "rank2.json") == D
    top = json.loads((tmp_path / "top" / "top.json").read_text())
    assert [c["graph_hash"] for c in top["cells"]] == [B.canonical_hash(), D.canonical_hash()]


def test_the_winner_is_the_best_mean_and_never_chosen_from_part_of_the_runs(tmp_path, payoff_top):
    config, _ = standard_study(tmp_path)
    payoff_top.write_top(config.search_dir, 2, str(tmp_path / "top"))
    winner = tmp_path / "searched_cell.json"
    # rank2 has only one of its two seeds: refused, naming it, and nothing written.
    _record(tmp_path / "r.json", [("rank1", 1, 0.50), ("rank1", 2, 0.48), ("rank2", 1, 0.53)])
    with pytest.raises(ValueError, match=r"\['rank2'\] lack runs at 900 steps \(2 seeds"):
        payoff_top.pick_winner(str(tmp_path / "r.json"), str(tmp_path / "top"), 900, str(winner))
    assert not winner.exists()
    # rank2's second seed pulls its mean (0.485) under rank1's (0.49): rank1 wins despite rank2's best run.
    _record(tmp_path / "r.json", [("rank1", 1, 0.50), ("rank1", 2, 0.48), ("rank2", 1, 0.53), ("rank2", 2, 0.44)])
    name, table = payoff_top.pick_winner(str(tmp_path / "r.json"), str(tmp_path / "top"), 900, str(winner))
    assert name == "rank1" and [n for n, _, _ in table] == ["rank1", "rank2"]
    assert table[0][1] == pytest.approx(0.49) and CellSpec.load(winner) == B
    assert not os.path.exists(str(winner) + ".tmp")

"""README's first command, shrunk: every stage of the search pipeline runs and leaves its artefact."""

import json
import os
import subprocess
import sys

import pytest

from deeplab_dpc.core.spec import CellSpec

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow  # about 4 minutes on 2 cores: six trainings, a search with a worker process
def test_demo_runs_the_whole_search_pipeline(tmp_path):
    workdir = tmp_path / "demo"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "deeplab_dpc.demo",
            f"--workdir={workdir}",
            "--backbone_steps=30",
            "--search_trials=3",
            "--proxy_steps=20",
            "--rerank_steps=10",
            "--steps=50",
            "--num_workers=1",
            "--num_train=32",
            "--num_val=8",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads(result.stdout[result.stdout.rindex("== Summary") + len("== Summary") :])
    assert summary["search_completed"] == 3 and summary["search_failed"] == 0
    assert summary["loss_last"] < summary["loss_first"] and summary["export_agreement"] >= 0.999
    # The re-ranked winner is the cell the final model was trained with, and it loads unchanged.
    winner = CellSpec.load(str(workdir / "search" / "best_cell.json"))
    with open(workdir / "run" / "model_config.json") as f:
        assert CellSpec.from_list(json.load(f)["dense_prediction_cell"]) == winner
    for path in (
        "search/study.db",
        "search/best_proxy_cell.json",
        "features/train.manifest.json",
        "export/1/saved_model.pb",
    ):
        assert (workdir / path).exists(), path
    assert f"optuna-dashboard sqlite:///{workdir}/search/study.db" in result.stdout

"""bench/carry_search.sh: a long benchmark's search saved into bench/data and restored on a fresh checkout."""

import sqlite3
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _sh(script: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", f". bench/carry_search.sh; {script}"], cwd=REPO, capture_output=True,
                          text=True)


def _search(path: Path, rows: int) -> None:
    path.mkdir(parents=True)
    with sqlite3.connect(path / "study.db") as db:
        db.execute("create table trials(number)")
        db.executemany("insert into trials values (?)", [(i,) for i in range(rows)])
    (path / "search_config.json").write_text('{"search_dir": "%s"}' % path)


def _rows(path: Path) -> int:
    with sqlite3.connect(path) as db:
        return db.execute("select count(*) from trials").fetchone()[0]


def test_a_saved_search_is_restored_into_a_fresh_folder_and_never_over_a_live_one(tmp_path):
    _search(tmp_path / "run", 3)
    # The writer holds the study open (a search running) while it is saved: the snapshot is whole.
    live = sqlite3.connect(tmp_path / "run" / "study.db")
    live.execute("insert into trials values (3)")
    live.commit()
    assert _sh(f"save_search {tmp_path / 'run'} {tmp_path / 'saved'}").returncode == 0
    live.close()
    assert _rows(tmp_path / "saved" / "study.db") == 4
    assert sorted(p.name for p in (tmp_path / "saved").iterdir()) == ["search_config.json", "study.db"]
    # A fresh checkout: the folder comes back from the saved copy.
    out = _sh(f"restore_search {tmp_path / 'fresh'} {tmp_path / 'saved'}")
    assert out.returncode == 0 and "restored" in out.stdout
    assert _rows(tmp_path / "fresh" / "study.db") == 4
    # A folder that already holds a search keeps it: the saved copy never overwrites newer trials.
    _search(tmp_path / "newer", 9)
    assert _sh(f"restore_search {tmp_path / 'newer'} {tmp_path / 'saved'}").stdout == ""
    assert _rows(tmp_path / "newer" / "study.db") == 9


def test_saving_a_folder_without_a_study_fails_naming_it(tmp_path):
    out = _sh(f"save_search {tmp_path / 'nothing'} {tmp_path / 'saved'}")
    assert out.returncode == 1 and f"{tmp_path / 'nothing'} has no study.db" in out.stderr
    assert not (tmp_path / "saved").exists()

r"""The ground truth of the fidelity set: each cell fine-tuned end to end and scored on val, resumably.

    python bench/fidelity_truth.py --flagfile=experiments/camvid/fidelity_truth.flags \
        --dataset_dir=runs/camvid/tfrecord --tf_initial_checkpoint=../shared/data/camvid_backbone \
        --names=published_cityscapes,aspp --seeds=1,2 --training_number_of_steps=300

The flags are ``deeplab_dpc.train``'s (the protocol: a flagfile such as
``experiments/camvid/fidelity_truth.flags``), plus the selection:

* ``--cells``: the set (``experiments/camvid/fidelity_cells.json``, made by
  ``bench/make_fidelity_cells.py``); ``--names`` picks cells of it (default
  all); the name ``aspp_head_continued`` is the backbone's own trained ASPP
  head, trained on under the same protocol (``context=aspp``: every weight
  restored), the check that the protocol does not damage what it starts from;
* ``--cell_json=NAME=PATH`` (repeatable): a cell outside the set, from a DeepLab JSON file (a
  search's winner, for the payoff comparison against the references under the same protocol);
* ``--seeds``: one run per seed;
* ``--runs_dir``: one run folder per (cell, steps, seed);
* ``--reuse_runs_from``: other records made under the same protocol; their
  runs of the selected cells (matched by graph hash: a winner may have another
  name there), budget and seeds are copied rather than trained again (the
  payoff's references reuse the fidelity set's runs);
* ``--output_json``: the record (``bench/data/camvid_fidelity.json``), one
  entry per finished run, written atomically after each; ``--chosen_steps``
  records the budget the ground truth is read at.

Every cell starts from ``--tf_initial_checkpoint`` (weights copied by path and
shape: the backbone and decoder; a cell of the set is fresh) and is scored by
``eval_lib`` on ``--eval_split`` at ``--eval_crop_size`` (whole images).
Rerunning the same command skips recorded runs and resumes a cut-short run
from its checkpoint. The file's protocol (the training settings but the cell,
the steps, the seed and the paths) is fixed by its first run: a run with other
settings is refused naming the fields, so one file never mixes protocols.
Prints the per-cell table at each budget and, where two budgets or two seeds
cover the same cells, their rank correlations and seed noise against the
spread across cells.
"""

from __future__ import annotations

import copy
import os
import sys

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from deeplab_dpc import cli  # noqa: E402,F401  (first: it quiets TensorFlow's start-up)
from deeplab_dpc import rerank as rerank_main  # noqa: E402
from deeplab_dpc import train as train_main  # noqa: E402
from deeplab_dpc.fileio import write_json  # noqa: E402
from deeplab_dpc.nas import fidelity, ground_truth  # noqa: E402

train_main.define_flags()
flags.DEFINE_string("cells", "experiments/camvid/fidelity_cells.json", "The fidelity set.")
flags.DEFINE_list(
    "names", None, f"Cells of the set to run (default all); {ground_truth.CONTINUED}: the backbone's ASPP head."
)
flags.DEFINE_multi_string(
    "cell_json", [], "NAME=PATH: also a cell from a DeepLab JSON file (a search's winner), run as NAME (repeatable)."
)
flags.DEFINE_list("seeds", ["1", "2"], "One run per seed.")
flags.DEFINE_string("runs_dir", "runs/camvid/fidelity", "Run folders: <runs_dir>/<cell>/steps<N>_seed<S>.")
flags.DEFINE_list(
    "reuse_runs_from", [],
    "Other records under the same protocol (bench/data/camvid_fidelity.json): their runs of the selected cells "
    "(matched by graph hash), budget and seeds are copied in rather than trained again.",
)
flags.DEFINE_string("output_json", "bench/data/camvid_fidelity.json", "The record of finished runs.")
flags.DEFINE_integer("chosen_steps", None, "Record this budget as the one the ground truth is read at.")
flags.DEFINE_boolean("report_only", False, "Print the tables of the record and train nothing.")


def extra_cell(text: str) -> fidelity.Cell:
    """``--cell_json=NAME=PATH`` as a cell of the run."""
    from deeplab_dpc.core.spec import CellSpec, SpecError  # noqa: PLC0415

    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise app.UsageError(f"--cell_json={text}: expected NAME=PATH")
    try:
        spec = CellSpec.load(path)
    except (OSError, SpecError, ValueError) as e:
        raise app.UsageError(f"--cell_json={text}: {e}") from None
    return fidelity.Cell(name=name, group="extra", spec=spec, graph_hash=spec.canonical_hash())


def main(argv):
    fv = flags.FLAGS
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    try:
        cells = fidelity.load_cells(fv.cells) + [extra_cell(text) for text in fv.cell_json]
        record = ground_truth.read_record(fv.output_json)
    except fidelity.FidelityError as e:
        raise app.UsageError(str(e)) from None
    if fv.chosen_steps is not None:
        record["chosen_steps"] = fv.chosen_steps
        write_json(fv.output_json, record)
    if not fv.report_only:
        if not fv.tf_initial_checkpoint:
            raise app.UsageError("--tf_initial_checkpoint is required: the checkpoint every cell starts from")
        work = copy.deepcopy(fv)
        work.train_logdir = fv.train_logdir or fv.runs_dir
        with rerank_main._placeholder_cell() as placeholder:  # each run replaces it
            work.dense_prediction_cell_json = str(placeholder)
            work.context = "dpc"
            template = train_main.config_from_flags(work)
        try:
            record = ground_truth.run_ground_truth(
                template, cells, fv.names or [c.name for c in cells], [int(s) for s in fv.seeds],
                fv.output_json, fv.runs_dir, fv.cells, "python bench/fidelity_truth.py " + " ".join(sys.argv[1:]),
                say=lambda line: print(line, flush=True), reuse_from=fv.reuse_runs_from,
            )
        except fidelity.FidelityError as e:
            raise app.UsageError(cli.flag_message(str(e), fv)) from None
    print("\n".join(ground_truth.report_lines(record)))
    print("# command: python bench/fidelity_truth.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    app.run(main)

r"""Re-ranks a search's best cells by training them end to end: the paper's step after the proxy.

    python -m deeplab_dpc.rerank --search_dir=runs/search --top_k=10 \
        --flagfile=experiments/camvid/mobilenet_v2_dpc.flags [--include_reference] [--spread_k=5]

The flags are ``deeplab_dpc.train``'s (a training flagfile works unchanged;
its cell, if any, is replaced by each candidate's), plus --search_dir,
--top_k, --spread_k, --include_reference and the evaluation's --eval_scales,
--add_flipped_images and --eval_batch_size (--eval_split, default val, and
--eval_crop_size are train's). Each of the top K distinct cells by proxy mIoU
trains in ``<search_dir>/rerank/trial_<number>`` (or under --train_logdir),
starting from the feature cache's backbone checkpoint unless
--tf_initial_checkpoint is given, and is scored on --eval_split as
``deeplab_dpc.eval`` scores it. Full scores are recorded in the study; the
winner is written to ``<search_dir>/best_cell.json`` for ``train
--dense_prediction_cell_json``. Rerunning the same command skips recorded
cells and resumes a run that was cut short.
"""

from __future__ import annotations

import copy
import importlib.resources
import os
import sys

from absl import app, flags

from deeplab_dpc import cli  # first: it quiets TensorFlow's start-up (console.py)
from deeplab_dpc import train as train_main  # noqa: E402


def define_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
    train_main.define_flags(fv)
    f = dict(flag_values=fv)
    flags.DEFINE_string(
        "search_dir", None, "The search whose cells are re-ranked (its study and config).", **f
    )
    flags.DEFINE_integer("top_k", 10, "Distinct cells to train end to end, best proxy mIoU first.", **f)
    flags.DEFINE_boolean(
        "include_reference",
        False,
        "Also re-rank the published Cityscapes cell and the ASPP-equivalent cell if the study has them.",
        **f,
    )
    flags.DEFINE_integer(
        "spread_k",
        0,
        "Also train this many cells spread evenly over the rest of the proxy ranking (best to worst), "
        "so that the proxy-vs-full rank correlation covers the whole score range.",
        **f,
    )
    flags.DEFINE_list("eval_scales", ["1.0"], "Inference scales of the full score, comma separated.", **f)
    flags.DEFINE_boolean("add_flipped_images", False, "Also average left-right flipped images.", **f)
    flags.DEFINE_integer("eval_batch_size", 1, "Images per evaluation batch.", **f)


def _placeholder_cell():
    """The packaged published cell's file: lets train's flag parsing build a DPC model that each run
    then gives its own cell."""
    from deeplab_dpc.nas.space import PUBLISHED_SPEC  # noqa: PLC0415

    return importlib.resources.as_file(
        importlib.resources.files("deeplab_dpc.nas").joinpath("specs", PUBLISHED_SPEC)
    )


def config_from_flags(fv: flags.FlagValues):
    """Flags -> ``RerankConfig``; every error is an ``app.UsageError`` naming its flag."""
    import dataclasses  # noqa: PLC0415

    from deeplab_dpc.nas import rerank as rerank_lib  # noqa: PLC0415

    if not fv.search_dir:
        raise app.UsageError("--search_dir is required")
    if fv.top_k < 1:
        raise app.UsageError(f"--top_k must be a positive integer, got {fv.top_k}")
    if fv.context not in (None, "dpc"):
        raise app.UsageError(
            f"--context={fv.context}: re-ranking trains each cell as the model's Dense Prediction Cell; drop the flag"
        )
    try:
        search_config = rerank_lib.load_search_config(fv.search_dir)
    except ValueError as e:
        raise app.UsageError(cli.flag_message(str(e), fv)) from None
    notes = []
    if fv.dense_prediction_cell_json:
        notes.append(f"--dense_prediction_cell_json={fv.dense_prediction_cell_json} is replaced by each cell")
    # train's flags, parsed by train itself, with the runs' root folder and a stand-in cell.
    work = copy.deepcopy(fv)
    work.train_logdir = fv.train_logdir or os.path.join(
        os.path.abspath(fv.search_dir), rerank_lib.RUNS_FOLDER
    )
    with _placeholder_cell() as placeholder:
        work.dense_prediction_cell_json = str(placeholder)
        work.context = "dpc"
        template = train_main.config_from_flags(work)
    if not fv.tf_initial_checkpoint:
        try:
            path, note = rerank_lib.initial_checkpoint_from_cache(search_config, template.model)
            notes.append(note)
            if path:
                template = dataclasses.replace(template, tf_initial_checkpoint=path)
        except ValueError as e:
            raise app.UsageError(cli.flag_message(str(e), fv)) from None
    try:
        return rerank_lib.RerankConfig(
            search_dir=fv.search_dir,
            train=template,
            top_k=fv.top_k,
            include_reference=fv.include_reference,
            spread_k=fv.spread_k,
            eval_split=fv.eval_split or "val",
            eval_crop_size=cli.parse_pair(fv.eval_crop_size, "eval_crop_size"),
            eval_scales=cli.parse_floats(fv.eval_scales, "eval_scales"),
            add_flipped_images=fv.add_flipped_images,
            eval_batch_size=fv.eval_batch_size,
            notes=tuple(notes),
        )
    except ValueError as e:
        raise app.UsageError(cli.flag_message(str(e), fv)) from None


def run(config, fv: flags.FlagValues = flags.FLAGS, verbose: int | str = "auto") -> dict:
    """Runs the re-ranking; settings that contradict earlier runs are an ``app.UsageError`` naming flags."""
    from deeplab_dpc.nas import rerank as rerank_lib  # noqa: PLC0415
    from deeplab_dpc.training.config import ResumeMismatch  # noqa: PLC0415

    try:
        return rerank_lib.run_rerank(config, verbose=verbose)
    except (ResumeMismatch, rerank_lib.SettingsMismatch) as e:
        raise app.UsageError(cli.flag_message(str(e), fv)) from None


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    config = config_from_flags(flags.FLAGS)
    try:
        run(config)
    except KeyboardInterrupt:
        sys.stderr.write(
            "\ninterrupted: run the same command again to continue (recorded cells are skipped, "
            "a cut-short run resumes from its checkpoint)\n"
        )
        sys.exit(130)


def console_main():
    define_flags()
    app.run(main)


if __name__ == "__main__":
    console_main()

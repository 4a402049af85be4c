r"""Copies a search into a new folder: the same proxy trials, for a re-ranking with other settings.

    python -m deeplab_dpc.copy_search --search_dir=runs/search --output_dir=runs/search_ema \
        [--keep_full_scores]

A study keeps one re-ranking's settings (``rerank`` refuses other flags, so
full scores made in different ways never mix); re-rank the copy instead. The
copy holds every trial with its number, scores and attributes, the study's
attributes without the re-ranking's full scores (unless --keep_full_scores),
a ``search_config.json`` of its own and the RL controller's state, so the
copy can also be searched further. ``output_dir`` must not exist. See
``deeplab_dpc.nas.search_copy``.
"""

from __future__ import annotations

import sys

from absl import app, flags

from deeplab_dpc import cli  # first: it quiets TensorFlow's start-up (console.py)


def define_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
    f = dict(flag_values=fv)
    flags.DEFINE_string("search_dir", None, "The search to copy (its search_config.json and study).", **f)
    flags.DEFINE_string("output_dir", None, "The new search folder (must not exist).", **f)
    flags.DEFINE_boolean(
        "keep_full_scores",
        False,
        "Also copy the re-ranking's full scores and settings (a re-ranking of the copy then has to use the "
        "same flags).",
        **f,
    )


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    fv = flags.FLAGS
    for name in ("search_dir", "output_dir"):
        if not fv[name].value:
            raise app.UsageError(f"--{name} is required")
    from deeplab_dpc.nas.search_copy import copy_search  # noqa: PLC0415

    try:
        summary = copy_search(fv.search_dir, fv.output_dir, keep_full_scores=fv.keep_full_scores)
    except ValueError as e:
        raise app.UsageError(cli.flag_message(str(e), fv)) from None
    states = ", ".join(f"{n} {s.lower()}" for s, n in sorted(summary["states"].items()))
    sys.stdout.write(f"copied {summary['trials']} trials ({states or 'none'}) to {summary['output_dir']}\n")
    if summary["interrupted"]:
        sys.stdout.write(
            f"note: trials {summary['interrupted']} were running in the source; the copy records them as "
            "interrupted\n"
        )
    if summary["full_scores_dropped"]:
        sys.stdout.write(
            f"left out {summary['full_scores_dropped']} re-ranked full scores (--keep_full_scores)\n"
        )


def console_main():
    define_flags()
    app.run(main)


if __name__ == "__main__":
    console_main()

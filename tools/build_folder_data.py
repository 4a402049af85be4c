"""Converts any folder of images (and labels) to DeepLab TFRecord shards.

For a user-defined dataset: images in one folder, class-id label PNGs (grey
or palette) in another, a list of names (or every image of the folder), and a
dataset descriptor (a built-in name or a JSON file, see
``deeplab_dpc.data.datasets``) that gives the number of classes and the ignore
label every label is checked against.

Usage::

    python -m tools.build_folder_data --image_dir=my/images --label_dir=my/labels \\
        --list_file=my/train.txt --split=train --dataset=my/dataset.json \\
        --output_dir=/data/my/tfrecord [--label_map=11:255]

Without ``--label_dir`` the examples have no labels (a test split); without
``--list_file`` every image of ``--image_dir`` is taken, sorted by name.
``--label_map`` remaps raw label values (``src:dst`` pairs) before the check.

The conversion itself is ``deeplab_dpc.data.folder_conversion``; this is its command line.
"""

from __future__ import annotations

from absl import app, flags

from deeplab_dpc.data.folder_conversion import FolderConfig, convert_folder
from tools import conversion_cli


def parse_label_map(items) -> tuple[tuple[int, int], ...]:
    """``["11:255", "12:0"]`` -> ``((11, 255), (12, 0))``; ValueError naming a bad item."""
    pairs = []
    for item in items:
        try:
            source, target = (int(part) for part in item.split(":"))
        except ValueError:
            raise ValueError(f"--label_map item {item!r} is not src:dst (two integers)") from None
        if not 0 <= target <= 255:
            raise ValueError(f"--label_map item {item!r}: target must be in 0..255")
        pairs.append((source, target))
    return tuple(pairs)


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Defines this tool's flags (called by ``__main__``; tests pass their own FlagValues)."""
    fv = flag_values
    flags.DEFINE_string("image_dir", None, "Folder of images.", flag_values=fv)
    flags.DEFINE_string("label_dir", None, "Folder of label PNGs (omit for unlabelled examples).", flag_values=fv)
    flags.DEFINE_string("list_file", None, "Names to convert, one a line (default: every image).", flag_values=fv)
    flags.DEFINE_string("split", None, "Split name of the shards.", flag_values=fv)
    flags.DEFINE_string("dataset", None, "Built-in dataset name or JSON descriptor (classes, ignore label).",
                        flag_values=fv)
    flags.DEFINE_string("label_suffix", ".png", "Label file ending after the name.", flag_values=fv)
    flags.DEFINE_list("label_map", [], "Raw label value remapping, src:dst pairs (e.g. 11:255).", flag_values=fv)
    conversion_cli.define_sharding_flags(fv, num_shards=4, num_shards_help="Shards.")
    flags.mark_flags_as_required(["image_dir", "split", "dataset", "output_dir"], flag_values=fv)


def config_from_flags(fv: flags.FlagValues) -> FolderConfig:
    """The flags as a ``FolderConfig``; a ``ValueError`` names the flag (``run_tool`` makes it a usage error)."""
    return FolderConfig(
        image_dir=fv.image_dir,
        label_dir=fv.label_dir,
        list_file=fv.list_file,
        split=fv.split,
        dataset=fv.dataset,
        output_dir=fv.output_dir,
        label_suffix=fv.label_suffix,
        label_map=parse_label_map(fv.label_map),
        sharding=conversion_cli.sharding_from_flags(fv),
    )


def main(argv, flag_values: flags.FlagValues = flags.FLAGS):
    conversion_cli.run_tool(argv, flag_values, config_from_flags, convert_folder)


if __name__ == "__main__":
    define_flags()
    app.run(main)

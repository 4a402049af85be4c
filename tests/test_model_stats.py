"""The model_stats entry point: JSON output and clear errors for bad flags."""

import json
import os
import pathlib
import subprocess
import sys

import pytest
from absl import app, flags

from deeplab_dpc import model_stats

ROOT = pathlib.Path(__file__).resolve().parents[1]
PUBLISHED = str(ROOT / "experiments/specs/dense_prediction_cell_branch5_top1_cityscapes.json")
REQUIRED = ("crop_size", "output_stride", "feature_map_size", "params", "macs")


def _parse(*args):
    """Fresh flags (never the global FLAGS), parsed from ``args``."""
    fv = flags.FlagValues()
    model_stats.define_flags(fv)
    fv(["model_stats", *args])
    return fv


def _subprocess(*args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run(
        [sys.executable, "-m", "deeplab_dpc.model_stats", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _check_tree(stats):
    for key in REQUIRED:
        assert key in stats
    for key in ("params", "macs"):
        tree = stats[key]
        assert set(tree) >= {"total", "backbone", "context", "decoder", "logits"}
        assert set(tree["context"]) >= {"total", "branches", "concat_projection"}


def test_published_cell_json_via_subprocess():
    result = _subprocess(
        "--model_variant=mobilenet_v2",
        f"--dense_prediction_cell_json={PUBLISHED}",
        "--crop_size=1025,2049",
        "--output_stride=16",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    stats = json.loads(result.stdout)  # One JSON object and nothing else on stdout.
    _check_tree(stats)
    assert stats["crop_size"] == [1025, 2049]
    assert stats["output_stride"] == 16
    assert stats["feature_map_size"] == [65, 129]
    assert stats["context"] == "dpc"
    assert len(stats["params"]["context"]["branches"]) == 5
    # The cell's convs at 65x129 on 320 backbone channels (see tests/analysis/test_stats.py).
    area = 65 * 129
    assert stats["macs"]["context"]["branches"][0] == area * (9 * 320 + 320 * 256)
    assert stats["macs"]["context"]["concat_projection"] == area * 1280 * 256
    assert result.stdout.startswith("{\n ")  # indent 1


def test_aspp_with_decoder_in_process():
    stats = model_stats.run(_parse("--context=aspp", "--crop_size=129,129", "--decoder_output_stride=4"))
    json.dumps(stats)  # JSON-able
    _check_tree(stats)
    assert stats["feature_map_size"] == [9, 9]
    assert stats["low_level_size"] == [33, 33]
    assert [b["name"] for b in stats["context_branches"]] == ["image_pooling", "aspp0", "aspp1", "aspp2", "aspp3"]
    assert set(stats["params"]["decoder"]) == {"total", "feature_projection0", "decoder_conv0", "decoder_conv1"}
    assert stats["logits_size"] == [33, 33]


def test_square_crop_and_dpc_default_context():
    fv = _parse(f"--dense_prediction_cell_json={PUBLISHED}", "--crop_size=513")
    config, crop = model_stats.config_from_flags(fv)
    assert crop == (513, 513)
    assert config.context == "dpc"
    assert len(config.dense_prediction_cell.branches) == 5


@pytest.mark.parametrize(
    "args, flag",
    [
        (("--context=aspp", "--crop_size=abc"), "--crop_size"),
        (("--context=aspp", "--crop_size=1,2,3"), "--crop_size"),
        (("--context=aspp", "--crop_size=0,513"), "--crop_size"),
        (("--context=dpc",), "--dense_prediction_cell_json"),
        ((), "--context"),
        ((f"--dense_prediction_cell_json={PUBLISHED}", "--output_stride=32"), "--output_stride"),
        ((f"--dense_prediction_cell_json={PUBLISHED}", "--context=aspp"), "--dense_prediction_cell_json"),
        (("--dense_prediction_cell_json=/no/such/spec.json",), "--dense_prediction_cell_json"),
        (("--context=aspp", "--model_variant=resnet_9000"), "--model_variant"),
        (("--context=aspp", "--decoder_output_stride=8"), "--decoder_output_stride"),
        (("--context=aspp", "--num_classes=0"), "--num_classes"),
        (("--context=none", "--atrous_rates=6"), "--atrous_rates"),
    ],
)
def test_bad_flags_name_the_flag(args, flag):
    with pytest.raises(app.UsageError, match=flag):
        model_stats.config_from_flags(_parse(*args))


def test_bad_depth_multiplier_for_xception_names_the_flag():
    fv = _parse("--context=aspp", "--model_variant=xception_65", "--depth_multiplier=0.5", "--crop_size=65")
    with pytest.raises(app.UsageError, match="--depth_multiplier"):
        model_stats.run(fv)


def test_bad_enum_value_is_a_flag_error():
    with pytest.raises(flags.IllegalFlagValueError, match="--context"):
        _parse("--context=bogus")


def test_bad_flag_exits_nonzero_without_traceback():
    result = _subprocess("--context=aspp", "--crop_size=abc")
    assert result.returncode != 0
    assert "--crop_size='abc'" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""

"""The console: TensorFlow's start-up lines and INFO records stay off it, real warnings and errors stay on."""

import logging
import os
import pathlib
import re
import subprocess
import sys
import types

import pytest

from deeplab_dpc import console, synthetic

ROOT = pathlib.Path(__file__).resolve().parents[1]

# What `import tensorflow` (2.21, CPU build, no NVIDIA driver) and its first device query write.
NO_DRIVER_STARTUP = """\
WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
I0000 00:00:1796128326.795010    4620 port.cc:153] oneDNN custom operations are on. You may see slightly \
different numerical results due to floating-point round-off errors from different computation orders.
I0000 00:00:1796128326.795419    4620 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will not be used.
I0000 00:00:1796128326.862996    4620 cpu_feature_guard.cc:227] This TensorFlow binary is optimized to use \
available CPU instructions in performance-critical operations.
To enable the following instructions: AVX2 AVX512F AVX512_VNNI FMA, in other operations, rebuild TensorFlow \
with the appropriate compiler flags.
E0000 00:00:1796128329.264334    4620 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: \
Failed call to cuInit: UNKNOWN ERROR (303)
W0000 00:00:1796128329.300000    4620 some_op.cc:12] a real warning
E0000 00:00:1796128329.300001    4620 some_op.cc:13] a real error
/x/y.py:3: UserWarning: a Python warning
"""
# A C++ log record (TensorFlow's): severity, date, time, thread, file.cc:line].
CPP_RECORD = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ \S+\.cc:\d+\] ")


def test_startup_noise_is_dropped_and_everything_else_kept():
    kept = console.startup_lines_to_keep(NO_DRIVER_STARTUP.splitlines(keepends=True))
    assert kept == [
        "W0000 00:00:1796128329.300000    4620 some_op.cc:12] a real warning\n",
        "E0000 00:00:1796128329.300001    4620 some_op.cc:13] a real error\n",
        "/x/y.py:3: UserWarning: a Python warning\n",
    ]


def test_cuinit_failure_is_kept_where_a_driver_is_installed():
    lines = [line for line in NO_DRIVER_STARTUP.splitlines(keepends=True) if "Could not find cuda drivers" not in line]
    kept = console.startup_lines_to_keep(lines)
    assert any("failed call to cuInit" in line for line in kept)


@pytest.mark.parametrize(
    "env, expected",
    [({}, False), ({"DEEPLAB_DPC_VERBOSE": "1"}, True), ({"DEEPLAB_DPC_VERBOSE": "0"}, False),
     ({"TF_CPP_MIN_LOG_LEVEL": "0"}, True), ({"TF_CPP_MIN_LOG_LEVEL": "2"}, False)],
)
def test_verbose_when_asked(monkeypatch, env, expected):
    monkeypatch.delenv("DEEPLAB_DPC_VERBOSE", raising=False)
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert console.verbose() is expected


def _record(name, level, pathname):
    return logging.LogRecord(name, level, pathname, 1, "message", None, None)


def test_tensorflow_info_records_are_filtered_ours_and_warnings_pass(monkeypatch, tmp_path):
    fake_tf = types.ModuleType("tensorflow")
    fake_tf.__file__ = str(tmp_path / "tensorflow" / "__init__.py")
    monkeypatch.setitem(sys.modules, "tensorflow", fake_tf)
    in_tf = str(tmp_path / "tensorflow" / "python" / "saved_model" / "signature_serialization.py")
    keep = console._TensorFlowInfoFilter().filter
    from absl import logging as absl_logging

    monkeypatch.setattr(absl_logging, "get_verbosity", lambda: 0)
    assert not keep(_record("tensorflow", logging.INFO, "/anywhere.py"))
    assert not keep(_record("absl", logging.INFO, in_tf))
    assert keep(_record("absl", logging.WARNING, in_tf))
    assert keep(_record("tensorflow", logging.ERROR, "/anywhere.py"))
    assert keep(_record("absl", logging.INFO, str(ROOT / "deeplab_dpc" / "train.py")))
    monkeypatch.setattr(absl_logging, "get_verbosity", lambda: 1)  # --verbosity=1
    assert keep(_record("absl", logging.INFO, in_tf))


def test_a_tool_prints_no_tensorflow_startup_lines(tmp_path):
    descriptor = synthetic.write_segnet_folders(tmp_path / "data", {"train": 2}, 16, 16, 3)
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", console.VERBOSE_ENV)}
    env["PYTHONPATH"] = str(ROOT)
    data = tmp_path / "data"
    result = subprocess.run(
        [sys.executable, "-m", "tools.build_folder_data", f"--image_dir={data / 'train'}",
         f"--label_dir={data / 'trainannot'}", f"--list_file={data / 'train.txt'}", "--split=train",
         f"--dataset={descriptor}", f"--output_dir={tmp_path / 'out'}", "--num_shards=1"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stderr.splitlines()
    noise = [line for line in lines if CPP_RECORD.match(line) or re.search(
        r"absl::InitializeLog|oneDNN|cuda|cuInit|cpu_feature_guard|TensorFlow binary", line, re.IGNORECASE)]
    assert not noise, result.stderr
    assert any(line.startswith("train: 2 examples in 1 shards") for line in lines), result.stderr  # plain


# An entry point in miniature: imports deeplab_dpc.cli first, then logs as the library does.
ENTRY_POINT = """
import logging
from absl import app
import deeplab_dpc.cli

def main(argv):
    logging.getLogger("deeplab_dpc.training.train_lib").info("step %d/%d loss %.4f", 25, 100, 0.4113)
    logging.getLogger("deeplab_dpc.nas.worker").warning("trial %d was interrupted", 3)
    logging.getLogger("tensorflow").warning("a TensorFlow warning")
    logging.getLogger("tensorflow").info("a TensorFlow INFO record")

app.run(main)
"""
ABSL_PREFIX = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ \S+:\d+\] ")


def _run_entry_point(*flags):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    result = subprocess.run(
        [sys.executable, "-c", ENTRY_POINT, *flags], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return result.stderr.splitlines()


def test_entry_points_print_our_records_plainly_and_mark_warnings():
    lines = _run_entry_point()
    assert lines[:2] == ["step 25/100 loss 0.4113", "WARNING: trial 3 was interrupted"]
    # TensorFlow's records keep absl's prefix (and its INFO records stay hidden).
    assert len(lines) == 3 and ABSL_PREFIX.match(lines[2]) and lines[2].endswith("] a TensorFlow warning")


def test_absl_flags_still_choose_what_shows_and_bring_the_prefix_back():
    assert _run_entry_point("--verbosity=-1")[0] == "WARNING: trial 3 was interrupted"  # no progress line
    for flag in ("--verbosity=1", "--showprefixforinfo"):
        lines = _run_entry_point(flag)
        assert ABSL_PREFIX.match(lines[0]) and lines[0].endswith("] step 25/100 loss 0.4113"), (flag, lines)
        assert ABSL_PREFIX.match(lines[1]) and lines[1].startswith("W"), (flag, lines)


def test_without_stderr_lines_drops_only_matching_lines(capfd, monkeypatch):
    monkeypatch.delenv(console.VERBOSE_ENV, raising=False)
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    notices = (
        b"W0000 00:00:1796129430.460755   15583 tf_tfl_flatbuffer_helpers.cc:364] Ignored output_format.\n"
        b"W0000 00:00:1796129430.460817   15583 tf_tfl_flatbuffer_helpers.cc:367] Ignored drop_control_dependency.\n"
    )
    with console.without_stderr_lines(console.TFLITE_CONVERTER_NOTICES):
        os.write(2, b"before\n" + notices + b"E0000 00:00:1.2  1 x.cc:1] a real error\n")
    assert capfd.readouterr().err == "before\nE0000 00:00:1.2  1 x.cc:1] a real error\n"
    # When the block fails, everything it wrote is passed on.
    with pytest.raises(RuntimeError):
        with console.without_stderr_lines(console.TFLITE_CONVERTER_NOTICES):
            os.write(2, notices)
            raise RuntimeError
    assert capfd.readouterr().err == notices.decode()


def test_progress_bars_are_live_on_a_terminal_and_one_line_in_a_file(tmp_path):
    class Terminal:
        def isatty(self):
            return True

    assert console.progress_verbosity(Terminal()) == 1
    with open(tmp_path / "log", "w") as f:
        assert console.progress_verbosity(f) == 2
    assert console.progress_verbosity(object()) == 2  # a stream that cannot tell


def test_durations_read_in_seconds_minutes_or_hours():
    assert [console.format_duration(s) for s in (44.6, 119, 600.0, 7199, 7500)] == [
        "45 s", "119 s", "10 min", "119 min", "2 h 05 min"]
    assert console.format_duration(float("nan")) == "?" and console.format_duration(-3) == "0 s"

"""The same training entry runs on JAX without TensorFlow, and under MirroredStrategy.

Each runs in a subprocess: the Keras backend and TensorFlow's devices are
fixed at import time.
"""

import importlib.util
import json
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent(
    """
    import json, sys
    {prelude}
    from deeplab_dpc import synthetic
    from deeplab_dpc.core.model import ModelConfig
    from deeplab_dpc.data.batches import DataConfig
    from deeplab_dpc.training.config import TrainConfig
    from deeplab_dpc.training.train_lib import train

    root, logdir = sys.argv[1], sys.argv[2]
    descriptor = synthetic.write_segnet_folders(root, {{"train": 8}}, 48, 48, num_classes=3)
    config = TrainConfig(
        model=ModelConfig(num_classes=3, context="aspp", depth_multiplier=0.35),
        data=DataConfig(dataset=descriptor, dataset_dir=root, dataset_format="folder", loader="{loader}"),
        train_logdir=logdir, train_crop_size=(48, 48), train_batch_size=4, min_scale_factor=1.0,
        max_scale_factor=1.0, base_learning_rate=0.01, training_number_of_steps=6, log_steps=3,
        save_interval_secs=0, num_clones={num_clones},
    )
    summary = train(config, verbose=0)
    print(json.dumps({{"step": summary["step"], "losses": [r["loss"] for r in summary["history"]],
                      "tf_loaded": "tensorflow" in sys.modules and sys.modules["tensorflow"] is not None}}))
    """
)


def _run(tmp_path, env_extra, **fmt):
    env = dict(os.environ, **env_extra)
    code = SCRIPT.format(**fmt)
    proc = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "data"), str(tmp_path / "run")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="JAX is not installed")
def test_trains_on_jax_with_tensorflow_blocked(tmp_path):
    result = _run(
        tmp_path,
        {"KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"},
        prelude="sys.modules['tensorflow'] = None  # as on a JAX-only GPU host",
        loader="numpy",
        num_clones=1,
    )
    # An epoch of the NumPy loader is at most its length (8 / 4 = 2 steps): 3 log points.
    assert result["step"] == 6 and len(result["losses"]) == 3
    assert not result["tf_loaded"]
    assert (tmp_path / "run" / "ckpt-00000006.weights.h5").is_file()


def test_mirrored_strategy_over_two_devices(tmp_path):
    prelude = (
        "import tensorflow as tf; cpu = tf.config.list_physical_devices('CPU')[0]; "
        "tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)"
    )
    result = _run(tmp_path, {"KERAS_BACKEND": "tensorflow"}, prelude=prelude, loader="tfdata", num_clones=2)
    assert result["step"] == 6 and all(l == l for l in result["losses"])

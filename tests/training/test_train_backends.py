"""The same training entry runs on JAX and on PyTorch without TensorFlow, and under MirroredStrategy.

Each runs in a subprocess: the Keras backend and TensorFlow's devices are
fixed at import time.
"""

import importlib.util
import json
import math
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
    import keras
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
    print(json.dumps({{"backend": keras.backend.backend(), "step": summary["step"],
                      "losses": [r["loss"] for r in summary["history"]],
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


BLOCKED_TF_ENV = {
    "jax": {"KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"},
    # One torch thread: the model is tiny, and a second thread would wait on a core a job beside the tests
    # keeps busy.
    "torch": {"KERAS_BACKEND": "torch", "OMP_NUM_THREADS": "1"},
}


@pytest.mark.parametrize(
    "backend",
    [
        # 2-3 min on 2 cores; the JAX layer, loader and compiled-eval tests stay in the default run.
        pytest.param("jax", marks=pytest.mark.slow),
        "torch",  # ~10 s; an extra (pip install -e .[torch])
    ],
)
def test_trains_with_tensorflow_blocked(tmp_path, backend):
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed")
    result = _run(
        tmp_path,
        BLOCKED_TF_ENV[backend],
        prelude="sys.modules['tensorflow'] = None  # as on a GPU host with JAX or PyTorch only",
        loader="numpy",
        num_clones=1,
    )
    assert result["backend"] == backend
    # An epoch of the NumPy loader is at most its length (8 / 4 = 2 steps): 3 log points.
    assert result["step"] == 6 and len(result["losses"]) == 3
    assert all(math.isfinite(loss) for loss in result["losses"]), result["losses"]
    assert not result["tf_loaded"]
    assert (tmp_path / "run" / "ckpt-00000006.weights.h5").is_file()


@pytest.mark.slow  # ~70 s on 2 cores
def test_mirrored_strategy_over_two_devices(tmp_path):
    prelude = (
        "import tensorflow as tf; cpu = tf.config.list_physical_devices('CPU')[0]; "
        "tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)"
    )
    result = _run(tmp_path, {"KERAS_BACKEND": "tensorflow"}, prelude=prelude, loader="tfdata", num_clones=2)
    # tf.data streams endlessly: epochs of log_steps=3, so 2 log points, each checkpointed (save_interval_secs=0).
    assert result["step"] == 6 and len(result["losses"]) == 2
    saved = sorted(n for n in os.listdir(tmp_path / "run") if n.startswith("ckpt-"))
    assert saved == ["ckpt-00000003.weights.h5", "ckpt-00000006.weights.h5"]


NAN_SCRIPT = textwrap.dedent(
    """
    import json, os, re, sys
    sys.modules['tensorflow'] = None
    import numpy as np
    from deeplab_dpc import synthetic
    from deeplab_dpc.core.model import ModelConfig
    from deeplab_dpc.data.batches import DataConfig
    from deeplab_dpc.training import checkpoints, train_lib
    from deeplab_dpc.training.config import TrainConfig

    real = train_lib.make_batches
    fetched = [0]

    def poisoned(*args, **kwargs):  # batches fetched after the 5th hold NaN images
        dataset = real(*args, **kwargs)
        get = type(dataset).__getitem__

        class Poisoned(type(dataset)):
            def __getitem__(self, index):
                x, y = get(self, index)
                fetched[0] += 1
                return (x * np.nan if fetched[0] > 5 else x), y

        dataset.__class__ = Poisoned
        return dataset

    train_lib.make_batches = poisoned
    root, logdir = sys.argv[1], sys.argv[2]
    descriptor = synthetic.write_segnet_folders(root, {"train": 8}, 48, 48, num_classes=3)
    config = TrainConfig(
        model=ModelConfig(num_classes=3, context="aspp", depth_multiplier=0.35),
        data=DataConfig(dataset=descriptor, dataset_dir=root, dataset_format="folder", loader="numpy", num_workers=1),
        train_logdir=logdir, train_crop_size=(48, 48), train_batch_size=4, min_scale_factor=1.0,
        max_scale_factor=1.0, base_learning_rate=0.01, training_number_of_steps=40, log_steps=2,
        save_interval_secs=0,
    )
    try:
        train_lib.train(config, verbose=0)
        message = None
    except train_lib.TrainingDiverged as error:
        message = str(error)
    print(json.dumps({"message": message, "saved": [s for s, _ in checkpoints.list_checkpoints(logdir)]}))
    """
)


@pytest.mark.slow  # ~90 s: compiling a JAX train step on CPU; the async step count is covered above by default
@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="JAX is not installed")
def test_nan_stops_training_on_jax_with_asynchronous_callbacks(tmp_path):
    """On JAX the loss is checked off the training thread; a NaN still stops the run and keeps the last good checkpoint."""
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [sys.executable, "-c", NAN_SCRIPT, str(tmp_path / "data"), str(tmp_path / "run")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["message"] is not None, "training ran to the end on NaN images"
    step = int(__import__("re").search(r"at step (\d+)", result["message"]).group(1))
    # Fetch 1 is the batch norm warm start; steps from the 4th or 5th on see NaN (loader threads reorder fetches).
    assert 3 <= step <= 6, result
    good = max(result["saved"])
    assert good < step and f"ckpt-{good:08d}.weights.h5" in result["message"]
    assert result["saved"] == list(range(2, good + 1, 2)), "nothing saved at or after the NaN"

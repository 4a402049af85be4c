"""Reruns the backend-neutral layer tests under the JAX and PyTorch backends, where they are installed,
and checks the Dense Prediction Cell computes on PyTorch what it computes on TensorFlow.

The Keras backend is fixed at import time, so each backend runs in a subprocess. PyTorch is an extra
(``pip install -e .[torch]``): without it, its tests skip.
"""

import importlib.util
import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
BACKEND_NEUTRAL = ["tests/core/test_layers.py", "tests/core/test_drop_path.py"]
BACKEND_ENV = {"jax": {"KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}, "torch": {"KERAS_BACKEND": "torch"}}


def _skip_without(module):
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed")


@pytest.mark.parametrize("backend", sorted(BACKEND_ENV))
@pytest.mark.parametrize("path", BACKEND_NEUTRAL)
def test_layer_tests_pass_on_other_backends(path, backend):
    _skip_without(backend)
    env = dict(os.environ, **BACKEND_ENV[backend])
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", path],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout.splitlines()[-1]


# Builds a cell of every op (dilated separable convs, a 1x1 conv, pyramid pooling, branches that read
# branches) with the proxy's fused batch norms; on TensorFlow gives it random weights and batch norm
# statistics and saves them, on the other backend loads them. Saves, for one input: the inference
# output; one training call's output (batch statistics; no dropout); the moving statistics after it; and
# the gradients of a fixed projection of that output.
DPC_SCRIPT = textwrap.dedent(
    """
    import sys
    import keras
    import numpy as np
    from deeplab_dpc.core.dense_prediction_cell import DensePredictionCell

    folder, backend = sys.argv[1], keras.backend.backend()
    spec = [
        {"op": "conv", "kernel": 3, "rate": [1, 6], "input": -1},
        {"op": "conv", "kernel": 3, "rate": [3, 1], "input": 0},
        {"op": "pyramid_pooling", "grid_size": [2, 2], "input": -1},
        {"op": "conv", "kernel": 1, "rate": [1, 1], "input": 1},
        {"op": "pyramid_pooling", "grid_size": [1, 1], "input": 0},
    ]
    features = keras.Input((9, 11, 6))
    cell = DensePredictionCell(
        spec, filters=8, concat_channels=8, dropout_rate=0.0, batch_norm_momentum=0.5, fused_batch_norm=True
    )
    model = keras.Model(features, cell(features))
    x = np.load(folder + "/x.npy")
    if backend == "tensorflow":
        rng = np.random.default_rng(0)
        for w in model.weights:
            positive = w.path.endswith(("gamma", "moving_variance"))
            w.assign(rng.uniform(0.5, 1.5, w.shape) if positive else rng.uniform(-0.5, 0.5, w.shape))
        model.save_weights(folder + "/dpc.weights.h5")
    else:
        model.load_weights(folder + "/dpc.weights.h5")
    projection = np.random.default_rng(1).normal(size=(2, 9, 11, 8)).astype("float32")
    inference = model(x, training=False)
    if backend == "tensorflow":
        import tensorflow as tf
        with tf.GradientTape() as tape:
            training = model(x, training=True)
            loss = tf.reduce_sum(training * projection)
        grads = tape.gradient(loss, model.trainable_variables)
    else:
        import torch
        assert isinstance(inference, torch.Tensor)
        training = model(x, training=True)
        (training * torch.from_numpy(projection)).sum().backward()
        grads = [v.value.grad for v in model.trainable_variables]
    moving = [w for w in model.weights if "moving" in w.path]
    results = {
        "inference": inference,
        "training": training,
        "moving": keras.ops.concatenate([keras.ops.reshape(w, (-1,)) for w in moving]),
        "gradients": keras.ops.concatenate([keras.ops.reshape(g, (-1,)) for g in grads]),
    }
    for name, value in results.items():
        np.save(f"{folder}/{backend}_{name}.npy", keras.ops.convert_to_numpy(value))
    """
)


# Largest |torch - TensorFlow| over the largest |TensorFlow| value. Against a float64 run of the cell (the
# same weights and input), each backend's float32 result is off by about 1.6e-7 (inference: a few units
# of float32 rounding), 4e-6 and 8e-6 (TensorFlow's and torch's training call), 4e-6 and 7e-6 (moving
# statistics) and 3e-5 and 6e-5 (gradients) of its largest value: batch norms over few values (the
# 1x1 pyramid pooling has one per example) amplify rounding, most in the backward pass. The two backends
# differ from each other by as much; the bounds are 5-6x the larger of the two. A wrong padding, rate,
# pooling window, batch norm update or weight layout moves values by 1e-3 or more.
TOLERANCES = {"inference": 1e-6, "training": 4e-5, "moving": 4e-5, "gradients": 3e-4}


def test_the_cell_computes_on_torch_what_it_computes_on_tensorflow(tmp_path):
    """The same weights (saved on TensorFlow, loaded on torch) and input: the same outputs, batch norm
    updates and gradients, within float32 rounding (TensorFlow's batch norms are the fused op, torch's
    Keras' own)."""
    _skip_without("torch")
    np.save(tmp_path / "x.npy", np.random.default_rng(2).normal(size=(2, 9, 11, 6)).astype("float32"))
    for backend in ("tensorflow", "torch"):  # TensorFlow first: it writes the weights torch loads
        proc = subprocess.run(
            [sys.executable, "-c", DPC_SCRIPT, str(tmp_path)],
            cwd=REPO, env=dict(os.environ, KERAS_BACKEND=backend), capture_output=True, text=True,
            timeout=900,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
    for name, tolerance in TOLERANCES.items():
        want, got = (np.load(tmp_path / f"{backend}_{name}.npy") for backend in ("tensorflow", "torch"))
        assert want.shape == got.shape and np.isfinite(want).all(), name
        error = np.abs(got - want).max() / np.abs(want).max()
        assert error <= tolerance, f"{name}: torch is off TensorFlow by {error:.2e} of the largest value"

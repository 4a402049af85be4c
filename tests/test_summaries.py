"""The TensorFlow-free TensorBoard writer: what TensorBoard and TensorFlow read back."""

import os
import subprocess
import sys

import numpy as np
import pytest

from deeplab_dpc import summaries

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")


def _accumulator(logdir):
    acc = event_accumulator.EventAccumulator(str(logdir), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


def _scalars(acc, tag):
    # TensorBoard migrates legacy simple_value summaries to the scalars plugin's tensors.
    if tag in acc.Tags().get("scalars", []):
        return [(e.step, e.value) for e in acc.Scalars(tag)]
    return [(e.step, float(np.asarray(e.tensor_proto.float_val or [e.tensor_proto.double_val[0]])[0]))
            for e in acc.Tensors(tag)]


def test_scalars_and_images_read_back_by_tensorboard(tmp_path):
    summaries.write_scalars(tmp_path, 10, {"train/loss": 1.5, "train/learning_rate": 0.02})
    summaries.write_scalars(tmp_path, 20, {"train/loss": 0.75})
    rng = np.random.default_rng(0)
    batch = rng.integers(0, 256, (4, 6, 8, 3), dtype=np.uint8)
    grey = rng.integers(0, 256, (5, 7), dtype=np.uint8)
    summaries.write_images(tmp_path, 20, {"images/input": batch, "mask": grey}, max_outputs=2)

    files = [n for n in os.listdir(tmp_path) if n.startswith("events.out.tfevents.")]
    assert len(files) == 1, "one event file per process and folder"
    acc = _accumulator(tmp_path)
    assert _scalars(acc, "train/loss") == [(10, 1.5), (20, 0.75)]
    assert _scalars(acc, "train/learning_rate") == [(10, pytest.approx(0.02))]

    import cv2

    tags = acc.Tags()["images"]
    assert sorted(tags) == ["images/input/image/0", "images/input/image/1", "mask"]
    for i in range(2):
        (event,) = acc.Images(f"images/input/image/{i}")
        assert (event.step, event.height, event.width) == (20, 6, 8)
        decoded = cv2.imdecode(np.frombuffer(event.encoded_image_string, np.uint8), cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(decoded[..., ::-1], batch[i])  # lossless, RGB order kept
    (event,) = acc.Images("mask")
    np.testing.assert_array_equal(cv2.imdecode(np.frombuffer(event.encoded_image_string, np.uint8), 0), grey)


def test_records_pass_tensorflow_checksums(tmp_path):
    tf = pytest.importorskip("tensorflow")
    summaries.write_scalars(tmp_path, 3, {"a": -2.0})
    summaries.write_images(tmp_path, 4, {"b": np.zeros((2, 2, 3), np.uint8)})
    (name,) = os.listdir(tmp_path)
    events = list(tf.compat.v1.train.summary_iterator(str(tmp_path / name)))  # verifies every CRC
    assert events[0].file_version == "brain.Event:2"
    assert [(e.step, v.tag) for e in events[1:] for v in e.summary.value] == [(3, "a"), (4, "b")]
    assert events[1].summary.value[0].simple_value == -2.0


def test_writes_without_tensorflow(tmp_path):
    """A JAX host without TensorFlow still gets TensorBoard logs."""
    code = (
        "import sys; sys.modules['tensorflow'] = None\n"
        "from deeplab_dpc import summaries\n"
        f"summaries.write_scalars({str(tmp_path)!r}, 7, {{'eval/miou': 0.5}})\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    assert _scalars(_accumulator(tmp_path), "eval/miou") == [(7, 0.5)]


def test_bad_images_are_refused_with_the_tag(tmp_path):
    with pytest.raises(ValueError, match="'x'.*uint8"):
        summaries.write_images(tmp_path, 0, {"x": np.zeros((4, 4, 3), np.float32)})
    with pytest.raises(ValueError, match="'y'.*shape"):
        summaries.write_images(tmp_path, 0, {"y": np.zeros((4, 4, 2), np.uint8)})

"""Both preprocessing pipelines draw from the one augmentation definition: its scale set and flip chance."""

import numpy as np
import pytest

from deeplab_dpc.data import augmentation
from deeplab_dpc.data.augmentation import FLIP_PROBABILITY, PreprocessConfig
from deeplab_dpc.data.numpy_loader import preprocess_numpy

SIZE = 8
CONFIG = PreprocessConfig((SIZE, SIZE), min_scale_factor=0.5, max_scale_factor=1.0, scale_factor_step_size=0.5)
DRAWS = 300


def _sample():
    label = np.zeros((SIZE, SIZE, 1), np.uint8)
    label[:, SIZE // 2 :] = 1  # left half 0, right half 1: a flip shows
    image = np.repeat(np.arange(SIZE, dtype=np.uint8)[None, :, None] * 30, SIZE, axis=0).repeat(3, axis=2)
    return {"image": image, "label": label}


def _draw(label):
    """(scale, flipped) that produced a preprocessed label of ``_sample``."""
    label = np.asarray(label)[..., 0]
    padded = int((label == CONFIG.ignore_label).sum())
    scale = {0: 1.0, SIZE * SIZE - (SIZE // 2) ** 2: 0.5}[padded]  # only the config's scales
    return scale, int(label[0, 0]) != 0


def _check(draws):
    scales, flips = zip(*draws)
    assert set(scales) == set(CONFIG.scale_factors) == {0.5, 1.0}
    tolerance = 4 * np.sqrt(0.25 / DRAWS)  # four standard deviations of a fraction near 0.5
    assert abs(np.mean(np.array(scales) == 0.5) - 0.5) < tolerance
    assert abs(np.mean(flips) - FLIP_PROBABILITY) < tolerance


def test_numpy_pipeline_draws_the_config_scales_and_flips_with_the_shared_chance():
    rng = np.random.default_rng(0)
    _check([_draw(preprocess_numpy(_sample(), CONFIG, rng)["label"]) for _ in range(DRAWS)])


def test_tf_pipeline_draws_the_config_scales_and_flips_with_the_shared_chance():
    tf = pytest.importorskip("tensorflow")
    from deeplab_dpc.data.preprocess import preprocess_sample

    fn = tf.function(lambda seed: preprocess_sample(_sample(), CONFIG, seed=seed)["label"])
    _check([_draw(fn(tf.constant([i, 7], tf.int64)).numpy()) for i in range(DRAWS)])


def test_scaled_size_is_float32_int_of_side_times_scale():
    assert augmentation.scaled_size(360, 480, 0.75) == (270, 360)
    assert augmentation.scaled_size(513, 513, 1.75) == (897, 897)
    assert augmentation.scaled_size(3, 7, np.float32(0.1) * 3) == (0, 2)  # truncation, not rounding

"""DeepLab preprocessing: config validation, alignment, padding, crops, seeds.

The geometric tests run on both implementations (TF: ``preprocess_sample``,
NumPy/OpenCV: ``numpy_loader.preprocess_numpy``) through ``run``.
"""

import numpy as np
import pytest
import tensorflow as tf

from deeplab_dpc.data import numpy_loader
from deeplab_dpc.data.preprocess import (
    MEAN_PIXEL,
    PreprocessConfig,
    _tf_resize_to_range_size,
    preprocess_sample,
    resize_to_range_size,
)

IGNORE = 10**6  # an int32 ignore label beyond every coordinate code below


def run(impl, sample, config, seed):
    """Preprocesses with one implementation; returns NumPy arrays."""
    if impl == "tf":
        out = preprocess_sample(sample, config, seed=tf.constant([seed, 7], tf.int64))
        return {k: v.numpy() for k, v in out.items()}
    return numpy_loader.preprocess_numpy(sample, config, np.random.default_rng(seed))


def coordinate_sample(height=48, width=64):
    """R = 4 * row, G = 3 * col, B = 255; label = 1000 * row + col (int32)."""
    rows, cols = np.mgrid[:height, :width]
    image = np.stack([4 * rows, 3 * cols, np.full_like(rows, 255)], -1).astype(np.uint8)
    label = (1000 * rows + cols).astype(np.int32)[..., None]
    return {"image": image, "label": label, "image_name": "coords"}


def check_aligned(out, tolerance):
    """Image and label encode the same source coordinates wherever valid."""
    image, label = out["image"], out["label"][..., 0]
    valid = label != IGNORE
    assert valid.any()
    # Padding: exactly the mean pixel where the label is ignored, marker elsewhere.
    np.testing.assert_array_equal(image[~valid], MEAN_PIXEL)
    np.testing.assert_array_equal(image[valid][:, 2], 255.0)
    image_row, image_col = image[..., 0] / 4.0, image[..., 1] / 3.0
    label_row, label_col = label // 1000, label % 1000
    assert np.abs(image_row - label_row)[valid].max() <= tolerance
    assert np.abs(image_col - label_col)[valid].max() <= tolerance


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"crop_size": (0, 5)}, "crop_size"),
        ({"crop_size": (5, -1)}, "crop_size"),
        ({"crop_size": (5,)}, "crop_size"),
        ({"crop_size": (5.0, 5)}, "crop_size"),
        ({"crop_size": (5, 5), "min_scale_factor": 2.0, "max_scale_factor": 1.0}, "min_scale_factor"),
        ({"crop_size": (5, 5), "min_scale_factor": 0.0}, "min_scale_factor"),
        ({"crop_size": (5, 5), "scale_factor_step_size": -0.25}, "scale_factor_step_size"),
        ({"crop_size": (5, 5), "max_scale_factor": float("nan")}, "max_scale_factor"),
        ({"crop_size": (5, 5), "ignore_label": -1}, "ignore_label"),
        ({"crop_size": (5, 5), "is_training": "yes"}, "is_training"),
        ({"crop_size": (5, 5), "min_resize_value": 0}, "min_resize_value"),
        ({"crop_size": (5, 5), "min_resize_value": 600, "max_resize_value": 500}, "min_resize_value"),
        ({"crop_size": (5, 5), "resize_factor": 8}, "resize_factor"),
    ],
)
def test_config_errors_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        PreprocessConfig(**kwargs)


def test_config_normalises_and_is_frozen():
    config = PreprocessConfig(crop_size=513)
    assert config.crop_size == (513, 513)
    assert config.scale_factors == (0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0)
    with pytest.raises(AttributeError):
        config.crop_size = (1, 1)
    assert config.replace(is_training=False).is_training is False
    with pytest.raises(ValueError, match="crop_size"):
        config.replace(crop_size=(0, 1))


def test_scale_factor_set_keeps_its_maximum_and_continuous_mode():
    assert PreprocessConfig((5, 5), 0.5, 1.5, 0.1).scale_factors[-1] == pytest.approx(1.5)
    assert len(PreprocessConfig((5, 5), 0.5, 1.5, 0.1).scale_factors) == 11
    assert PreprocessConfig((5, 5), 1.0, 1.0, 0.25).scale_factors == (1.0,)
    assert PreprocessConfig((5, 5), 0.5, 2.0, 0).scale_factors is None


# --------------------------------------------------------------------------- sizes


@pytest.mark.parametrize(
    "min_size, max_size, factor",
    [(513, None, None), (513, 513, 16), (360, 600, None), (None, 400, 8), (100, 100, None), (321, 500, 4)],
)
def test_resize_to_range_sizes_agree_between_python_and_tf(min_size, max_size, factor):
    config = PreprocessConfig((5, 5), min_resize_value=min_size, max_resize_value=max_size, resize_factor=factor)
    rng = np.random.default_rng(0)
    for height, width in [(360, 480), (1024, 2048), (500, 375), (17, 923)] + [
        tuple(rng.integers(10, 3000, 2)) for _ in range(20)
    ]:
        expected = resize_to_range_size(height, width, min_size, max_size, factor)
        got = tuple(_tf_resize_to_range_size(tf.constant(height), tf.constant(width), config).numpy())
        assert got == expected, (height, width)
        if max_size is not None:
            assert max(expected) <= max_size
        if factor is not None:
            assert all((side - 1) % factor == 0 for side in expected)


def test_resize_to_range_follows_deeplab():
    assert resize_to_range_size(360, 480, 513) == (513, 684)  # shorter side to 513
    assert resize_to_range_size(360, 480, 513, 600) == (450, 600)  # capped by the longer side
    assert resize_to_range_size(375, 500, 513, 513, 16) == (385, 497)  # ADE20K-style: 16k + 1, <= 513


# --------------------------------------------------------------------------- geometry


@pytest.mark.parametrize("impl", ["tf", "numpy"])
def test_scale_one_crop_and_flip_keep_image_and_label_exactly_aligned(impl):
    config = PreprocessConfig((40, 56), 1.0, 1.0, 0.25, ignore_label=IGNORE)
    sample = coordinate_sample()
    flips = set()
    for seed in range(12):
        out = run(impl, sample, config, seed)
        assert out["image"].shape == (40, 56, 3) and out["label"].shape == (40, 56, 1)
        assert out["image"].dtype == np.float32 and out["label"].dtype == np.int32
        check_aligned(out, tolerance=0)
        np.testing.assert_array_equal(out["image"][..., 0] % 4, 0)  # no resampling happened
        flips.add(bool(out["label"][0, 0, 0] % 1000 > out["label"][0, -1, 0] % 1000))
    assert flips == {True, False}  # both flipped and unflipped crops occur


@pytest.mark.parametrize("impl", ["tf", "numpy"])
def test_scale_two_keeps_alignment_within_resampling_tolerance(impl):
    config = PreprocessConfig((40, 56), 2.0, 2.0, 0.25, ignore_label=IGNORE)
    sample = coordinate_sample()
    for seed in range(6):
        out = run(impl, sample, config, seed)
        check_aligned(out, tolerance=0.75 + 1e-4)
        # Nearest-neighbour upscale by two repeats every label pixel exactly.
        label = out["label"][..., 0]
        rows = label // 1000
        assert (np.diff(rows[:, 0]) >= 0).all() and np.isin(np.bincount(rows[:, 0])[rows.min():], [1, 2]).all()


@pytest.mark.parametrize("impl", ["tf", "numpy"])
def test_random_scales_keep_alignment(impl):
    config = PreprocessConfig((40, 56), 0.5, 2.0, 0.25, ignore_label=IGNORE)
    sample = coordinate_sample()
    padded = 0
    for seed in range(16):
        out = run(impl, sample, config, seed)
        check_aligned(out, tolerance=0.5 + 1e-3)
        padded += bool((out["label"] == IGNORE).any())
    assert 0 < padded < 16  # small scales pad, large ones do not


@pytest.mark.parametrize("impl", ["tf", "numpy"])
def test_training_pads_with_mean_pixel_and_ignore_label(impl):
    config = PreprocessConfig((20, 30), 1.0, 1.0, 0.25, ignore_label=255)
    image = np.full((8, 10, 3), 9, np.uint8)
    label = np.full((8, 10, 1), 3, np.uint8)
    out = run(impl, {"image": image, "label": label}, config, seed=1)
    assert out["image"].shape == (20, 30, 3) and out["label"].shape == (20, 30, 1)
    valid = out["label"][..., 0] == 3
    assert valid.sum() == 80
    np.testing.assert_array_equal(out["label"][~valid], 255)
    np.testing.assert_array_equal(out["image"][~valid], 127.5)
    np.testing.assert_array_equal(out["image"][valid], 9.0)
    # Only bottom/right padding (DeepLab's pad_to_bounding_box at offset 0, 0): the
    # image is the top-left 8 x 10 block, or the top-right one after the random flip.
    top_left = np.zeros((20, 30), bool)
    top_left[:8, :10] = True
    assert np.array_equal(valid, top_left) or np.array_equal(valid, top_left[:, ::-1])


@pytest.mark.parametrize("impl", ["tf", "numpy"])
def test_eval_pads_only_and_keeps_the_original(impl):
    config = PreprocessConfig((50, 70), is_training=False, ignore_label=255)
    sample = coordinate_sample(41, 61)
    sample["label"] = (sample["label"] % 200).astype(np.uint8)
    out = run(impl, sample, config, seed=0)
    np.testing.assert_array_equal(out["image"][:41, :61], sample["image"].astype(np.float32))
    np.testing.assert_array_equal(out["image"][41:], 127.5)
    np.testing.assert_array_equal(out["image"][:, 61:], 127.5)
    np.testing.assert_array_equal(out["label"][:41, :61], sample["label"])
    np.testing.assert_array_equal(out["label"][41:], 255)
    np.testing.assert_array_equal(out["label"][:, 61:], 255)
    assert out["original_image"].dtype == np.uint8
    np.testing.assert_array_equal(out["original_image"], sample["image"])
    assert (int(out["height"]), int(out["width"])) == (41, 61)
    # Deterministic: evaluation ignores seeds.
    np.testing.assert_array_equal(run(impl, sample, config, seed=5)["image"], out["image"])


@pytest.mark.parametrize("impl", ["tf", "numpy"])
def test_eval_larger_image_is_cut_at_offset_zero(impl):
    config = PreprocessConfig((20, 30), is_training=False, ignore_label=IGNORE)
    sample = coordinate_sample()
    out = run(impl, sample, config, seed=0)
    np.testing.assert_array_equal(out["image"], sample["image"][:20, :30].astype(np.float32))
    np.testing.assert_array_equal(out["label"], sample["label"][:20, :30])


@pytest.mark.parametrize("impl", ["tf", "numpy"])
def test_eval_resize_to_range_resizes_image_label_and_original(impl):
    config = PreprocessConfig(
        (70, 90), is_training=False, min_resize_value=60, max_resize_value=80, ignore_label=IGNORE
    )
    out = run(impl, coordinate_sample(), config, seed=0)
    assert out["original_image"].shape == (60, 80, 3)
    valid = out["label"][..., 0] != IGNORE
    assert valid.sum() == 60 * 80
    check_aligned(out, tolerance=0.5 + 1e-3)


@pytest.mark.parametrize("impl", ["tf", "numpy"])
def test_training_needs_a_label(impl):
    with pytest.raises(ValueError, match="label"):
        run(impl, {"image": np.zeros((4, 4, 3), np.uint8)}, PreprocessConfig((4, 4)), seed=0)


def test_unlabelled_eval_sample_has_no_label():
    out = preprocess_sample({"image": np.zeros((4, 4, 3), np.uint8)}, PreprocessConfig((6, 6), is_training=False))
    assert "label" not in out and out["image"].shape == (6, 6, 3)
    assert out["image_name"].numpy() == b""


# --------------------------------------------------------------------------- seeds


def _random_sample(seed=0, height=45, width=61):
    rng = np.random.default_rng(seed)
    return {
        "image": rng.integers(0, 256, (height, width, 3), dtype=np.uint8),
        "label": rng.integers(0, 12, (height, width, 1), dtype=np.uint8),
        "image_name": "x",
        "height": height,
        "width": width,
    }


def test_eager_and_tf_data_agree_for_the_same_seed():
    config = PreprocessConfig((32, 40))
    sample = _random_sample()
    seeds = [[i, 3] for i in range(8)]
    eager = [preprocess_sample(sample, config, seed=tf.constant(s, tf.int64)) for s in seeds]
    ds = tf.data.Dataset.zip(
        tf.data.Dataset.from_tensors(sample).repeat(len(seeds)),
        tf.data.Dataset.from_tensor_slices(tf.constant(seeds, tf.int64)),
    ).map(lambda s, seed: preprocess_sample(s, config, seed=seed), num_parallel_calls=2)
    for a, b in zip(eager, ds):
        for key in ("image", "label", "image_name", "height", "width"):
            np.testing.assert_array_equal(a[key].numpy(), b[key].numpy())
    # ... and the eight seeds did not all give the same crop.
    assert len({e["image"].numpy().tobytes() for e in eager}) > 1


def test_works_in_graph_mode_with_unknown_sizes():
    config = PreprocessConfig((32, 40))
    spec = {
        "image": tf.TensorSpec([None, None, 3], tf.uint8),
        "label": tf.TensorSpec([None, None, 1], tf.uint8),
    }
    fn = tf.function(lambda s, seed: preprocess_sample(s, config, seed=seed)).get_concrete_function(
        spec, tf.TensorSpec([2], tf.int64)
    )
    assert fn.structured_outputs["image"].shape.as_list() == [32, 40, 3]
    sample = _random_sample()
    out = fn({"image": sample["image"], "label": sample["label"]}, tf.constant([1, 2], tf.int64))
    eager = preprocess_sample(sample, config, seed=tf.constant([1, 2], tf.int64))
    np.testing.assert_array_equal(out["image"].numpy(), eager["image"].numpy())


def test_numpy_and_tf_agree_exactly_without_augmentation():
    config = PreprocessConfig((50, 70), is_training=False)
    sample = _random_sample()
    a = {k: v.numpy() for k, v in preprocess_sample(sample, config).items()}
    b = numpy_loader.preprocess_numpy(sample, config)
    for key in ("image", "label", "original_image"):
        assert a[key].dtype == b[key].dtype
        np.testing.assert_array_equal(a[key], b[key])


@pytest.mark.parametrize("min_resize, max_resize", [(60, 80), (31, 97), (200, 250)])
def test_numpy_and_tf_resizes_agree_within_float_rounding(min_resize, max_resize):
    """cv2 INTER_LINEAR vs tf.image.resize bilinear: same half-pixel grid, float rounding apart."""
    config = PreprocessConfig(
        (260, 260), is_training=False, min_resize_value=min_resize, max_resize_value=max_resize
    )
    sample = _random_sample(1, 90, 123)
    a = {k: v.numpy() for k, v in preprocess_sample(sample, config).items()}
    b = numpy_loader.preprocess_numpy(sample, config)
    assert a["original_image"].shape == b["original_image"].shape != sample["image"].shape
    np.testing.assert_array_equal(a["label"], b["label"])  # bit-identical nearest
    np.testing.assert_allclose(a["image"], b["image"], atol=5e-3)
    assert np.abs(a["original_image"].astype(int) - b["original_image"]).max() <= 1

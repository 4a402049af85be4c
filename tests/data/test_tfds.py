"""TFDS builders mapped onto the sample dictionary, with TFDS' own mock data (no download)."""

import numpy as np
import pytest
import tensorflow as tf

tfds_lib = pytest.importorskip("tensorflow_datasets")

from deeplab_dpc.data import tfds  # noqa: E402
from deeplab_dpc.data.input_pipeline import build_dataset, dataset_source  # noqa: E402
from deeplab_dpc.data.preprocess import PreprocessConfig  # noqa: E402

CITYSCAPES = "cityscapes/semantic_segmentation"


def test_cityscapes_mock_gives_the_sample_dict():
    with tfds_lib.testing.mock_data(num_examples=1):
        ds = dataset_source(f"tfds:{CITYSCAPES}", None, "train")
        spec = ds.element_spec
        assert set(spec) == {"image", "label", "image_name", "height", "width"}
        assert (spec["image"].dtype, spec["image"].shape.as_list()) == (tf.uint8, [None, None, 3])
        assert (spec["label"].dtype, spec["label"].shape.as_list()) == (tf.uint8, [None, None, 1])
        assert spec["image_name"].dtype == tf.string
        sample = next(iter(ds))
    assert sample["image"].shape == (1024, 2048, 3) and sample["label"].shape == (1024, 2048, 1)
    assert (int(sample["height"]), int(sample["width"])) == (1024, 2048)
    # Label ids went through the trainId table: only 0..18 and 255 remain.
    values = set(np.unique(sample["label"].numpy()).tolist())
    assert values <= set(range(19)) | {255} and len(values) > 2


def test_cityscapes_mock_feeds_the_pipeline():
    config = PreprocessConfig((65, 129), is_training=False, min_resize_value=64, max_resize_value=128)
    with tfds_lib.testing.mock_data(num_examples=1):
        batch = next(iter(build_dataset(None, "validation", config, 1, dataset=f"tfds:{CITYSCAPES}")))
    assert batch["image"].shape == (1, 65, 129, 3) and batch["image"].dtype == tf.float32
    assert batch["label"].shape == (1, 65, 129, 1) and batch["label"].dtype == tf.int32
    assert batch["original_image"].shape == (1, 64, 128, 3)


def test_config_without_labels_maps_to_images_only():
    with tfds_lib.testing.mock_data(num_examples=1):
        elements, decode = tfds.tfds_elements("cityscapes/stereo_disparity", "train")
        assert "label" not in elements.map(decode).element_spec


def test_oxford_pet_mapping_and_trimap_table():
    with tfds_lib.testing.mock_data(num_examples=2):
        # TFDS' mock draws image and mask sizes independently for this builder,
        # so only the mapping is checked, with TFDS decoding.
        sample = next(iter(tfds.load_samples("oxford_iiit_pet", "train", skip_decoding=False)))
    assert sample["image"].dtype == tf.uint8 and sample["image"].shape[-1] == 3
    assert sample["label"].dtype == tf.uint8 and sample["label"].shape[-1] == 1
    assert sample["image_name"].dtype == tf.string
    assert set(np.unique(sample["label"].numpy()).tolist()) <= {0, 1, 255}
    assert tfds.OXFORD_PET_TRIMAP[:4] == (255, 1, 0, 255)


def test_unknown_builders_are_probed_and_failures_listed():
    image = tfds_lib.features.Image(shape=(None, None, 3))
    mask = tfds_lib.features.Image(shape=(None, None, 1))
    mapping = tfds.feature_map_for("my_seg/v2", {"image": image, "segmentation_mask": mask, "file_name": None})
    assert mapping == tfds.FeatureMap("image", "segmentation_mask", "file_name")
    with pytest.raises(ValueError, match=r"no image feature.*'photo'"):
        tfds.feature_map_for("other", {"photo": image})


def test_cityscapes_train_id_table():
    table = tfds.CITYSCAPES_ID_TO_TRAIN_ID
    assert len(table) == 256
    assert (table[7], table[26], table[33], table[0], table[255]) == (0, 13, 18, 255, 255)
    assert sorted(v for v in table if v != 255) == list(range(19))


def test_spec_parsing():
    assert tfds.parse_spec("tfds:cityscapes/semantic_segmentation") == CITYSCAPES
    for bad in ("cityscapes", "tfds:", "tfds:/"):
        with pytest.raises(ValueError, match="tfds:NAME"):
            tfds.parse_spec(bad)
    with pytest.raises(ValueError, match="label_lut"):
        tfds.FeatureMap("image", "mask", label_lut=(0,) * 10)

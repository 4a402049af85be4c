"""The feature cache: cached features are the backbone's, resume skips finished shards, damage is named."""

import json
import os

import numpy as np
import pytest
from absl import app, flags

from deeplab_dpc import cache_features, synthetic
from deeplab_dpc.data.batches import DataConfig, open_source
from deeplab_dpc.data.numpy_loader import preprocess_numpy
from deeplab_dpc.data.preprocess import PreprocessConfig
from deeplab_dpc.nas import features as features_lib
from deeplab_dpc.nas.features import CacheConfig, CacheError, FeatureCache, cache_split, nearest_indices

# Images are 48x64; the crop pads them to 64x80, so features are ceil(64/16) x ceil(80/16) = 4 x 5.
CROP = (64, 80)
NUM_TRAIN = 6


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    descriptor = synthetic.write_segnet_folders(root, {"train": NUM_TRAIN, "val": 3}, 48, 64, num_classes=3)
    return DataConfig(
        dataset=descriptor, dataset_dir=str(root), dataset_format="folder:segnet", loader="numpy"
    )


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A training run on disk: a fresh model's weights with its model_config.json, as train writes them."""
    from deeplab_dpc.core.model import ModelConfig, build_deeplab
    from deeplab_dpc.training.train_lib import warm_start_batch_norm

    run = tmp_path_factory.mktemp("run")
    config = ModelConfig(num_classes=3, context="aspp", depth_multiplier=0.35, dropout_rate=0.0)
    model = build_deeplab(config)
    warm_start_batch_norm(model, np.random.default_rng(0).uniform(0, 255, (2, 64, 80, 3)).astype("float32"))
    model.save_weights(str(run / "ckpt-00000007.weights.h5"))
    config.save(run / "model_config.json")
    return str(run)


def _config(dataset, cache_dir, run_dir, **kw):
    args = dict(
        cache_dir=str(cache_dir),
        data=dataset,
        split="train",
        crop_size=CROP,
        checkpoint_path=run_dir,
        flip=True,
        shard_size=4,
        batch_size=2,
    )
    args.update(kw)
    return CacheConfig(**args)


@pytest.fixture(scope="module")
def cached(dataset, run_dir, tmp_path_factory):
    cache_dir = tmp_path_factory.mktemp("cache")
    manifest = cache_split(_config(dataset, cache_dir, run_dir), progress=False)
    return str(cache_dir), manifest


def test_cached_features_equal_the_backbone_output_on_the_same_images(dataset, run_dir, cached):
    from deeplab_dpc.runs import load_model_for_inference

    cache_dir, manifest = cached
    model, _ = load_model_for_inference(run_dir)
    source = open_source(dataset, "train")
    preprocess = PreprocessConfig(crop_size=CROP, ignore_label=255, is_training=False)
    samples = [preprocess_numpy(source[i], preprocess) for i in range(NUM_TRAIN)]
    images = np.stack([s["image"] for s in samples])
    images = np.stack([images, images[:, :, ::-1]], axis=1).reshape(
        -1, *images.shape[1:]
    )  # image, mirror, ...
    expected = np.asarray(model.get_layer("backbone")(model.get_layer("normalize")(images))["features"])

    cache = FeatureCache(cache_dir, "train")
    got, labels = cache.load_all("float32")
    assert got.shape == (2 * NUM_TRAIN, 4, 5, 112) and labels.shape == (2 * NUM_TRAIN, *CROP)
    assert labels.dtype == np.uint8
    # float16 storage: 3 significant decimal digits.
    np.testing.assert_allclose(got, expected, rtol=2e-3, atol=2e-3 * np.abs(expected).max())
    first = samples[0]["label"][..., 0]
    np.testing.assert_array_equal(labels[0], first)
    np.testing.assert_array_equal(labels[1], first[:, ::-1])
    assert (labels[0, 48:] == 255).all() and (labels[0, :, 64:] == 255).all()  # padding is ignored
    assert (labels[0, :48, :64] != 255).all()

    assert (
        manifest["complete"]
        and manifest["num_examples"] == 2 * NUM_TRAIN
        and manifest["num_images"] == NUM_TRAIN
    )
    assert [e["num_examples"] for e in manifest["shards"]] == [8, 4]
    assert manifest["backbone"]["checkpoint"].endswith("ckpt-00000007.weights.h5")
    assert (
        manifest["backbone"]["model_variant"] == "mobilenet_v2"
        and manifest["backbone"]["output_stride"] == 16
    )
    assert manifest["feature_shape"] == [4, 5, 112] and manifest["feature_dtype"] == "float16"
    assert manifest["augmentation"]["flip"] is True and manifest["crop_size"] == list(CROP)
    assert manifest["num_classes"] == 3 and manifest["ignore_label"] == 255
    assert "package" in manifest["code_version"] and manifest["created"]
    shards = list(cache.iter_shards())
    names = [str(n) for shard in shards for n in shard["names"]]
    assert names[0] == names[1] != names[2] and names[0].startswith("train_00000")
    assert np.concatenate([s["flipped"] for s in shards]).tolist() == [False, True] * NUM_TRAIN
    assert not [n for n in os.listdir(cache_dir) if ".tmp-" in n]


def _counting(backbone):
    seen = []
    extract = backbone.extract

    def counted(batch):
        seen.append(len(batch))
        return extract(batch)

    backbone.extract = counted
    return backbone, seen


def test_resume_skips_finished_shards_and_rewrites_a_missing_one(dataset, run_dir, tmp_path):
    config = _config(dataset, tmp_path, run_dir)
    first = cache_split(config, progress=False)
    shard0, shard1 = (os.path.join(tmp_path, e["file"]) for e in first["shards"])
    stat0 = os.stat(shard0)
    os.remove(shard1)
    with pytest.raises(CacheError, match="train-00001.npz"):
        FeatureCache(str(tmp_path), "train").load_all()

    backbone, seen = _counting(features_lib.build_backbone_for_cache(config))
    second = cache_split(config, progress=False, backbone=backbone)
    assert sum(seen) == 2 * 2  # shard 1 only: its 2 images and their mirrors
    assert os.stat(shard0).st_mtime_ns == stat0.st_mtime_ns and os.stat(shard0).st_ino == stat0.st_ino
    assert second["shards"] == first["shards"]  # rewritten bit for bit (same sha256)

    backbone, seen = _counting(features_lib.build_backbone_for_cache(config))
    cache_split(config, progress=False, backbone=backbone)
    assert seen == []  # nothing left to do


def test_a_corrupt_shard_is_named_and_recomputed(dataset, run_dir, tmp_path):
    config = _config(dataset, tmp_path, run_dir, flip=False)
    cache_split(config, progress=False)
    path = os.path.join(tmp_path, "train-00000.npz")
    data = bytearray(open(path, "rb").read())
    data[len(data) // 2 : len(data) // 2 + 64] = b"\0" * 64
    open(path, "wb").write(bytes(data))
    with pytest.raises(CacheError, match=r"train-00000\.npz is corrupt"):
        FeatureCache(str(tmp_path), "train").load_all()

    with open(path, "wb") as f:  # Truncated.
        f.write(bytes(data[:100]))
    with pytest.raises(CacheError, match=r"train-00000\.npz is corrupt"):
        list(FeatureCache(str(tmp_path), "train").iter_shards())

    cache_split(config, progress=False)  # The size/sha256 check finds it and computes it again.
    features, labels = FeatureCache(str(tmp_path), "train").load_all("float16")
    assert features.shape == (NUM_TRAIN, 4, 5, 112) and features.dtype == np.float16


def test_missing_and_incomplete_caches_name_the_manifest(dataset, run_dir, tmp_path):
    with pytest.raises(CacheError, match=r"val\.manifest\.json does not exist.*cached splits: none"):
        FeatureCache(str(tmp_path), "val")
    manifest = cache_split(_config(dataset, tmp_path, run_dir, split="val", flip=False), progress=False)
    assert manifest["num_examples"] == 3
    path = tmp_path / "val.manifest.json"
    broken = dict(manifest, complete=False)
    path.write_text(json.dumps(broken))
    with pytest.raises(CacheError, match=r"val\.manifest\.json: the cache is incomplete"):
        FeatureCache(str(tmp_path), "val")
    path.write_text("{not json")
    with pytest.raises(CacheError, match=r"val\.manifest\.json is not a readable JSON manifest"):
        FeatureCache(str(tmp_path), "val")
    path.write_text(json.dumps(dict(manifest, feature_shape=[4, 5, 99])))
    with pytest.raises(CacheError, match=r"val-00000\.npz: features are float16 \[3, 4, 5, 112\]"):
        FeatureCache(str(tmp_path), "val").load_all()


def test_a_cache_made_differently_is_not_mixed_with(dataset, run_dir, tmp_path):
    cache_split(_config(dataset, tmp_path, run_dir, max_images=2), progress=False)
    with pytest.raises(CacheError, match="augmentation"):
        cache_split(_config(dataset, tmp_path, run_dir, max_images=2, flip=False), progress=False)
    manifest = cache_split(
        _config(dataset, tmp_path, run_dir, max_images=2, flip=False, overwrite=True), progress=False
    )
    assert manifest["num_examples"] == 2 and not manifest["augmentation"]["flip"]


def test_tfdata_and_numpy_loaders_cache_the_same_examples(dataset, run_dir, tmp_path):
    numpy_dir, tf_dir = tmp_path / "numpy", tmp_path / "tfdata"
    cache_split(_config(dataset, numpy_dir, run_dir, max_images=3, flip=False), progress=False)
    tf_data = DataConfig(
        dataset=dataset.dataset,
        dataset_dir=dataset.dataset_dir,
        dataset_format=dataset.dataset_format,
        loader="tfdata",
    )
    cache_split(_config(tf_data, tf_dir, run_dir, max_images=3, flip=False), progress=False)
    a = FeatureCache(str(numpy_dir), "train").load_all("float32")
    b = FeatureCache(str(tf_dir), "train").load_all("float32")
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_allclose(a[0], b[0], atol=1e-3 * np.abs(a[0]).max())


def test_a_fresh_backbone_from_tf_initial_checkpoint_equals_the_runs(dataset, run_dir, cached, tmp_path):
    config = CacheConfig(
        cache_dir=str(tmp_path),
        data=dataset,
        split="train",
        crop_size=CROP,
        depth_multiplier=0.35,
        tf_initial_checkpoint=run_dir,
        max_images=2,
        batch_size=2,
    )
    manifest = cache_split(config, progress=False)
    assert manifest["backbone"]["weights"] == "tf_initial_checkpoint"
    assert manifest["backbone"]["restored_backbone_weights"] > 100
    fresh, _ = FeatureCache(str(tmp_path), "train").load_all("float32")
    from_run, _ = FeatureCache(cached[0], "train").load_all("float32", max_examples=4)
    np.testing.assert_allclose(
        fresh, from_run[::2], rtol=1e-3, atol=1e-3
    )  # the run's cache interleaves mirrors


def test_a_random_backbone_is_seeded_and_its_batch_norm_warm_started(dataset, tmp_path):
    config = CacheConfig(
        cache_dir=str(tmp_path),
        data=dataset,
        split="val",
        crop_size=CROP,
        depth_multiplier=0.35,
        shard_size=2,
    )
    manifest = cache_split(config, progress=False)
    assert manifest["backbone"]["weights"] == "random (seed 0)" and manifest["backbone"]["checkpoint"] is None
    features, _ = FeatureCache(str(tmp_path), "val").load_all("float32")
    # Warm-started batch norm keeps activations at a usable scale (0/1 statistics shrink them ~1e-9).
    assert 0.05 < features.std() < 100
    os.remove(tmp_path / "val-00001.npz")
    again = cache_split(
        config, progress=False
    )  # Same seed, same statistics: the rewritten shard is identical.
    assert again["shards"] == manifest["shards"]


def _flags(*args):
    fv = flags.FlagValues()
    cache_features.define_flags(fv)
    fv(["cache_features", *args])
    return fv


@pytest.mark.parametrize(
    "args, message",
    [
        (["--crop_size=64,80"], "--cache_dir is required"),
        (["--cache_dir=C"], "--crop_size is required"),
        (["--cache_dir=C", "--crop_size=64,x"], "--crop_size=.*expected 'height,width'"),
        (
            ["--cache_dir=C", "--crop_size=64,80", "--shard_size=0"],
            "--shard_size=0 must be a positive integer",
        ),
        (
            ["--cache_dir=C", "--crop_size=64,80", "--checkpoint_path=RUN", "--tf_initial_checkpoint=RUN"],
            "--tf_initial_checkpoint is for a fresh backbone",
        ),
        (
            ["--cache_dir=C", "--crop_size=64,80", "--output_stride=12"],
            "--output_stride=12 must be 8, 16 or 32",
        ),
    ],
)
def test_flag_errors_name_the_flag(dataset, run_dir, args, message):
    args = [a.replace("RUN", run_dir) for a in args]
    data_flags = [
        f"--dataset={dataset.dataset}",
        f"--dataset_dir={dataset.dataset_dir}",
        "--dataset_format=folder:segnet",
    ]
    with pytest.raises(app.UsageError, match=message):
        cache_features.config_from_flags(_flags(*data_flags, *args))


def test_the_run_contradicting_a_model_flag_is_named(dataset, run_dir, tmp_path):
    fv = _flags(
        f"--dataset={dataset.dataset}",
        f"--dataset_dir={dataset.dataset_dir}",
        "--dataset_format=folder:segnet",
        "--loader=numpy",
        f"--cache_dir={tmp_path}",
        "--crop_size=64,80",
        f"--checkpoint_path={run_dir}",
        "--output_stride=8",
    )
    with pytest.raises(app.UsageError, match="--output_stride=8 contradicts the run's model config"):
        cache_features.run(fv)


def test_several_crops_per_image_are_the_backbone_output_on_those_crops(dataset, run_dir, tmp_path):
    """Images padded to 64x80, three seeded 32x48 crops each, each followed by its mirror."""
    from deeplab_dpc.runs import load_model_for_inference

    crop, source = (32, 48), CROP
    config = _config(
        dataset,
        tmp_path / "c",
        run_dir,
        crop_size=crop,
        source_size=source,
        crops_per_image=3,
        max_images=5,
        seed=4,
    )
    manifest = cache_split(config, progress=False)
    assert manifest["num_examples"] == 5 * 3 * 2 and manifest["augmentation"]["copies_per_image"] == 6
    assert manifest["augmentation"]["source_size"] == list(source) and manifest["label_shape"] == list(crop)
    got, labels = FeatureCache(str(tmp_path / "c"), "train").load_all("float32")

    model, _ = load_model_for_inference(run_dir)
    source_data = open_source(dataset, "train")
    padded = preprocess_numpy(
        source_data[3], PreprocessConfig(crop_size=source, ignore_label=255, is_training=False)
    )
    offsets = features_lib.crop_offsets(3, 3, source, crop, seed=4)
    assert len(set(offsets)) == 3 and all(0 <= t <= 32 and 0 <= left <= 32 for t, left in offsets)
    assert offsets == features_lib.crop_offsets(3, 3, source, crop, seed=4)  # a resume cuts the same crops
    assert offsets != features_lib.crop_offsets(3, 3, source, crop, seed=5)
    top, left = offsets[1]
    image = padded["image"][top : top + crop[0], left : left + crop[1]][None].astype("float32")
    expected = np.asarray(model.get_layer("backbone")(model.get_layer("normalize")(image))["features"])[0]
    example = (3 * 3 + 1) * 2  # image 3, crop 1, not mirrored
    np.testing.assert_allclose(got[example], expected, rtol=2e-3, atol=2e-3 * np.abs(expected).max())
    label = padded["label"][top : top + crop[0], left : left + crop[1], 0]
    np.testing.assert_array_equal(labels[example], label)
    np.testing.assert_array_equal(labels[example + 1], label[:, ::-1])
    with pytest.raises(ValueError, match="crops_per_image=2 needs source_size"):
        _config(dataset, tmp_path / "d", run_dir, crops_per_image=2)
    with pytest.raises(ValueError, match="source_size=.*at least crop_size"):
        _config(dataset, tmp_path / "d", run_dir, source_size=(32, 32))


@pytest.mark.slow  # ~30 s on 2 shared cores: three backbone-and-teacher builds
def test_cached_teacher_logits_equal_the_teacher_models_logits(dataset, run_dir, tmp_path):
    from deeplab_dpc.runs import load_model_for_inference

    config = _config(dataset, tmp_path, run_dir, max_images=3, shard_size=2, teacher_checkpoint_path=run_dir)
    manifest = cache_split(config, progress=False)
    model, _ = load_model_for_inference(run_dir)
    source = open_source(dataset, "train")
    preprocess = PreprocessConfig(crop_size=CROP, ignore_label=255, is_training=False)
    images = np.stack([preprocess_numpy(source[i], preprocess)["image"] for i in range(3)])
    images = np.stack([images, images[:, :, ::-1]], axis=1).reshape(-1, *images.shape[1:])  # image, mirror
    logits = np.asarray(model.predict_on_batch(images))  # [6, 64, 80, 3] at the crop size
    rows, cols = nearest_indices(CROP[0], 16), nearest_indices(CROP[1], 20)  # 4x the 4x5 feature grid
    expected = logits[:, rows[:, None], cols[None, :]]

    cache = FeatureCache(str(tmp_path), "train")
    features, labels, teacher = cache.load_all("float32", teacher_logits=True)
    assert cache.has_teacher_logits and teacher.shape == (6, 16, 20, 3) and teacher.dtype == np.float16
    assert features.shape == (6, 4, 5, 112) and labels.shape == (6, *CROP)
    np.testing.assert_allclose(teacher, expected, rtol=2e-3, atol=2e-3 * np.abs(expected).max())
    assert manifest["teacher"]["checkpoint"].endswith("ckpt-00000007.weights.h5")
    assert manifest["teacher"]["logits_shape"] == [16, 20, 3] == manifest["teacher_shape"]

    # Resume rewrites a missing shard with its teacher logits; a cache without a teacher is another cache.
    os.remove(tmp_path / "train-00000.npz")
    cache_split(config, progress=False)
    again = FeatureCache(str(tmp_path), "train").load_all("float32", teacher_logits=True)[2]
    np.testing.assert_array_equal(again, teacher)
    with pytest.raises(CacheError, match="teacher differ"):
        cache_split(_config(dataset, tmp_path, run_dir, max_images=3, shard_size=2), progress=False)
    plain = tmp_path / "plain"
    features_lib.write_arrays(str(plain), "train", features, labels, num_classes=3)
    assert not FeatureCache(str(plain), "train").has_teacher_logits
    with pytest.raises(CacheError, match=r"train\.manifest\.json holds no teacher logits"):
        FeatureCache(str(plain), "train").load_all(teacher_logits=True)


def test_the_teacher_flag_reaches_the_config(dataset, run_dir, tmp_path):
    base = [
        f"--dataset={dataset.dataset}",
        f"--dataset_dir={dataset.dataset_dir}",
        "--dataset_format=folder:segnet",
        f"--cache_dir={tmp_path}",
        "--crop_size=64,80",
        f"--checkpoint_path={run_dir}",
    ]
    assert cache_features.config_from_flags(_flags(*base)).teacher_checkpoint_path is None
    config = cache_features.config_from_flags(_flags(*base, f"--teacher_checkpoint_path={run_dir}"))
    assert config.teacher_checkpoint_path == run_dir
    with pytest.raises(app.UsageError, match="--teacher_checkpoint_path=/no/such/run does not exist"):
        cache_features.config_from_flags(_flags(*base, "--teacher_checkpoint_path=/no/such/run"))

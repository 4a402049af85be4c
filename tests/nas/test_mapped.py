"""Features read in place: npz members memory-mapped, shards as one array, equal to reading them."""

import os
import zipfile

import numpy as np
import pytest

from deeplab_dpc.nas.features import CacheError, FeatureCache, write_arrays
from deeplab_dpc.nas.mapped import ShardedArray, map_npz_member


def test_a_stored_npz_member_maps_to_the_same_array(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {
        "f16": rng.normal(size=(5, 3, 4, 7)).astype("float16"),
        "u8": rng.integers(0, 255, size=(5, 9, 11)).astype("uint8"),
        "fortran": np.asfortranarray(rng.normal(size=(6, 4)).astype("float32")),
        "empty": np.zeros((0, 3), "float32"),
    }
    path = str(tmp_path / "a.npz")
    np.savez(path, **arrays)
    for key, want in arrays.items():
        got = map_npz_member(path, key)
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(got, want)
    assert isinstance(map_npz_member(path, "f16"), np.memmap)  # in place, not read
    with pytest.raises(KeyError):
        map_npz_member(path, "absent")


def test_a_compressed_member_is_not_mapped_and_objects_are_refused(tmp_path):
    compressed = str(tmp_path / "c.npz")
    np.savez_compressed(compressed, x=np.arange(10))
    assert map_npz_member(compressed, "x") is None
    objects = str(tmp_path / "o.npz")
    np.savez(objects, x=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="Python objects"):
        map_npz_member(objects, "x")


@pytest.fixture
def parts():
    rng = np.random.default_rng(1)
    return [rng.normal(size=(n, 2, 3)).astype("float16") for n in (4, 1, 5, 3)]


@pytest.mark.parametrize(
    "index",
    [0, 3, 4, 5, -1, -13, slice(None), slice(2, 11), slice(1, 12, 3), slice(None, None, -2), slice(7, 7),
     [12, 0, 5, 5, 4], [3, 4], [9, 10, 11, 12], [-1, -13]],
)
def test_sharded_rows_equal_the_concatenated_array(parts, index):
    whole = np.concatenate(parts)
    got = ShardedArray(parts)[np.array(index) if isinstance(index, list) else index]
    np.testing.assert_array_equal(got, whole[np.array(index) if isinstance(index, list) else index])
    assert isinstance(got, np.ndarray)


def test_a_sharded_array_has_the_shape_of_its_rows_and_refuses_bad_indices(parts):
    limited = ShardedArray(parts, length=6)
    assert len(limited) == 6 and limited.shape == (6, 2, 3) and limited.dtype == np.float16
    assert limited.nbytes == 6 * 2 * 3 * 2 and limited.ndim == 3
    np.testing.assert_array_equal(np.asarray(limited), np.concatenate(parts)[:6])
    with pytest.raises(IndexError):
        limited[6]
    with pytest.raises(IndexError):
        limited[np.array([0, 6])]
    with pytest.raises(TypeError):
        limited[np.array([True, False])]
    with pytest.raises(ValueError, match="shards differ"):
        ShardedArray([parts[0], parts[1].astype("float32")])


def _split(tmp_path, teacher=True):
    rng = np.random.default_rng(2)
    features = rng.normal(size=(11, 3, 4, 6)).astype("float32")
    labels = rng.integers(0, 3, size=(11, 24, 32)).astype("uint8")
    logits = rng.normal(size=(11, 12, 16, 3)).astype("float16") if teacher else None
    write_arrays(str(tmp_path), "train", features, labels, num_classes=3, shard_size=4, teacher_logits=logits)
    return FeatureCache(str(tmp_path), "train")


@pytest.mark.parametrize("max_examples", [None, 6, 4, 1])
def test_mapping_a_cache_split_gives_what_reading_it_gives(tmp_path, max_examples):
    cache = _split(tmp_path)
    sample = lambda labels: labels[:, ::2, ::2]  # noqa: E731  (a label grid, as the proxy samples one)
    read = cache.load_all("float16", sample, max_examples, teacher_logits=True)
    mapped = cache.map_all(sample, max_examples, teacher_logits=True)
    assert isinstance(mapped[0], ShardedArray) and isinstance(mapped[2], ShardedArray)
    for got, want in zip(mapped, read):
        assert got.shape == want.shape and got.dtype == want.dtype
        np.testing.assert_array_equal(np.asarray(got), want)


def test_a_split_with_a_compressed_shard_is_read_instead(tmp_path):
    cache = _split(tmp_path, teacher=False)
    path = os.path.join(str(tmp_path), cache.manifest["shards"][1]["file"])
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    np.savez_compressed(path, **arrays)
    assert cache.map_all() is None


def test_a_damaged_or_missing_shard_is_named(tmp_path):
    cache = _split(tmp_path, teacher=False)
    first = os.path.join(str(tmp_path), cache.manifest["shards"][0]["file"])
    with open(first, "r+b") as f:
        f.truncate(100)
    with pytest.raises(CacheError, match=r"train-00000\.npz is corrupt"):
        cache.map_all()
    os.remove(first)
    with pytest.raises(CacheError, match=r"train-00000\.npz is missing"):
        cache.map_all()
    assert zipfile.is_zipfile(os.path.join(str(tmp_path), cache.manifest["shards"][1]["file"]))

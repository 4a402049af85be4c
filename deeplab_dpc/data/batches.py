"""One place that turns a ``DataConfig`` + split into batches for train, eval and vis.

The loader follows the Keras backend: tf.data on TensorFlow, the NumPy/OpenCV
``SegmentationPyDataset`` elsewhere (a JAX host without TensorFlow), unless
``loader`` forces one. TensorFlow is imported only on the tf.data path.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Mapping

import keras

from deeplab_dpc.data.datasets import DatasetDescriptor, get_dataset
from deeplab_dpc.data.preprocess import PreprocessConfig

LOADERS = ("auto", "tfdata", "numpy")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where a dataset is and how to read it.

    Args:
        dataset: a built-in dataset name (``cityscapes``, ``camvid``, ...), a
            JSON descriptor file, or ``tfds:NAME[/CONFIG]`` (its descriptor is
            the built-in one whose name starts the TFDS name).
        dataset_dir: TFRecord folder; image folder root for
            ``dataset_format=folder``; the folder of ``<split>.npz`` files for ``npz``; TFDS
            data_dir for tfds (may be None).
        dataset_format: ``tfrecord``, ``folder[:segnet|voc]`` or ``npz``.
        loader: ``tfdata``, ``numpy`` or ``auto`` (tf.data on the TensorFlow
            backend, NumPy otherwise).
        num_workers: threads of the NumPy loader; 0 (the default): one per CPU core.
        label_remap: ``{stored value: label}`` applied after decoding, e.g.
            ``{11: 255}`` for CamVid's raw SegNet annotations.

    Example:
        >>> DataConfig("camvid", "/data/camvid_tfrecord").descriptor.num_classes
        11
    """

    dataset: str = "camvid"
    dataset_dir: str | None = None
    dataset_format: str = "tfrecord"
    loader: str = "auto"
    num_workers: int = 0
    label_remap: Mapping[int, int] | None = None

    def __post_init__(self):
        if self.loader not in LOADERS:
            raise ValueError(f"loader={self.loader!r} is unknown; valid: {list(LOADERS)}")
        fmt = self.dataset_format
        if not (fmt in ("tfrecord", "npz", "folder") or fmt.startswith("folder:")):
            raise ValueError(f"dataset_format={fmt!r} is unknown; valid: tfrecord, folder[:segnet|voc], npz")
        if self.dataset_dir is None and not self.is_tfds:
            raise ValueError("dataset_dir is required (the folder holding the dataset's files)")
        if self.dataset_dir is not None and not os.path.exists(self.dataset_dir):
            raise ValueError(f"dataset_dir={self.dataset_dir} does not exist")
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be >= 0 (0: one per CPU core), got {self.num_workers}")
        if self.label_remap is not None:
            object.__setattr__(self, "label_remap", {int(k): int(v) for k, v in dict(self.label_remap).items()})
        self.descriptor  # noqa: B018 -- fail now on an unknown dataset

    @property
    def is_tfds(self) -> bool:
        return self.dataset.startswith("tfds:")

    @property
    def descriptor(self) -> DatasetDescriptor:
        if self.is_tfds:
            name = self.dataset[len("tfds:") :].split("/")[0]
            try:
                return get_dataset(name)
            except ValueError:
                raise ValueError(
                    f"dataset={self.dataset!r}: no built-in descriptor named {name!r}; "
                    "convert the data or describe it in a JSON descriptor"
                ) from None
        return get_dataset(self.dataset)

    @property
    def workers(self) -> int:
        """Reader threads: ``num_workers``, or one per CPU core when it is 0."""
        return self.num_workers or os.cpu_count() or 1

    def resolved_loader(self) -> str:
        if self.loader != "auto":
            return self.loader
        return "tfdata" if keras.backend.backend() == "tensorflow" and self.dataset_format != "npz" else "numpy"

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        if self.label_remap is not None:
            out["label_remap"] = {str(k): v for k, v in self.label_remap.items()}
        return out


def make_batches(
    data: DataConfig,
    split: str,
    preprocess: PreprocessConfig,
    batch_size: int,
    *,
    seed: int | None = None,
    as_tuple: bool = True,
):
    """Batches of ``split``: a ``tf.data.Dataset`` or a ``keras.utils.PyDataset``.

    Training (``preprocess.is_training``) repeats forever on tf.data and
    reshuffles every epoch on the NumPy loader; evaluation passes once.
    """
    if data.resolved_loader() == "tfdata":
        from deeplab_dpc.data.input_pipeline import build_dataset  # noqa: PLC0415 (needs TensorFlow)

        if data.dataset_format == "npz":
            raise ValueError("dataset_format='npz' is read by the NumPy loader only (loader=numpy)")
        return build_dataset(
            data.dataset_dir,
            split,
            preprocess,
            batch_size,
            seed=seed,
            dataset=data.dataset if data.is_tfds else data.dataset_format,
            as_tuple=as_tuple,
            label_remap=data.label_remap,
        )
    from deeplab_dpc.data import numpy_loader  # noqa: PLC0415

    return numpy_loader.SegmentationPyDataset(
        open_source(data, split), preprocess, batch_size, seed=seed, as_tuple=as_tuple, workers=data.workers
    )


def open_source(data: DataConfig, split: str):
    """Random access to the decoded examples of ``split`` (no TensorFlow): sample dicts.

    An ``NpzSource``, ``TFRecordSource`` or ``FolderSource`` by ``data.dataset_format``,
    with ``data.label_remap`` applied.
    """
    from deeplab_dpc.data import numpy_loader  # noqa: PLC0415

    if data.is_tfds:
        raise ValueError(f"dataset={data.dataset!r} needs TensorFlow (loader=tfdata)")
    if data.dataset_format == "npz":
        path = os.path.join(data.dataset_dir, f"{split}.npz")
        return numpy_loader.NpzSource(path, label_remap=data.label_remap)
    if data.dataset_format == "tfrecord":
        return numpy_loader.TFRecordSource(data.dataset_dir, split, label_remap=data.label_remap)
    layout = data.dataset_format.partition(":")[2] or "auto"
    return numpy_loader.FolderSource.from_split(data.dataset_dir, split, layout=layout, label_remap=data.label_remap)

"""The tiny training setup the training tests share: generated SegNet folders and a fast TrainConfig."""

from deeplab_dpc.data.batches import DataConfig
from deeplab_dpc.training.config import TrainConfig


def tiny_train_config(dataset, logdir, model, **overrides) -> TrainConfig:
    """A TrainConfig on ``dataset`` = (root, descriptor) of ``synthetic.write_segnet_folders``.

    No random scaling, checkpoints at every log point, batch norm momentum 0.9
    (short runs), seeded; ``overrides`` replace any field.
    """
    root, descriptor = dataset
    fields = dict(
        model=model,
        data=DataConfig(dataset=descriptor, dataset_dir=root, dataset_format="folder:segnet"),
        train_logdir=str(logdir),
        train_crop_size=(64, 64),
        train_batch_size=4,
        min_scale_factor=1.0,
        max_scale_factor=1.0,
        base_learning_rate=0.05,
        training_number_of_steps=30,
        log_steps=5,
        save_interval_secs=0,
        batch_norm_momentum=0.9,
        seed=1,
    )
    fields.update(overrides)
    return TrainConfig(**fields)

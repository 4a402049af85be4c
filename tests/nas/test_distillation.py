"""Proxy distillation: the loss is the hand-computed one, a trial trains on cached teacher logits, a cache
without them is named, and the new fields travel through flags, JSON and old search configs."""

import json

import numpy as np
import pytest
from absl import app, flags

from deeplab_dpc import proxy_train, search
from deeplab_dpc.nas.features import CacheError, nearest_indices, write_arrays
from deeplab_dpc.nas.proxy import (
    ProxyConfig,
    interpolation_matrix,
    load_proxy_data,
    run_proxy,
)
from deeplab_dpc.nas.search_config import CONFIG_FILE, ConfigMismatch, SearchConfig, prepare_search_dir
from tests.nas.test_proxy import CELL, CROP, _task

NUM_CLASSES = 3
IGNORE = 255


def _resize(logits, grid):
    """NumPy bilinear resize with aligned corners, [B, h, w, C] -> [B, H, W, C]."""
    rows = interpolation_matrix(logits.shape[1], grid[0]).astype(np.float64)
    cols = interpolation_matrix(logits.shape[2], grid[1]).astype(np.float64)
    return np.einsum("Hh,bhwc,Ww->bHWc", rows, logits.astype(np.float64), cols)


def _log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _numpy_term(kind, temperature, labels, student, teacher):
    """The distillation term by hand: per pixel, then averaged over pixels labelled with a class."""
    if kind == "mse":
        pixel = ((student - teacher) ** 2).mean(-1)
    else:
        log_p = _log_softmax(teacher / temperature)
        log_q = _log_softmax(student / temperature)
        pixel = temperature**2 * (np.exp(log_p) * (log_p - log_q)).sum(-1)
    valid = (labels != IGNORE) & (labels < NUM_CLASSES)
    return pixel[valid].sum() / (valid.sum() + 1e-5)


@pytest.mark.parametrize("kind, temperature", [("mse", 1.0), ("kl", 1.0), ("kl", 3.0)])
def test_the_distillation_loss_is_the_hand_computed_one(kind, temperature):
    from deeplab_dpc.nas.distillation import ProxyDistillationLoss, pack_targets
    from deeplab_dpc.training.losses import SegmentationLoss

    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2, (2, 3, 4, NUM_CLASSES)).astype("float32")  # the cell's, at the feature grid
    labels = rng.integers(0, NUM_CLASSES, (2, 9, 13)).astype("uint8")
    labels[0, :4] = IGNORE  # padding: no term
    labels[1, 2, 3] = 7  # a label outside the classes: no term either
    teacher = rng.normal(0, 3, (2, 9, 13, NUM_CLASSES)).astype("float32")
    targets = pack_targets(labels, teacher)
    assert targets.shape == (2, 9, 13, 1 + NUM_CLASSES) and targets.dtype == np.float32

    weight = 0.7
    total = float(ProxyDistillationLoss(NUM_CLASSES, IGNORE, weight, kind, temperature)(targets, logits))
    cross_entropy = float(SegmentationLoss(NUM_CLASSES, IGNORE)(labels, logits))
    assert float(ProxyDistillationLoss(NUM_CLASSES, IGNORE, 0.0, kind, temperature)(targets, logits)) == (
        pytest.approx(cross_entropy, rel=1e-6)
    )
    expected = _numpy_term(kind, temperature, labels, _resize(logits, (9, 13)), teacher)
    assert expected > 0.1
    assert (total - cross_entropy) / weight == pytest.approx(expected, rel=1e-4)

    # Ignored pixels' teacher logits do not count.
    changed = teacher.copy()
    changed[0, :4] += 100.0
    again = float(
        ProxyDistillationLoss(NUM_CLASSES, IGNORE, weight, kind, temperature)(
            pack_targets(labels, changed), logits
        )
    )
    assert again == pytest.approx(total, rel=1e-6)


def _teacher_task(n, seed):
    """``_task`` with a teacher that knows the answer: 4 x one-hot logits of the label at the 4x grid."""
    features, labels = _task(n, seed)
    rows, cols = nearest_indices(CROP[0], 24), nearest_indices(CROP[1], 32)  # 4x the 6x8 feature grid
    teacher = 4.0 * np.eye(NUM_CLASSES, dtype="float32")[labels[:, rows[:, None], cols[None, :]]]
    return features, labels, teacher


@pytest.fixture(scope="module")
def caches(tmp_path_factory):
    """(a cache with teacher logits on its train split, one without)."""
    with_teacher, without = tmp_path_factory.mktemp("teacher"), tmp_path_factory.mktemp("plain")
    for split, n, seed in (("train", 48, 0), ("val", 16, 1)):
        features, labels, teacher = _teacher_task(n, seed)
        kw = dict(num_classes=NUM_CLASSES, shard_size=20, class_names=["a", "b", "c"])
        write_arrays(str(with_teacher), split, features, labels, teacher_logits=teacher, **kw)
        write_arrays(str(without), split, features, labels, **kw)
    return str(with_teacher), str(without)


def _config(cache_dir, **kw):
    args = dict(cache_dir=cache_dir, proxy_steps=20, batch_size=8, proxy_filters=16, learning_rate=0.3)
    args.update(kw)
    return ProxyConfig(**args)


def test_a_proxy_trial_distills_from_cached_teacher_logits(caches):
    config = _config(caches[0], distillation_weight=1.0, distillation_loss="kl", distillation_temperature=2.0)
    data = load_proxy_data(config)
    assert data.train_teacher_logits.shape == (48, 24, 32, NUM_CLASSES)
    assert data.train_teacher_logits.dtype == np.float16 and data.source["teacher"] == "arrays"
    result = run_proxy(CELL, config, features=data)
    assert result["miou"] > 0.3  # chance on this 3-class task is ~0.2
    assert result["config"]["distillation_weight"] == 1.0 and result["config"]["distillation_loss"] == "kl"
    # Without distillation the teacher logits are not loaded, and the loss is the cross entropy alone.
    plain = load_proxy_data(_config(caches[0]))
    assert plain.train_teacher_logits is None and plain.key != data.key
    with pytest.raises(ValueError, match="features were loaded for"):
        run_proxy(CELL, _config(caches[0]), features=data)


def test_distillation_on_a_cache_without_teacher_logits_names_the_flag_and_the_cache(caches, tmp_path):
    cache_dir = caches[1]
    with pytest.raises(
        CacheError, match=f"distillation_weight=0.5 needs teacher logits.*cache_dir={cache_dir}"
    ):
        load_proxy_data(_config(cache_dir, distillation_weight=0.5))
    spec = tmp_path / "cell.json"
    spec.write_text(json.dumps(CELL))
    fv = flags.FlagValues()
    proxy_train.define_flags(fv)
    fv(
        [
            "proxy_train",
            f"--cache_dir={cache_dir}",
            f"--dense_prediction_cell_json={spec}",
            "--proxy_distillation_weight=0.5",
        ]
    )
    with pytest.raises(
        app.UsageError, match="distillation_weight=0.5 needs teacher logits.*--teacher_checkpoint_path"
    ):
        proxy_train.run(fv)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("distillation_weight", -1.0, "distillation_weight=-1.0 must be >= 0"),
        ("distillation_temperature", 0.0, "distillation_temperature=0.0 must be positive"),
        ("distillation_loss", "l1", "distillation_loss='l1' is unknown"),
    ],
)
def test_bad_distillation_fields_are_named(caches, field, value, message):
    with pytest.raises(ValueError, match=message):
        _config(caches[0], **{field: value})


def test_distillation_needs_the_grid_the_teacher_is_cached_at(caches):
    with pytest.raises(ValueError, match="distillation_weight=0.5 needs loss_resolution=features4x"):
        _config(caches[0], distillation_weight=0.5, loss_resolution="label")


def test_the_distillation_fields_round_trip_through_flags_json_and_the_search(caches, tmp_path):
    spec = tmp_path / "cell.json"
    spec.write_text(json.dumps(CELL))
    fv = flags.FlagValues()
    proxy_train.define_flags(fv)
    fv(
        [
            "proxy_train",
            f"--cache_dir={caches[0]}",
            f"--dense_prediction_cell_json={spec}",
            "--proxy_distillation_weight=0.3",
            "--proxy_distillation_loss=mse",
            "--proxy_distillation_temperature=4",
        ]
    )
    _, config = proxy_train.config_from_flags(fv)
    assert (config.distillation_weight, config.distillation_loss, config.distillation_temperature) == (
        0.3,
        "mse",
        4.0,
    )
    assert ProxyConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    off = ProxyConfig(cache_dir=caches[0])
    assert (off.distillation_weight, off.distillation_loss, off.distillation_temperature) == (0.0, "kl", 1.0)

    fv = flags.FlagValues()
    search.define_flags(fv)
    fv(
        [
            "search",
            f"--search_dir={tmp_path / 'search'}",
            f"--cache_dir={caches[0]}",
            "--proxy_distillation_weight=0.3",
            "--proxy_distillation_loss=mse",
            "--proxy_distillation_temperature=4",
        ]
    )
    proxy = search.config_from_flags(fv).proxy
    assert (proxy["distillation_weight"], proxy["distillation_loss"], proxy["distillation_temperature"]) == (
        0.3,
        "mse",
        4.0,
    )
    fv = flags.FlagValues()
    search.define_flags(fv)
    fv(
        [
            "search",
            f"--search_dir={tmp_path / 'search'}",
            f"--cache_dir={caches[0]}",
            "--proxy_distillation_weight=-2",
        ]
    )
    with pytest.raises(app.UsageError, match="^--proxy_distillation_weight=-2.0 must be >= 0"):
        search.config_from_flags(fv)


def test_a_search_config_from_before_distillation_continues_with_it_off(caches, tmp_path):
    def config(proxy):
        return SearchConfig(
            search_dir=str(tmp_path / "search"),
            objective="tests.nas.fakes:deterministic",
            max_trials=8,
            proxy=proxy,
        )

    prepare_search_dir(config({"proxy_steps": 300}))  # written before the distillation fields
    path = tmp_path / "search" / CONFIG_FILE
    assert "distillation_weight" not in json.loads(path.read_text())["proxy"]
    now = ProxyConfig(cache_dir=caches[0], proxy_steps=300).to_dict()
    off = {k: now[k] for k in ("distillation_weight", "distillation_loss", "distillation_temperature")}
    for key, value in (
        ("distillation_weight", 0.5),
        ("distillation_loss", "mse"),
        ("distillation_temperature", 2.0),
    ):
        with pytest.raises(ConfigMismatch, match=rf"^proxy.{key}=.* differs from None"):
            prepare_search_dir(config({"proxy_steps": 300, **off, key: value}))
    prepare_search_dir(config({"proxy_steps": 300, **off}))  # at their defaults: it continues
    assert json.loads(path.read_text())["proxy"]["distillation_weight"] == 0.0

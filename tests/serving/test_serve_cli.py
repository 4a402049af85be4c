"""python -m deeplab_dpc.serve: flags become a ServeConfig; bad ones are usage errors naming the flag."""

import pytest
from absl import app, flags

from deeplab_dpc import serve


def _flags(*args):
    fv = flags.FlagValues()
    serve.define_flags(fv)
    fv(["serve", *args])
    return fv


def test_flags_become_the_config():
    config = serve.config_from_flags(
        _flags("--export_path=/m/1", "--port=9001", "--model_name=camvid", "--num_replicas=2", "--max_batch_size=1")
    )
    assert (config.export_path, config.port, config.model_name) == ("/m/1", 9001, "camvid")
    assert (config.num_replicas, config.max_batch_size, config.host) == (2, 1, "127.0.0.1")


@pytest.mark.parametrize(
    "args,match",
    [
        ((), "--export_path is required"),
        (("--export_path=/m/1", "--max_batch_size=0"), "max_batch_size=0 must be at least 1"),
        (("--export_path=/m/1", "--port=70000"), "port=70000"),
        (("--export_path=/m/1", "--model_name=a:b"), "model_name='a:b'"),
        (("--export_path=/m/1", "--batch_wait_timeout_ms=-1"), "batch_wait_timeout_ms=-1"),
    ],
)
def test_bad_flags_are_usage_errors_naming_the_flag(args, match):
    with pytest.raises(app.UsageError, match=match):
        serve.config_from_flags(_flags(*args))


def test_an_export_path_without_a_saved_model_is_refused_before_serving(tmp_path):
    from deeplab_dpc.serving.runtime import ModelError, load_runtime

    with pytest.raises(ModelError, match=f"--export_path={tmp_path}: no saved_model.pb"):
        load_runtime("savedmodel", str(tmp_path))


def test_the_command_refuses_a_folder_without_a_saved_model_before_starting_ray(tmp_path):
    with pytest.raises(app.UsageError, match="no saved_model.pb"):
        serve.main(["serve"], _flags(f"--export_path={tmp_path}"))

"""export_model --onnx_path and the ONNX runtime: its labels are the SavedModel's on CamVid val images."""

import json
import urllib.request

import cv2
import numpy as np
import pytest

pytest.importorskip("tf2onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("tensorflow")

from deeplab_dpc.export import export_lib  # noqa: E402
from deeplab_dpc.serving.runtime import ModelError, OnnxRuntime, SavedModelRuntime, load_runtime  # noqa: E402
from tests.serving.helpers import export_small_model  # noqa: E402


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """An 11-class small model with random weights, as SavedModel and ONNX."""
    root = tmp_path_factory.mktemp("onnx")
    onnx_path = str(root / "model.onnx")
    return export_small_model(root, num_classes=11, seed=1, onnx_path=onnx_path), onnx_path


def test_onnx_labels_equal_the_saved_models_on_camvid_val_images(exports, camvid_root):
    saved_model, onnx = SavedModelRuntime(exports[0]), OnnxRuntime(exports[1])
    names = sorted((camvid_root / "val").iterdir())[:: 101 // 4][:4]
    images = [cv2.imread(str(p))[..., ::-1].copy() for p in names]
    images.append(images[0][:181, :243].copy())  # and another size in the same call
    expected = saved_model.predict(images)
    got = onnx.predict(images)
    for e, g in zip(expected, got):
        assert g["semantic_predictions"].shape == e["semantic_predictions"].shape
        assert g["semantic_predictions"].dtype == np.int32
        agree = np.mean(g["semantic_predictions"] == e["semantic_predictions"])
        assert agree >= 0.999, agree


def test_the_onnx_runtime_refuses_a_missing_model(tmp_path):
    with pytest.raises(ModelError, match="no ONNX model there"):
        load_runtime("onnx", str(tmp_path / "model.onnx"))


def test_onnx_path_inside_the_export_is_refused():
    with pytest.raises(ValueError, match="onnx_path=/m/1/model.onnx must not be inside export_path"):
        export_lib.ExportConfig(checkpoint_path="/c", export_path="/m/1", onnx_path="/m/1/model.onnx")


def test_serve_with_the_onnx_runtime_answers_the_saved_models_labels(exports):
    """serve --runtime=onnx for real: a local Ray Serve on the ONNX model, called with serving_client."""
    pytest.importorskip("ray.serve")
    from deeplab_dpc.serving import app as serving_app  # noqa: PLC0415
    from tests.serving.helpers import free_port, png, random_image  # noqa: PLC0415
    from tools import serving_client  # noqa: PLC0415

    config = serving_app.ServeConfig(export_path=exports[1], runtime="onnx", port=free_port(), replica_threads=1)
    serving_app.start(config)
    try:
        server = f"http://127.0.0.1:{config.port}"
        status = json.loads(urllib.request.urlopen(f"{server}/v1/models/deeplab", timeout=60).read())
        assert status["metadata"]["runtime"] == "onnx"
        images = [random_image(40, 56, seed=1), random_image(33, 47, seed=2)]
        body = serving_client.build_bytes_request([png(i) for i in images])
        results = serving_client.parse_response(
            serving_client.post_json(serving_client.predict_url(server, "deeplab"), body)
        )
    finally:
        serving_app.stop()
    expected = SavedModelRuntime(exports[0]).predict(images)
    for e, r in zip(expected, results):
        assert r["semantic_predictions"].shape == e["semantic_predictions"].shape
        assert np.mean(r["semantic_predictions"] == e["semantic_predictions"]) >= 0.999

"""The model server for real: a local Ray Serve on 127.0.0.1 with a small exported model, called with
tools/serving_client and with raw HTTP. Nothing mocked; skipped where Ray Serve is not installed."""

import base64
import json
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

pytest.importorskip("ray.serve")
tf = pytest.importorskip("tensorflow")

from deeplab_dpc.serving import app as serving_app  # noqa: E402
from deeplab_dpc.serving.requests import decode_image  # noqa: E402
from tests.serving.helpers import export_small_model, free_port, huge_blank_png, png, random_image  # noqa: E402
from tools import serving_client  # noqa: E402

MAX_BODY = 2 * 1024 * 1024
MAX_PIXELS = 1 << 20


@pytest.fixture(scope="module")
def export_path(tmp_path_factory):
    """A 4-class small model with random weights, exported with export_model's code."""
    return export_small_model(tmp_path_factory.mktemp("serve"), num_classes=4, seed=0)


@pytest.fixture(scope="module")
def reference(export_path):
    """Labels straight from the SavedModel's serving_default, one image at a time."""
    predict = tf.saved_model.load(export_path).signatures["serving_default"]
    return lambda image: predict(images=tf.constant(image[None]))["semantic_predictions"].numpy()[0]


@pytest.fixture(scope="module")
def server(export_path):
    config = serving_app.ServeConfig(
        export_path=export_path,
        port=free_port(),
        max_batch_size=4,
        batch_wait_timeout_ms=50,
        max_body_bytes=MAX_BODY,
        max_image_pixels=MAX_PIXELS,
        replica_threads=1,
    )
    serving_app.start(config)
    yield f"http://127.0.0.1:{config.port}"
    serving_app.stop()


def _call(url, body=None, content_type="application/json"):
    request = urllib.request.Request(url, data=body, headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def test_status_answers_like_tensorflow_serving(server):
    status, body = _call(f"{server}/v1/models/deeplab")
    assert status == 200
    answer = json.loads(body)
    assert answer["model_version_status"][0]["state"] == "AVAILABLE"
    assert answer["metadata"]["num_classes"] == 4
    assert _call(f"{server}/v1/models/other")[0] == 404


def test_serving_client_gets_the_saved_models_labels(server, reference):
    images = [random_image(40, 56, seed=1), random_image(40, 56, seed=2)]
    body = serving_client.build_bytes_request([png(i) for i in images])
    response = serving_client.post_json(serving_client.predict_url(server, "deeplab"), body)
    results = serving_client.parse_response(response)
    for image, result in zip(images, results):
        np.testing.assert_array_equal(result["semantic_predictions"], reference(image))
    # uint8 arrays (serving_default's row format) answer the same.
    arrays = serving_client.build_array_request(images)
    results = serving_client.parse_response(serving_client.post_json(serving_client.predict_url(server, "deeplab"), arrays))
    np.testing.assert_array_equal(results[1]["semantic_predictions"], reference(images[1]))


def test_images_of_different_sizes_batched_together_get_their_own_labels(server, reference):
    """Concurrent requests of three sizes land in the same batches: each image's labels equal a single call."""
    images = [random_image(h, w, seed=s) for s, (h, w) in enumerate([(33, 47), (40, 56), (33, 47), (21, 30)] * 2)]

    def one(image):
        status, body = _call(
            f"{server}/v1/models/deeplab:predict", json.dumps({"instances": [{"b64": base64.b64encode(png(image)).decode()}]}).encode()
        )
        assert status == 200, body
        return np.asarray(json.loads(body)["predictions"][0])

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(one, images))
    for image, labels in zip(images, answers):
        np.testing.assert_array_equal(labels, reference(image))
    # And several sizes in one request.
    status, body = _call(
        f"{server}/v1/models/deeplab:predict", json.dumps({"instances": [i.tolist() for i in images[:4]]}).encode()
    )
    assert status == 200
    for image, labels in zip(images[:4], json.loads(body)["predictions"]):
        np.testing.assert_array_equal(np.asarray(labels), reference(image))


def test_segment_answers_a_label_png_and_a_colour_png(server, reference):
    image = random_image(40, 56, seed=5)
    status, body = _call(f"{server}/v1/models/deeplab:segment?format=labels", png(image), "image/png")
    assert status == 200
    np.testing.assert_array_equal(decode_image(body, MAX_PIXELS)[..., 0], reference(image))
    status, body = _call(f"{server}/v1/models/deeplab:segment?colormap=cityscapes", png(image), "image/png")
    assert status == 200 and decode_image(body, MAX_PIXELS).shape == (40, 56, 3)
    status, body = _call(f"{server}/v1/models/deeplab:segment?format=jpeg", png(image), "image/png")
    assert status == 400 and b"format='jpeg' is unknown" in body


@pytest.mark.parametrize(
    "route,body,status,message",
    [
        (":predict", b"", 400, b"malformed JSON"),
        (":predict", b"{not json", 400, b"malformed JSON"),
        (":predict", b'{"inputz": []}', 400, b"missing field 'instances'"),
        (":predict", json.dumps({"instances": [{"b64": base64.b64encode(b"garbage").decode()}]}).encode(), 400, b"not a PNG or JPEG"),
        (":predict", json.dumps({"instances": [[[[1.5, 0, 0]]]]}).encode(), 400, b"integers 0..255"),
        (":predict", json.dumps({"instances": [[[0, 0, 0]]]}).encode(), 400, b"got shape [1, 3]"),
        (":segment", b"", 400, b"empty image bytes"),
        (":segment", png(random_image(40, 40))[:200], 400, b"corrupt or truncated PNG"),
        (":segment", huge_blank_png(), 413, b"20000x20000 = 400000000 pixels, above max_image_pixels"),
        (":segment", huge_blank_png(0, 7), 400, b"zero size"),
        (":segment", bytes(MAX_BODY + 1), 413, b"above max_body_bytes"),
    ],
)
def test_hostile_requests_get_a_4xx_naming_the_problem_and_the_next_request_is_served(
    server, reference, route, body, status, message
):
    got, answer = _call(f"{server}/v1/models/deeplab{route}", body)
    assert got == status, answer
    assert message in json.loads(answer)["error"].encode()
    image = random_image(24, 32, seed=9)
    ok, labels = _call(f"{server}/v1/models/deeplab:segment?format=labels", png(image), "image/png")
    assert ok == 200
    np.testing.assert_array_equal(decode_image(labels, MAX_PIXELS)[..., 0], reference(image))

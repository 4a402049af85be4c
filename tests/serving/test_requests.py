"""Requests to the model server: every malformed one is a RequestError with its status and a message
that names the problem, found before any model runs (and before decoding an oversized image)."""

import base64
import json

import numpy as np
import pytest

from deeplab_dpc.serving.requests import (
    RequestError,
    decode_image,
    image_size,
    label_png,
    parse_predict,
    predict_response,
)
from tests.serving.helpers import huge_blank_png, png, random_image

MAX_PIXELS = 1 << 20


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _body(**fields) -> bytes:
    return json.dumps(fields).encode()


def _refused(body, status, match):
    with pytest.raises(RequestError, match=match) as caught:
        parse_predict(body, MAX_PIXELS)
    assert caught.value.status == status


def test_b64_and_array_instances_decode_to_the_same_pixels():
    image = random_image(9, 13)
    signature, images = parse_predict(
        _body(signature_name="serving_bytes", instances=[{"b64": _b64(png(image))}, image.tolist()]), MAX_PIXELS
    )
    assert signature == "serving_bytes"
    assert [i.dtype for i in images] == [np.uint8, np.uint8]
    np.testing.assert_array_equal(images[0], image)
    np.testing.assert_array_equal(images[1], image)
    # The columnar form, with a named input, reads the same.
    _, columnar = parse_predict(_body(inputs={"images": [image.tolist()]}), MAX_PIXELS)
    np.testing.assert_array_equal(columnar[0], image)


@pytest.mark.parametrize(
    "body,status,match",
    [
        (b"{not json", 400, "malformed JSON"),
        (b"[1, 2]", 400, "must be a JSON object"),
        (_body(signature_name="serving_default"), 400, "missing field 'instances'"),
        (_body(instances=[]), 400, "non-empty list"),
        (_body(instances=[{"b64": "not base64!"}]), 400, r"instances\[0\]: b64 is not valid base64"),
        (_body(instances=[{"b64": ""}]), 400, r"instances\[0\]: empty image bytes"),
        (_body(instances=[{"b64": _b64(b"garbage bytes, no image")}]), 400, "not a PNG or JPEG"),
        (_body(instances=[{"b64": _b64(png(random_image(40, 40))[:300])}]), 400, "corrupt or truncated PNG"),
        (_body(instances=[[[0, 0, 0]]]), 400, r"expected \[height\]\[width\]\[3\].*shape \[1, 3\]"),
        (_body(instances=[[[[0, 0]]]]), 400, r"shape \[1, 1, 2\]"),
        (_body(instances=[[[[0, 0, 0]], [[0, 0]]]]), 400, "rows of different lengths"),
        (_body(instances=[[[[0.5, 0, 0]]]]), 400, "integers 0..255"),
        (_body(instances=[[[["a", "b", "c"]]]]), 400, "integers 0..255"),
        (_body(instances=[[[[0, 0, 300]]]]), 400, r"0..255 \(uint8\), got 0..300"),
        (_body(instances=[[]]), 400, r"got shape \[0\]"),  # a zero-size array image
        (_body(instances=[{"image": 3}]), 400, "expected {'b64': ...} or an image array, got int"),
        (_body(signature_name="other", instances=[[[[0, 0, 0]]]]), 400, "signature_name 'other' is unknown"),
    ],
)
def test_each_malformed_request_is_refused_with_a_message_naming_it(body, status, match):
    _refused(body, status, match)


def test_an_image_above_the_pixel_limit_is_refused_from_its_header():
    bomb = huge_blank_png()
    assert len(bomb) < 100_000  # what crosses the network is small; decoded it would be 400M pixels
    with pytest.raises(RequestError, match=r"20000x20000 = 400000000 pixels, above max_image_pixels") as caught:
        decode_image(bomb, MAX_PIXELS)
    assert caught.value.status == 413
    # An array above the limit too, and an image at the limit passes.
    _refused(_body(instances=[np.zeros((1025, 1024, 3), np.uint8).tolist()]), 413, "above max_image_pixels")
    assert decode_image(png(random_image(1024, 1024)), MAX_PIXELS).shape == (1024, 1024, 3)


def test_a_zero_size_image_gets_a_clear_answer():
    zero = huge_blank_png(width=0, height=5)
    with pytest.raises(RequestError, match="zero size|not a PNG") as caught:
        decode_image(zero, MAX_PIXELS)
    assert caught.value.status == 400


def test_responses_use_tensorflow_servings_row_format():
    labels = np.array([[0, 1], [2, 3]], np.int32)
    assert predict_response([{"semantic_predictions": labels}]) == {"predictions": [[[0, 1], [2, 3]]]}
    both = predict_response([{"semantic_predictions": labels, "semantic_probabilities": np.ones((2, 2, 1))}])
    assert set(both["predictions"][0]) == {"semantic_predictions", "semantic_probabilities"}
    grey = decode_image(label_png(labels), MAX_PIXELS)
    np.testing.assert_array_equal(grey[..., 0], labels)


def test_jpeg_sizes_come_from_the_frame_header():
    import cv2

    image = random_image(37, 53)
    jpeg = cv2.imencode(".jpg", image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
    assert image_size(jpeg) == ("JPEG", 53, 37)
    decoded = decode_image(jpeg, MAX_PIXELS)
    assert decoded.shape == (37, 53, 3)
    # Pillow and OpenCV both decode with libjpeg: the same pixels up to their IDCT's rounding.
    reference = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)[..., ::-1]
    assert np.abs(decoded.astype(int) - reference).max() <= 2
    with pytest.raises(RequestError, match="above max_image_pixels"):
        decode_image(jpeg, 37 * 53 - 1)

"""Export: SavedModel round trips at two sizes, the bytes signature, TFLite, errors that name
the flag, all-or-nothing writes, and the REST client against the exported model."""

import base64
import http.server
import json
import os
import pathlib
import subprocess
import sys
import threading

import cv2
import h5py
import keras
import numpy as np
import pytest
from absl import app, flags

tf = pytest.importorskip("tensorflow")

from deeplab_dpc import export_model, runs  # noqa: E402
from deeplab_dpc.core.model import ModelConfig, build_deeplab  # noqa: E402
from deeplab_dpc.core.spec import CellSpec  # noqa: E402
from deeplab_dpc.data.colormaps import get_colormap, label_to_color  # noqa: E402
from deeplab_dpc.evaluation.inference import predict_probabilities  # noqa: E402
from deeplab_dpc.export import export_lib  # noqa: E402
from deeplab_dpc.runs import checkpoint_path  # noqa: E402
from tools import serving_client  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[2]
SPEC = ROOT / "experiments/specs/dense_prediction_cell_branch5_top1_cityscapes.json"
NUM_CLASSES = 4
SCALES = (0.75, 1.0)
SIZES = ((65, 97), (48, 33))
TFLITE_CROP = (49, 65)


def _config(num_classes=NUM_CLASSES):
    return ModelConfig(
        num_classes=num_classes,
        model_variant="mobilenet_v2",
        depth_multiplier=0.35,
        dense_prediction_cell=CellSpec.load(SPEC),
        decoder_output_stride=4,
    )


def _nontrivial_model(config, seed=0):
    """Random BN scales and offsets, moving statistics of real activations, balanced logits of std ~3.

    With the initial weights every pixel's logits are ~1e-8 (all classes tie); here every class wins
    somewhere and the top two probabilities are well apart almost everywhere.
    """
    keras.utils.set_random_seed(seed)  # the same weights every run: tolerances below were measured on them
    model = build_deeplab(config)
    rng = np.random.default_rng(seed)
    calibration = rng.uniform(0, 255, (2, 65, 97, 3)).astype("float32")
    norms = [l for l in model._flatten_layers() if isinstance(l, keras.layers.BatchNormalization)]
    for layer in norms:
        shape = layer.moving_mean.shape
        layer.gamma.assign(rng.uniform(0.5, 1.5, shape))
        layer.beta.assign(rng.normal(0.0, 0.3, shape))
        layer.momentum = 0.0  # One training-mode pass sets the moving statistics to the batch's.
    model(calibration, training=True)
    for layer in norms:
        layer.momentum = 0.9997
        # A variance floor: a dead channel's variance of ~0 would blow float32 noise up by 1/sqrt(epsilon),
        # so graph and eager execution (different kernels) would disagree far more than in a trained model.
        layer.moving_variance.assign(np.maximum(np.asarray(layer.moving_variance), 0.01))
    # Logits centred per class (no class wins everywhere) and scaled to std 3.
    conv = model.get_layer("logits")
    logits = np.asarray(model(calibration))
    centred = logits - logits.mean(axis=(0, 1, 2))
    conv.kernel.assign(np.asarray(conv.kernel) * (3.0 / centred.std()))
    conv.bias.assign((np.asarray(conv.bias) - logits.mean(axis=(0, 1, 2))) * (3.0 / centred.std()))
    return model


def _images(height, width, count=2, seed=1):
    return np.random.default_rng(seed).integers(0, 256, (count, height, width, 3), dtype=np.uint8)


def _assert_labels_match(labels, probabilities, min_clear=0.99):
    """Labels equal the argmax of ``probabilities`` wherever its top two differ by more than 1e-4
    (float32 noise between eager and graph kernels is ~1e-5 here)."""
    labels = np.asarray(labels)
    top2 = np.sort(probabilities, axis=-1)[..., -2:]
    clear = top2[..., 1] - top2[..., 0] > 1e-4
    assert clear.mean() >= min_clear
    np.testing.assert_array_equal(labels[clear], np.argmax(probabilities, axis=-1)[clear])


def _parse_flags(*args):
    fv = flags.FlagValues()
    export_model.define_flags(fv)
    fv(["export_model", *args])
    return fv


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A train_logdir as training leaves it: model_config.json and a checkpoint with optimizer state."""
    logdir = tmp_path_factory.mktemp("train_logdir")
    config = _config()
    model = _nontrivial_model(config)
    model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9), loss="sparse_categorical_crossentropy")
    model.optimizer.build(model.trainable_variables)
    model.optimizer.iterations.assign(100)
    config.save(logdir / "model_config.json")
    model.save_weights(checkpoint_path(str(logdir), 100))
    return logdir, model, config


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    """Multi-scale + flip export with probabilities, reloaded."""
    logdir, _, _ = trained
    export_path = tmp_path_factory.mktemp("exports") / "deeplab" / "1"
    config = export_lib.ExportConfig(
        checkpoint_path=str(logdir),
        export_path=str(export_path),
        inference_scales=SCALES,
        add_flipped_images=True,
        save_probabilities=True,
    )
    summary = export_lib.run_export(config)
    return export_path, tf.saved_model.load(str(export_path)), summary


def test_load_model_for_inference_restores_every_variable(trained):
    logdir, model, config = trained
    ckpt = checkpoint_path(str(logdir), 100)
    with h5py.File(ckpt, "r") as f:
        assert "optimizer" in f  # The file does hold optimizer state, which an uncompiled model skips.
    restored, restored_config = runs.load_model_for_inference(str(logdir))  # A folder: its newest.
    assert restored_config == config
    assert getattr(restored, "optimizer", None) is None  # Never compiled.
    assert len(restored.variables) == len(model.variables)
    for a, b in zip(model.variables, restored.variables):
        assert a.shape == b.shape, a.path
        if "seed_generator" in a.path:
            continue  # Dropout's random state: not restored by Keras, and unused at inference.
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=a.path)
    same, _ = runs.load_model_for_inference(ckpt)  # A file.
    np.testing.assert_array_equal(
        np.asarray(same.get_layer("logits").kernel), np.asarray(model.get_layer("logits").kernel)
    )


def test_checkpoint_of_another_model_is_refused(trained, tmp_path):
    logdir, model, _ = trained
    _config(num_classes=NUM_CLASSES + 1).save(tmp_path / "model_config.json")
    model.save_weights(checkpoint_path(str(tmp_path), 7))
    with pytest.raises(ValueError, match="checkpoint_path=.*does not fit the model"):
        runs.load_model_for_inference(str(tmp_path))


def test_round_trip_at_two_sizes_equals_keras(trained, exported):
    _, model, _ = trained
    _, loaded, _ = exported
    serve = loaded.signatures["serving_default"]
    for height, width in SIZES:
        images = _images(height, width)
        out = serve(images=tf.constant(images))
        expected = np.asarray(predict_probabilities(model, images, SCALES, add_flipped_images=True))
        assert out["semantic_predictions"].dtype == tf.int32
        assert out["semantic_predictions"].shape == (2, height, width)
        assert out["semantic_probabilities"].shape == (2, height, width, NUM_CLASSES)
        # float32 round-off between the exported graph and eager Keras (other kernels and fusions):
        # measured 5.5e-5 on this model with DeepLab's initialisers (1e-5 held with glorot's).
        np.testing.assert_allclose(out["semantic_probabilities"].numpy(), expected, atol=1e-4)
        _assert_labels_match(out["semantic_predictions"].numpy(), expected)
        assert len(np.unique(expected.argmax(-1))) > 1  # The model is not constant.


def test_export_config_and_signatures(trained, exported):
    logdir, _, config = trained
    export_path, loaded, summary = exported
    written = json.loads((export_path / "export_config.json").read_text())
    assert written["inference_scales"] == list(SCALES)
    assert written["add_flipped_images"] is True
    assert written["num_classes"] == NUM_CLASSES
    assert written["source_checkpoint"] == checkpoint_path(str(logdir), 100)
    assert ModelConfig.from_dict(written["model_config"]) == config
    assert summary["checkpoint"] == checkpoint_path(str(logdir), 100)
    assert set(loaded.signatures) == {"serving_default", "serving_bytes"}
    inputs = loaded.signatures["serving_default"].structured_input_signature[1]
    assert inputs["images"].dtype == tf.uint8 and inputs["images"].shape.as_list() == [None, None, None, 3]
    inputs = loaded.signatures["serving_bytes"].structured_input_signature[1]
    assert inputs["image_bytes"].dtype == tf.string and inputs["image_bytes"].shape.as_list() == [None]
    # Nothing else beside the export (the temporary folder was renamed).
    assert os.listdir(export_path.parent) == ["1"]


def test_bytes_signature_decodes_png_and_jpeg(exported):
    _, loaded, _ = exported
    serve = loaded.signatures["serving_default"]
    serve_bytes = loaded.signatures["serving_bytes"]
    images = _images(48, 33, count=2, seed=3)
    pngs = [cv2.imencode(".png", image[..., ::-1].copy())[1].tobytes() for image in images]
    from_png = serve_bytes(image_bytes=tf.constant(pngs))
    from_array = serve(images=tf.constant(images))
    for key in ("semantic_predictions", "semantic_probabilities"):
        np.testing.assert_array_equal(from_png[key].numpy(), from_array[key].numpy())

    jpeg = cv2.imencode(".jpg", images[0][..., ::-1].copy(), [cv2.IMWRITE_JPEG_QUALITY, 80])[1].tobytes()
    decoded = tf.io.decode_jpeg(jpeg, channels=3)[tf.newaxis]
    from_jpeg = serve_bytes(image_bytes=tf.constant([jpeg]))
    expected = serve(images=decoded)
    for key in ("semantic_predictions", "semantic_probabilities"):
        np.testing.assert_array_equal(from_jpeg[key].numpy(), expected[key].numpy())


def test_bytes_signature_refuses_mixed_sizes(exported):
    _, loaded, _ = exported
    pngs = [cv2.imencode(".png", _images(h, w, count=1)[0])[1].tobytes() for h, w in SIZES]
    with pytest.raises(tf.errors.InvalidArgumentError, match="same height and width"):
        loaded.signatures["serving_bytes"](image_bytes=tf.constant(pngs))


def test_cli_single_scale_is_plain_argmax_and_tflite_agrees(trained, tmp_path):
    logdir, model, _ = trained
    export_path = tmp_path / "export"
    tflite_path = tmp_path / "deeplab.tflite"
    fv = _parse_flags(
        f"--checkpoint_path={checkpoint_path(str(logdir), 100)}",
        f"--export_path={export_path}",
        f"--num_classes={NUM_CLASSES}",
        f"--crop_size={TFLITE_CROP[0]},{TFLITE_CROP[1]}",
        f"--tflite_path={tflite_path}",
        "--save_probabilities",
    )
    export_model.main(["export_model"], fv)

    loaded = tf.saved_model.load(str(export_path))
    for height, width in SIZES:
        images = _images(height, width, seed=5)
        logits = np.asarray(model(images.astype("float32")))
        probabilities = np.asarray(keras.ops.softmax(logits, axis=-1))
        labels = loaded.signatures["serving_default"](images=tf.constant(images))["semantic_predictions"]
        _assert_labels_match(labels.numpy(), probabilities)

    interpreter = export_lib.tflite_interpreter(model_path=str(tflite_path))  # LiteRT where installed
    runner = interpreter.get_signature_runner("serving_default")
    image = _images(*TFLITE_CROP, count=1, seed=7).astype(np.float32)
    out = runner(images=image)
    assert out["semantic_predictions"].shape == (1, *TFLITE_CROP)
    logits = np.asarray(model(image))
    keras_probabilities = np.asarray(keras.ops.softmax(logits, axis=-1))
    np.testing.assert_allclose(out["semantic_probabilities"], keras_probabilities, atol=1e-4)
    assert (out["semantic_predictions"] == logits.argmax(-1)).mean() >= 0.995
    ops = {op["op_name"] for op in interpreter._get_ops_details()}
    assert not ops & {"VAR_HANDLE", "READ_VARIABLE", "FlexBitwiseAnd"}  # Frozen, builtins only.


def test_num_classes_contradicting_the_config_names_the_flag(trained, tmp_path):
    logdir, _, _ = trained
    fv = _parse_flags(f"--checkpoint_path={logdir}", f"--export_path={tmp_path / 'e'}", "--num_classes=19")
    with pytest.raises(app.UsageError, match=r"--num_classes=19 contradicts.*num_classes=4"):
        export_model.run(fv)
    assert not (tmp_path / "e").exists()


def test_missing_checkpoint_names_the_flag(tmp_path):
    for path, reason in (
        (tmp_path / "nowhere", "does not exist"),
        (tmp_path, "holds no ckpt-"),
    ):
        fv = _parse_flags(f"--checkpoint_path={path}", f"--export_path={tmp_path / 'e'}")
        with pytest.raises(app.UsageError, match=f"--checkpoint_path=.*{reason}"):
            export_model.run(fv)
    other = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    other.save_weights(checkpoint_path(str(tmp_path), 1))
    fv = _parse_flags(f"--checkpoint_path={tmp_path}", f"--export_path={tmp_path / 'e'}")
    with pytest.raises(app.UsageError, match="--checkpoint_path=.*no model_config.json"):
        export_model.run(fv)
    fv = _parse_flags(f"--export_path={tmp_path / 'e'}")
    with pytest.raises(app.UsageError, match="--checkpoint_path is required"):
        export_model.run(fv)


def test_flag_errors_name_the_flag(trained, tmp_path):
    logdir, _, _ = trained
    base = (f"--checkpoint_path={logdir}", f"--export_path={tmp_path / 'e'}")
    cases = (
        (("--tflite_path=/tmp/x.tflite",), "--tflite_path needs crop_size"),
        (("--crop_size=0,5",), "--crop_size"),
        (("--inference_scales=1.0,big",), "--inference_scales"),
        (("--inference_scales=1.0,-0.5",), "--inference_scales"),
    )
    for extra, message in cases:
        with pytest.raises(app.UsageError, match=message):
            export_model.run(_parse_flags(*base, *extra))
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "saved_model.pb").write_bytes(b"old")
    with pytest.raises(app.UsageError, match="--export_path=.*already exists"):
        export_model.run(_parse_flags(*base))


def test_interrupted_export_leaves_no_partial_saved_model(trained, tmp_path, monkeypatch):
    logdir, _, _ = trained

    def write_then_fail(module, directory):
        os.makedirs(os.path.join(directory, "variables"))
        pathlib.Path(directory, "saved_model.pb").write_bytes(b"half")
        raise RuntimeError("killed mid-export")

    monkeypatch.setattr(export_lib, "_write_saved_model", write_then_fail)
    fresh = tmp_path / "fresh"
    with pytest.raises(RuntimeError, match="killed mid-export"):
        export_lib.run_export(export_lib.ExportConfig(checkpoint_path=str(logdir), export_path=str(fresh)))
    assert os.listdir(tmp_path) == []  # Neither the export nor its temporary folder.

    old = tmp_path / "old"  # With overwrite, a failed export keeps the previous one intact.
    old.mkdir()
    (old / "saved_model.pb").write_bytes(b"previous")
    with pytest.raises(RuntimeError, match="killed mid-export"):
        export_lib.run_export(
            export_lib.ExportConfig(checkpoint_path=str(logdir), export_path=str(old), overwrite=True)
        )
    assert os.listdir(tmp_path) == ["old"]
    assert (old / "saved_model.pb").read_bytes() == b"previous"


# ----------------------------------------------------------------------------------------------------------
# The REST client.


def _png_rgb(data):
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)[..., ::-1]


def test_client_request_bodies():
    body = serving_client.build_bytes_request([b"\x89PNG fake", b"\xff\xd8 jpeg"])
    assert json.loads(json.dumps(body)) == body  # Plain JSON.
    assert body["signature_name"] == "serving_bytes"
    assert [base64.b64decode(i["b64"]) for i in body["instances"]] == [b"\x89PNG fake", b"\xff\xd8 jpeg"]

    images = _images(3, 4)
    body = serving_client.build_array_request(list(images))
    assert body["signature_name"] == "serving_default"
    np.testing.assert_array_equal(np.asarray(body["instances"], dtype=np.uint8), images)
    with pytest.raises(ValueError, match="uint8"):
        serving_client.build_array_request([images[0].astype(np.float32)])
    with pytest.raises(ValueError, match="share a size"):
        serving_client.build_array_request([images[0], _images(5, 4)[0]])
    url = serving_client.predict_url("localhost:8501/", "deeplab")
    assert url == "http://localhost:8501/v1/models/deeplab:predict"
    assert serving_client.predict_url("https://h", "m", 3) == "https://h/v1/models/m/versions/3:predict"


def test_client_parses_responses_into_coloured_pngs(tmp_path):
    labels = np.array([[0, 1, 2], [3, 2, 1]])
    several = {
        "predictions": [{"semantic_predictions": labels.tolist(), "semantic_probabilities": [[[0.5]]]}]
    }
    single = {"predictions": [labels[::-1].tolist()]}  # A one-output signature: bare values.
    columnar = {"outputs": {"semantic_predictions": [labels.tolist()]}}
    parsed = [serving_client.parse_response(r) for r in (several, single, columnar)]
    np.testing.assert_array_equal(parsed[0][0]["semantic_predictions"], labels)
    np.testing.assert_array_equal(parsed[1][0]["semantic_predictions"], labels[::-1])
    np.testing.assert_array_equal(parsed[2][0]["semantic_predictions"], labels)
    assert parsed[0][0]["semantic_predictions"].dtype == np.int32

    paths = serving_client.write_predictions(
        parsed[0] + parsed[1], ["a.jpg", "dir/b.png"], str(tmp_path), "camvid"
    )
    assert [os.path.basename(p) for p in paths] == ["a_prediction.png", "b_prediction.png"]
    camvid = get_colormap("camvid")
    rgb = _png_rgb(pathlib.Path(paths[0]).read_bytes())
    np.testing.assert_array_equal(rgb, camvid[labels])
    assert rgb[0, 1].tolist() == [128, 0, 0]  # Class 1 (building) in CamVid's colours.
    np.testing.assert_array_equal(_png_rgb(pathlib.Path(paths[1]).read_bytes()), camvid[labels[::-1]])

    with pytest.raises(RuntimeError, match="server error: bad input"):
        serving_client.parse_response({"error": "bad input"})
    with pytest.raises(ValueError, match="semantic_predictions"):
        serving_client.parse_response({"predictions": [{"other": [1]}]})


class _FakeServing(http.server.BaseHTTPRequestHandler):
    """Answers :predict as TensorFlow Serving's REST API would, by running the loaded SavedModel."""

    loaded = None
    requests = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append((self.path, body))
        try:
            signature = self.loaded.signatures[body["signature_name"]]
            if body["signature_name"] == "serving_bytes":
                data = [base64.b64decode(i["b64"]) for i in body["instances"]]
                out = signature(image_bytes=tf.constant(data))
            else:
                out = signature(images=tf.constant(np.asarray(body["instances"], dtype=np.uint8)))
            rows = [{k: v[i].numpy().tolist() for k, v in out.items()} for i in range(len(body["instances"]))]
            status, answer = 200, {"predictions": rows}
        except Exception as e:  # noqa: BLE001 - reported to the client as TF Serving does.
            status, answer = 400, {"error": str(e)[:200]}
        data = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def test_client_main_against_the_exported_model(exported, tmp_path):
    _, loaded, _ = exported
    _FakeServing.loaded = loaded
    _FakeServing.requests = []
    server = http.server.HTTPServer(("127.0.0.1", 0), _FakeServing)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        address = f"http://127.0.0.1:{server.server_address[1]}"
        images = {
            "a.png": _images(48, 33, count=1, seed=11)[0],
            "b.jpg": _images(65, 97, count=1, seed=12)[0],
        }
        for name, image in images.items():
            assert cv2.imwrite(str(tmp_path / name), image[..., ::-1].copy())
        for signature in ("serving_bytes", "serving_default"):
            fv = flags.FlagValues()
            serving_client.define_flags(fv)
            out_dir = tmp_path / signature
            fv([
                "client",
                f"--server={address}",
                "--model_name=deeplab",
                f"--signature_name={signature}",
                f"--images={tmp_path / 'a.png'},{tmp_path / 'b.jpg'}",
                f"--output_dir={out_dir}",
                "--colormap=pascal",
            ])
            serving_client.main(["client"], fv)
            for name in images:
                if signature == "serving_bytes":  # Decoded by the server (TensorFlow's JPEG decoder)...
                    decoded = tf.io.decode_image((tmp_path / name).read_bytes(), channels=3)
                    decoded = decoded[tf.newaxis].numpy()
                else:  # ... or by the client (OpenCV's); the two JPEG decoders differ slightly.
                    decoded = cv2.imread(str(tmp_path / name))[..., ::-1][np.newaxis].copy()
                out = loaded.signatures["serving_default"](images=tf.constant(decoded))
                labels = out["semantic_predictions"]
                expected = label_to_color(labels.numpy()[0], "pascal")
                got = _png_rgb((out_dir / f"{pathlib.Path(name).stem}_prediction.png").read_bytes())
                np.testing.assert_array_equal(got, expected)
        assert [path for path, _ in _FakeServing.requests] == ["/v1/models/deeplab:predict"] * 4

        with pytest.raises(RuntimeError, match="HTTP 400"):  # The server's error reaches the caller.
            serving_client.post_json(
                f"{address}/v1/models/deeplab:predict", {"signature_name": "nope", "instances": [1]}
            )
    finally:
        server.shutdown()
        server.server_close()


# ----------------------------------------------------------------------------------------------------------
# Slow: the real command line; TFLite with scales and flips.


@pytest.mark.slow
def test_command_line_export(trained, tmp_path):
    logdir, model, _ = trained
    result = subprocess.run(
        [sys.executable, "-m", "deeplab_dpc.export_model", f"--checkpoint_path={logdir}",
         f"--export_path={tmp_path / 'export'}", "--inference_scales=1.0", "--num_classes=4"],
        cwd=ROOT, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"), capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["export_path"] == str(tmp_path / "export")
    loaded = tf.saved_model.load(str(tmp_path / "export"))
    images = _images(65, 97)
    probabilities = np.asarray(keras.ops.softmax(model(images.astype("float32")), axis=-1))
    labels = loaded.signatures["serving_default"](images=tf.constant(images))["semantic_predictions"]
    _assert_labels_match(labels.numpy(), probabilities)
    result = subprocess.run(
        [sys.executable, "-m", "deeplab_dpc.export_model", f"--checkpoint_path={logdir}",
         f"--export_path={tmp_path / 'other'}", "--num_classes=19"],
        cwd=ROOT, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"), capture_output=True, text=True, timeout=600,
    )
    assert result.returncode != 0 and "--num_classes=19" in result.stderr


@pytest.mark.slow
def test_tflite_with_scales_and_flips_agrees_with_keras(trained):
    _, model, _ = trained
    flatbuffer = export_lib.convert_to_tflite(model, TFLITE_CROP, SCALES, True, save_probabilities=True)
    runner = export_lib.tflite_interpreter(model_content=flatbuffer).get_signature_runner("serving_default")
    image = _images(*TFLITE_CROP, count=1, seed=9).astype(np.float32)
    out = runner(images=image)
    expected = np.asarray(predict_probabilities(model, image, SCALES, add_flipped_images=True))
    np.testing.assert_allclose(out["semantic_probabilities"], expected, atol=1e-4)
    assert (out["semantic_predictions"] == expected.argmax(-1)).mean() >= 0.995


@pytest.mark.filterwarnings("ignore:.*tf.lite.Interpreter is deprecated:UserWarning")  # The fallback's own notice.
def test_tflite_interpreter_is_litert_where_installed_else_tensorflows(monkeypatch):
    @tf.function(input_signature=[tf.TensorSpec([1, 3], tf.float32, name="x")])
    def double(x):
        return {"y": 2.0 * x}

    module = tf.Module()
    module.double = double
    flatbuffer = tf.lite.TFLiteConverter.from_concrete_functions([double.get_concrete_function()], module).convert()
    try:
        import ai_edge_litert.interpreter as litert
    except ImportError:
        litert = None
    interpreters = [export_lib.tflite_interpreter(model_content=flatbuffer)]
    if litert is not None:
        assert isinstance(interpreters[0], litert.Interpreter)
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)  # Not installed: import fails.
    interpreters.append(export_lib.tflite_interpreter(model_content=flatbuffer))
    assert isinstance(interpreters[1], tf.lite.Interpreter)
    for interpreter in interpreters:
        out = interpreter.get_signature_runner("serving_default")(x=np.array([[1, 2, 3]], np.float32))
        np.testing.assert_array_equal(out["y"], [[2, 4, 6]])

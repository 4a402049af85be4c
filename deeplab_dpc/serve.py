"""Serves an exported model over HTTP on Ray Serve, with TensorFlow Serving's REST API.

Usage (one line; ``pip install -e .[serve]`` first):
  python -m deeplab_dpc.serve --export_path=/models/deeplab/1 [--host=127.0.0.1 --port=8000]
    [--model_name=deeplab] [--num_replicas=1] [--max_batch_size=8 --batch_wait_timeout_ms=5]
    [--max_image_pixels=16777216] [--max_body_bytes=67108864] [--ray_address=auto]

Then ``python -m tools.serving_client --server=http://127.0.0.1:8000 --model_name=deeplab
--images=street.png --output_dir=/tmp/predictions`` works against it unchanged, as against TensorFlow
Serving; ``curl --data-binary @street.png 'http://127.0.0.1:8000/v1/models/deeplab:segment'`` answers
a colour PNG. ``deeplab_dpc.serving.app`` lists the routes. Runs until Ctrl-C (or SIGTERM), then shuts
Ray Serve down. ``--ray_address`` joins a running Ray cluster (the search's, say) instead of starting one
in this process, so replicas can live on other machines.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
import threading

from absl import app, flags

from deeplab_dpc import cli


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Declares this entry point's flags (on the global FLAGS by default; tests pass their own)."""
    from deeplab_dpc.serving.app import ServeConfig  # noqa: PLC0415  (no Ray imported by this)

    d = ServeConfig(export_path="")
    fv = flag_values
    flags.DEFINE_string("export_path", None, "A SavedModel written by export_model (its version folder).", flag_values=fv)
    flags.DEFINE_string("host", d.host, "Address the HTTP server listens on (0.0.0.0: every interface).", flag_values=fv)
    flags.DEFINE_integer("port", d.port, "HTTP port.", flag_values=fv)
    flags.DEFINE_string("model_name", d.model_name, "The <name> in /v1/models/<name>:predict.", flag_values=fv)
    flags.DEFINE_enum(
        "runtime",
        d.runtime,
        ["savedmodel", "onnx"],
        "What runs the model: TensorFlow on a SavedModel, or ONNX Runtime on export_model's --onnx_path file "
        "(then --export_path is that file).",
        flag_values=fv,
    )
    flags.DEFINE_integer("num_replicas", d.num_replicas, "Copies of the model answering requests.", flag_values=fv)
    flags.DEFINE_integer(
        "max_batch_size", d.max_batch_size, "Images batched together by a replica (1: no batching).", flag_values=fv
    )
    flags.DEFINE_float(
        "batch_wait_timeout_ms",
        d.batch_wait_timeout_ms,
        "How long a replica waits for more images before running a batch that is not full.",
        flag_values=fv,
    )
    flags.DEFINE_integer(
        "max_image_pixels",
        d.max_image_pixels,
        "Images with more pixels are refused (413) from their header, before decoding.",
        flag_values=fv,
    )
    flags.DEFINE_integer("max_body_bytes", d.max_body_bytes, "Request bodies above this are refused (413).", flag_values=fv)
    flags.DEFINE_integer(
        "replica_threads", d.replica_threads, "The runtime's threads per replica (0: its default).", flag_values=fv
    )
    flags.DEFINE_string("ray_address", None, "A running Ray cluster to join (default: start one here).", flag_values=fv)


def config_from_flags(fv: flags.FlagValues):
    """Parsed flags -> ``ServeConfig``; raises ``app.UsageError`` naming the flag."""
    from deeplab_dpc.serving.app import ServeConfig  # noqa: PLC0415

    if not fv.export_path:
        raise app.UsageError("--export_path is required (a SavedModel written by export_model)")
    try:
        # Every field is a flag of the same name.
        return ServeConfig(**{field.name: fv[field.name].value for field in dataclasses.fields(ServeConfig)})
    except ValueError as e:
        raise app.UsageError(cli.flag_message(str(e), fv)) from None


def main(argv, flag_values: flags.FlagValues = flags.FLAGS):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    config = config_from_flags(flag_values)
    try:
        from deeplab_dpc.serving import app as serving_app  # noqa: PLC0415

        import ray  # noqa: F401, PLC0415
    except ImportError:
        raise app.UsageError("serving needs Ray Serve: pip install -e .[serve]") from None
    # Checked here: inside a replica the same error would surface as a failed Ray deployment.
    if config.runtime == "savedmodel" and not os.path.isfile(os.path.join(config.export_path, "saved_model.pb")):
        raise app.UsageError(f"--export_path={config.export_path}: no saved_model.pb there (make one with export_model)")
    if config.runtime == "onnx" and not os.path.isfile(config.export_path):
        raise app.UsageError(f"--export_path={config.export_path}: no ONNX file there (export_model --onnx_path)")

    stopped = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopped.set())
    serving_app.start(config, ray_address=flag_values.ray_address)
    sys.stderr.write(
        f"serving {config.export_path} as {config.model_name!r} on http://{config.host}:{config.port} "
        f"({config.num_replicas} replica(s), batches up to {config.max_batch_size}); Ctrl-C stops\n"
        f"  status:  curl http://{config.host}:{config.port}/v1/models/{config.model_name}\n"
    )
    try:
        stopped.wait()
    finally:
        serving_app.stop()


def console_main():
    define_flags()
    app.run(main)


if __name__ == "__main__":
    console_main()

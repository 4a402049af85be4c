r"""Single-image latency of one model on three CPU runtimes: TensorFlow (SavedModel), ONNX Runtime, LiteRT.

    python bench/bench_runtimes.py --checkpoint_path=../shared/data/camvid_backbone \
        [--sizes=360x480,1024x2048] [--repeats=5] [--threads=0]

Exports the checkpoint once with ``export_model``'s code: a SavedModel (any size), its ONNX conversion
(``--onnx_path``) and one TFLite model per size (static input). Then, for each size, one random uint8
image through each runtime: ``--repeats`` timed calls after one warm-up, median milliseconds, and the
share of pixels whose label equals the SavedModel's. Prints a markdown table and the command. Run it
with the machine to itself.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))


def timed(function, repeats):
    function()  # warm-up (tracing, allocation)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = function()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times), out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint_path", required=True)
    parser.add_argument("--sizes", default="360x480,1024x2048")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads of every runtime (0: defaults)")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import numpy as np  # noqa: PLC0415
    import tensorflow as tf  # noqa: PLC0415

    from deeplab_dpc.export import export_lib  # noqa: PLC0415
    from deeplab_dpc.runs import load_model_config, load_model_for_inference  # noqa: PLC0415
    from deeplab_dpc.serving.runtime import OnnxRuntime, SavedModelRuntime  # noqa: PLC0415

    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        export_path, onnx_path = os.path.join(tmp, "1"), os.path.join(tmp, "model.onnx")
        export_lib.run_export(
            export_lib.ExportConfig(checkpoint_path=args.checkpoint_path, export_path=export_path, onnx_path=onnx_path)
        )
        _, checkpoint = load_model_config(args.checkpoint_path)
        model, _ = load_model_for_inference(checkpoint)
        tflite = {}
        for size in sizes:
            path = os.path.join(tmp, f"{size[0]}x{size[1]}.tflite")
            with open(path, "wb") as f:
                f.write(export_lib.convert_to_tflite(model, size, (1.0,), False, False))
            interpreter = export_lib.tflite_interpreter(path, num_threads=args.threads or None)
            tflite[size] = interpreter.get_signature_runner("serving_default")
        saved_model, onnx = SavedModelRuntime(export_path), OnnxRuntime(onnx_path, args.threads)
        print(f"command: python bench/bench_runtimes.py {' '.join(sys.argv[1:] if argv is None else argv)}")
        print(
            f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; model of {args.checkpoint_path}; "
            f"one image, median of {args.repeats} calls after a warm-up; threads "
            f"{args.threads or 'each runtime default'}\n"
        )
        print("| image | SavedModel (TensorFlow) ms | ONNX Runtime ms | LiteRT ms | ONNX / LiteRT labels = SavedModel's |")
        print("|---|---|---|---|---|")
        for size in sizes:
            image = np.random.default_rng(0).integers(0, 256, (*size, 3), dtype=np.uint8)
            ms_tf, out_tf = timed(lambda: saved_model.predict([image])[0]["semantic_predictions"], args.repeats)
            ms_onnx, out_onnx = timed(lambda: onnx.predict([image])[0]["semantic_predictions"], args.repeats)
            runner = tflite[size]
            ms_lite, out_lite = timed(
                lambda: runner(images=image[None].astype(np.float32))["semantic_predictions"][0], args.repeats
            )
            print(
                f"| {size[0]}x{size[1]} | {ms_tf:.0f} | {ms_onnx:.0f} | {ms_lite:.0f} | "
                f"{np.mean(out_onnx == out_tf):.4f} / {np.mean(out_lite == out_tf):.4f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()

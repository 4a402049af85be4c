"""The model server: an exported model behind TensorFlow Serving's REST API, on Ray Serve.

Routes (``<name>`` is ``--model_name``; ``/versions/<v>`` may follow it, as TensorFlow Serving allows):

* ``GET  /v1/models/<name>``: TensorFlow Serving's status answer (the version ``AVAILABLE``), plus what
  ``export_model`` recorded (classes, scales) under ``metadata``;
* ``POST /v1/models/<name>:predict``: ``{"instances": [{"b64": ...} | [[[r, g, b], ...], ...], ...]}``
  -> ``{"predictions": [...]}`` (``requests`` has the details); images of any sizes in one request;
* ``POST /v1/models/<name>:segment``: the raw bytes of one PNG or JPEG -> a PNG of its labels,
  ``?format=color`` (default; ``&colormap=`` one of ``data.colormaps``, default ``pascal``) or
  ``?format=labels`` (class ids as grey levels).

Every image of every request is one call of the replica's batched ``predict`` (Ray Serve's
``serve.batch``): calls that arrive within ``batch_wait_timeout_ms`` of each other, up to
``max_batch_size``, run together, images of one size as one batch through the model (so images of
different sizes never share a tensor). Bad requests are refused with a 4xx and a message that names
the problem (``requests.RequestError``) before the model sees them; the next request is served as usual.
"""

# No "from __future__ import annotations": FastAPI reads the routes' annotations (Request) at runtime,
# and they are imported inside build_app, where Ray Serve and FastAPI (an extra) are known to be there.
import asyncio
import dataclasses
import json
from typing import Any

from deeplab_dpc.serving.requests import (
    PREDICTIONS,
    RequestError,
    decode_image,
    label_png,
    parse_predict,
    predict_response,
)
from deeplab_dpc.serving.runtime import RUNTIMES

COLOR_FORMATS = ("color", "labels")


@dataclasses.dataclass(frozen=True)
class ServeConfig:
    """How to serve. Field names are ``serve``'s flag names."""

    export_path: str
    host: str = "127.0.0.1"
    port: int = 8000
    model_name: str = "deeplab"
    runtime: str = "savedmodel"
    num_replicas: int = 1
    max_batch_size: int = 8
    batch_wait_timeout_ms: float = 5.0
    max_image_pixels: int = 4096 * 4096
    max_body_bytes: int = 64 * 1024 * 1024
    replica_threads: int = 0  # the runtime's intra-op threads per replica (0: its default)

    def __post_init__(self):
        for name in ("num_replicas", "max_batch_size", "max_image_pixels", "max_body_bytes"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be at least 1")
        if self.batch_wait_timeout_ms < 0:
            raise ValueError(f"batch_wait_timeout_ms={self.batch_wait_timeout_ms} must be >= 0")
        if self.runtime not in RUNTIMES:
            raise ValueError(f"runtime={self.runtime!r} is unknown; valid: {list(RUNTIMES)}")
        if not 0 < int(self.port) < 65536:
            raise ValueError(f"port={self.port} must be in 1..65535")
        if not self.model_name or "/" in self.model_name or ":" in self.model_name:
            raise ValueError(f"model_name={self.model_name!r} must be a non-empty name without '/' or ':'")


def _json_error(status: int, message: str):
    from starlette.responses import JSONResponse  # noqa: PLC0415

    return JSONResponse({"error": message}, status_code=status)


async def _read_body(request, limit: int) -> bytes:
    """The body, refused (413) past ``limit`` bytes: by its Content-Length, or while it streams in."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestError(413, f"the body is {int(declared)} bytes, above max_body_bytes={limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(413, f"the body is above max_body_bytes={limit}")
        chunks.append(chunk)
    return b"".join(chunks)


def build_app(config: ServeConfig):
    """The Ray Serve application (a deployment of ``config.num_replicas`` replicas)."""
    from fastapi import FastAPI, Request  # noqa: PLC0415
    from ray import serve  # noqa: PLC0415
    from starlette.responses import JSONResponse, Response  # noqa: PLC0415

    api = FastAPI(title="deeplab_dpc", docs_url=None, redoc_url=None, openapi_url=None)

    @serve.deployment(num_replicas=config.num_replicas, max_ongoing_requests=64)
    @serve.ingress(api)
    class DeepLabServer:
        def __init__(self, config_dict: dict):
            self.config = ServeConfig(**config_dict)
            if self.config.replica_threads and self.config.runtime == "savedmodel":
                import tensorflow as tf  # noqa: PLC0415

                tf.config.threading.set_intra_op_parallelism_threads(self.config.replica_threads)
            from deeplab_dpc.serving.runtime import load_runtime  # noqa: PLC0415

            self.runtime = load_runtime(self.config.runtime, self.config.export_path, self.config.replica_threads)
            self.predict.set_max_batch_size(self.config.max_batch_size)
            self.predict.set_batch_wait_timeout_s(self.config.batch_wait_timeout_ms / 1000.0)

        @serve.batch
        async def predict(self, images: list) -> list:
            # In a thread: the replica's event loop keeps reading and decoding the next requests (and
            # so filling the next batch) while the model runs.
            return await asyncio.get_running_loop().run_in_executor(None, self.runtime.predict, images)

        def _check_name(self, name: str) -> None:
            if name != self.config.model_name:
                raise RequestError(404, f"no model {name!r} here; this server serves {self.config.model_name!r}")

        async def _answer(self, name: str, handler):
            try:
                self._check_name(name)
                return await handler()
            except RequestError as error:
                return _json_error(error.status, error.message)

        @api.get("/v1/models/{name}")
        @api.get("/v1/models/{name}/versions/{version}")
        async def status(self, name: str, version: str | None = None):
            async def handler():
                return JSONResponse(
                    {
                        "model_version_status": [
                            {"version": version or "1", "state": "AVAILABLE", "status": {"error_code": "OK"}}
                        ],
                        "metadata": {"runtime": self.runtime.name, **self.runtime.metadata},
                    }
                )

            return await self._answer(name, handler)

        @api.post("/v1/models/{name}:predict")
        @api.post("/v1/models/{name}/versions/{version}:predict")
        async def predict_route(self, name: str, request: Request, version: str | None = None):
            async def handler():
                body = await _read_body(request, self.config.max_body_bytes)
                _, images = parse_predict(body, self.config.max_image_pixels)
                outputs = await asyncio.gather(*(self.predict(image) for image in images))
                return Response(json.dumps(predict_response(outputs)), media_type="application/json")

            return await self._answer(name, handler)

        @api.post("/v1/models/{name}:segment")
        async def segment(self, name: str, request: Request, format: str = "color", colormap: str = "pascal"):
            async def handler():
                from deeplab_dpc.data.colormaps import COLORMAPS  # noqa: PLC0415

                if format not in COLOR_FORMATS:
                    raise RequestError(400, f"format={format!r} is unknown; valid: {list(COLOR_FORMATS)}")
                if format == "color" and colormap not in COLORMAPS:
                    raise RequestError(400, f"colormap={colormap!r} is unknown; valid: {sorted(COLORMAPS)}")
                body = await _read_body(request, self.config.max_body_bytes)
                image = decode_image(body, self.config.max_image_pixels, "body")
                output = await self.predict(image)
                png = label_png(output[PREDICTIONS], colormap if format == "color" else None)
                return Response(png, media_type="image/png")

            return await self._answer(name, handler)

    return DeepLabServer.bind(dataclasses.asdict(config))


def start(config: ServeConfig, ray_address: str | None = None) -> Any:
    """Starts Ray (or joins ``ray_address``), Ray Serve's HTTP proxy on ``host:port`` and the application;
    returns when every replica has loaded the model. ``stop()`` ends it."""
    import logging  # noqa: PLC0415

    import ray  # noqa: PLC0415
    from ray import serve  # noqa: PLC0415

    logging.getLogger("ray.serve").setLevel(logging.WARNING)  # its INFO lines: where the app runs, said below
    if not ray.is_initialized():
        ray.init(address=ray_address, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    serve.start(http_options={"host": config.host, "port": int(config.port)}, logging_config={"log_level": "WARNING"})
    return serve.run(build_app(config), name=config.model_name, route_prefix="/")


def stop() -> None:
    """Shuts Ray Serve and this process's Ray down."""
    import ray  # noqa: PLC0415
    from ray import serve  # noqa: PLC0415

    serve.shutdown()
    ray.shutdown()

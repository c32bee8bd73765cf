"""Run kserve's REST application (or any ASGI app) under uvicorn on an address we choose.

kserve 0.20's ``ModelServer`` binds ``0.0.0.0`` with no option and builds its FastAPI app
on a module-level singleton (``kserve.model_server.app``), so ``RESTServer.create_application``
can be used once per process only. :func:`build_app` therefore creates a fresh FastAPI app
per server and applies kserve's own ``RESTServer`` wiring to it (middlewares, V1/V2 routes,
``/metrics``, exception handlers): same routes and error mapping as a real KServe predictor,
any number of servers per process, and no gRPC server. One addition: a V2 binary-extension
body is checked (:func:`check_binary_request`) before kserve decodes it, so a tensor
shorter than its shape is a 400 naming the tensor, not numpy's 500 (a 500 also closes the
client's keep-alive connection).

* :func:`serve` starts a server in a background thread and returns a
  :class:`RunningServer` (a context manager) once it accepts connections: tests, the local
  gateway, benchmarks.
* :func:`start_app` does the same for any ASGI app (the payload sink).
* :func:`run` serves in the foreground until SIGTERM/SIGINT (container entry points).

kserve is imported lazily (in :func:`build_app`), so :func:`start_app` and :func:`run_app`
serve other apps, such as the sink, without the ~2 s kserve import.

kserve's ``/metrics`` route exposes prometheus_client's default registry, which holds
kserve's latency histograms and driftloop's predictor metrics
(:mod:`driftloop.serving.metrics`), so no extra route is needed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import signal
import socket
import struct
import threading
import time
from collections.abc import Iterator, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

import uvicorn
from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from driftloop.serving import clean_argv

if TYPE_CHECKING:
    from kserve.model import Model  # not "import kserve": see driftloop.serving.predictor

DEFAULT_HOST = "127.0.0.1"
log = logging.getLogger(__name__)
#: Bytes per element of the fixed-size V2 datatypes (BYTES elements carry their own length).
V2_ITEM_BYTES = {"BOOL": 1, "INT8": 1, "UINT8": 1, "INT16": 2, "UINT16": 2, "FP16": 2,
                 "INT32": 4, "UINT32": 4, "FP32": 4, "INT64": 8, "UINT64": 8, "FP64": 8}
#: The binary tensor extension's header: the length of the JSON part of the body.
JSON_LENGTH_HEADER = "inference-header-content-length"


def check_binary_request(body: bytes, json_length: Any) -> None:
    """Check a V2 binary-extension body's layout before kserve decodes it.

    kserve's ``InferRequest.from_bytes`` reshapes each binary tensor as it reads it and
    lets numpy's ``ValueError`` (or a ``KeyError`` for a missing header field) escape as a
    500, which also closes the client's keep-alive connection. This checks what it relies
    on and names the tensor and the rule instead.

    Args:
        body: The whole request body (JSON header, then the tensors' bytes).
        json_length: The ``Inference-Header-Content-Length`` header's value.

    Raises:
        InvalidInput: The header, a tensor's description or its bytes do not fit.
    """
    from kserve.errors import InvalidInput

    try:
        length = int(str(json_length).strip())
    except ValueError:
        raise InvalidInput(f"header {JSON_LENGTH_HEADER}: {str(json_length)[:40]!r} is not an "
                           "integer") from None
    if not 0 <= length <= len(body):
        raise InvalidInput(f"header {JSON_LENGTH_HEADER}: {length} is not within the body's "
                           f"{len(body)} bytes")
    try:
        header = json.loads(body[:length])
    except (ValueError, RecursionError):
        return  # kserve answers an unparsable JSON header with its own 400
    if not isinstance(header, dict) or not isinstance(header.get("inputs"), list):
        raise InvalidInput("inputs: required, a list of tensors (binary request header)")
    offset = length
    for i, tensor in enumerate(header["inputs"]):
        if not isinstance(tensor, dict) or not isinstance(tensor.get("name"), str):
            raise InvalidInput(f"inputs[{i}]: expected an object with a 'name'")
        where = f"inputs[{tensor['name']}]"
        shape, datatype = tensor.get("shape"), tensor.get("datatype")
        if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
        ):
            raise InvalidInput(f"{where}.shape: expected a list of non-negative integers, "
                               f"got {json.dumps(shape)[:60]}")
        if not isinstance(datatype, str) or datatype not in {*V2_ITEM_BYTES, "BYTES"}:
            raise InvalidInput(f"{where}.datatype: {json.dumps(datatype)[:40]} is not one of "
                               f"BYTES, {', '.join(sorted(V2_ITEM_BYTES))}")
        params = tensor.get("parameters")
        if tensor.get("data") is not None or not isinstance(params, dict) or (
            "binary_data_size" not in params
        ):
            continue  # JSON data, or kserve's own 400 for a tensor without any data
        size = params["binary_data_size"]
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise InvalidInput(f"{where}.parameters.binary_data_size: expected a "
                               f"non-negative integer, got {json.dumps(size)[:40]}")
        if offset + size > len(body):
            raise InvalidInput(f"{where}: binary_data_size is {size} bytes, but only "
                               f"{len(body) - offset} bytes of the body are left")
        count = math.prod(shape)
        if datatype == "BYTES":
            found = _bytes_elements(body, offset, offset + size)
            if found != count:
                shown = "malformed (an element's length runs past the tensor)" if found < 0 \
                    else f"{found} elements"
                raise InvalidInput(f"{where}: shape {shape} needs {count} BYTES elements, "
                                   f"the binary data has {shown}")
        elif size != count * V2_ITEM_BYTES[datatype]:
            raise InvalidInput(f"{where}: shape {shape} of {datatype} needs "
                               f"{count * V2_ITEM_BYTES[datatype]} bytes, the binary data has "
                               f"{size}")
        offset += size


def _bytes_elements(body: bytes, start: int, end: int) -> int:
    """The number of length-prefixed BYTES elements in ``body[start:end]``; -1 if malformed."""
    count = 0
    while start < end:
        if start + 4 > end:
            return -1
        (size,) = struct.unpack_from("<I", body, start)
        start += 4 + size
        if start > end:
            return -1
        count += 1
    return count


def build_app(models: Sequence[Model], *, title: str = "driftloop model server") -> FastAPI:
    """Return a new FastAPI app serving ``models`` with kserve's routes and error handlers.

    Models that are not ready are loaded first (``model.load()``), so a model that fails
    verification raises here, before anything listens.

    Raises:
        ValueError: No models, or two models with the same name.
    """
    with clean_argv():  # kserve parses sys.argv on first import: see driftloop.serving
        from kserve.errors import InvalidInput
        from kserve.model_repository import ModelRepository
        from kserve.protocol.dataplane import DataPlane
        from kserve.protocol.model_repository_extension import ModelRepositoryExtension
        from kserve.protocol.rest.server import RESTServer

    if not models:
        raise ValueError("build_app: give at least one model")
    names = [model.name for model in models]
    if len(set(names)) != len(names):
        raise ValueError(f"build_app: duplicate model names {names}")
    repository = ModelRepository()
    for model in models:
        if not model.ready:
            model.load()
        repository.update(model)

    class CheckedDataPlane(DataPlane):
        """kserve's data plane, with a binary body's layout checked before it is decoded."""

        def decode_inference_request(self, body: Any, headers: Any, model_name: str) -> Any:
            if isinstance(body, bytes):
                length = (headers or {}).get(JSON_LENGTH_HEADER)
                if length is not None:
                    check_binary_request(body, length)
            return super().decode_inference_request(body, headers, model_name)

    dataplane = CheckedDataPlane(model_registry=repository)
    extension = ModelRepositoryExtension(model_registry=repository)
    # The RESTServer's own uvicorn config (0.0.0.0) is never started: it only wires the app.
    rest = RESTServer("kserve.model_server:app", dataplane, extension, http_port=0)
    app = FastAPI(title=title, docs_url=None, redoc_url=None)
    rest._add_middlewares(app)
    _add_model_metadata(app, dataplane)  # before kserve's routes: the first match wins
    rest._register_endpoints(app)
    rest._add_exception_handlers(app)
    # kserve logs every InvalidInput as an ERROR with a traceback; a client's bad input is
    # not a server error: same 400 body, one INFO line.
    app.add_exception_handler(InvalidInput, _invalid_input)
    app.state.model_repository = repository
    return app


def _add_model_metadata(app: FastAPI, dataplane: Any) -> None:
    """``GET /v2/models/NAME``: kserve's body plus the model's optional ``parameters``.

    kserve v0.20.0 answers it with ``ModelMetadataResponse`` (``protocol/rest/
    v2_endpoints.py``, ``v2_datamodels.py``: name, versions, platform, inputs, outputs),
    which drops any other key. The same body is built here with kserve's own model and
    data plane, and a model with ``metadata_parameters()`` adds a ``parameters`` object
    (string values) when it has any: e.g. whether the compiled or the scikit-learn model
    answers and why. The field is optional: a V2 client that does not know it ignores it.
    """
    with clean_argv():
        from kserve.protocol.rest.v2_datamodels import ModelMetadataResponse

    async def model_metadata(model_name: str, model_version: str | None = None) -> Response:
        if model_version:  # as kserve's own handler
            raise NotImplementedError("Model versioning not supported yet.")
        meta = await dataplane.model_metadata(model_name)
        body = ModelMetadataResponse.model_validate(meta).model_dump(mode="json")
        model = dataplane.get_model_from_registry(model_name)
        extra = getattr(model, "metadata_parameters", None)
        parameters = extra() if callable(extra) else {}
        if parameters:
            body["parameters"] = parameters
        return JSONResponse(body)

    app.add_api_route("/v2/models/{model_name}", model_metadata, methods=["GET"])
    app.add_api_route("/v2/models/{model_name}/versions/{model_version}", model_metadata,
                      methods=["GET"], include_in_schema=False)


async def _invalid_input(request: Request, exc: Exception) -> Response:
    log.info("400 %s %s: %s", request.method, request.url.path, exc)
    return JSONResponse(status_code=400, content={"error": str(exc)})


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def _config(app: Any, *, log_level: str, access_log: bool) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        log_config=None,  # leave logging to the embedding program
        log_level=log_level,
        access_log=access_log,
        timeout_graceful_shutdown=5,
        lifespan="on",
    )


class RunningServer:
    """A uvicorn server running in a daemon thread; stop it with :meth:`stop` or ``with``.

    Attributes:
        host: The bound address.
        port: The bound port (the real one when 0 was asked for).
        url: ``http://host:port``.
        app: The ASGI app being served.
    """

    def __init__(self, app: Any, host: str = DEFAULT_HOST, port: int = 0, *,
                 log_level: str = "warning", access_log: bool = False,
                 ready_timeout: float = 30.0) -> None:
        self.app = app
        self._sock = _bind(host, port)
        self.host = host
        self.port = int(self._sock.getsockname()[1])
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{self.port}"
        self._server = uvicorn.Server(_config(app, log_level=log_level, access_log=access_log))
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"uvicorn:{self.port}",
                                        daemon=True)
        self._thread.start()
        try:
            self._wait_started(ready_timeout)
        except BaseException:
            self.stop()
            raise

    def _run(self) -> None:
        try:
            self._server.run(sockets=[self._sock])
        except BaseException as exc:  # SystemExit from a failed lifespan startup, too
            self._error = exc

    def _wait_started(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError(f"server on {self.url} exited during start-up"
                                   + (f": {self._error!r}" if self._error else ""))
            if time.monotonic() > deadline:
                raise TimeoutError(f"server on {self.url} not ready after {timeout:g} s")
            time.sleep(0.005)

    @property
    def running(self) -> bool:
        """Whether the server thread is alive."""
        return self._thread.is_alive()

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the server to finish open requests and exit; force it after ``timeout`` s."""
        self._server.should_exit = True
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._server.force_exit = True
            self._thread.join(5.0)
        self._sock.close()
        if self._thread.is_alive():
            raise RuntimeError(f"server on {self.url} did not stop")

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def start_app(app: Any, host: str = DEFAULT_HOST, port: int = 0, **kwargs: Any) -> RunningServer:
    """Serve any ASGI app on ``host:port`` in a background thread (port 0: pick a free one)."""
    return RunningServer(app, host, port, **kwargs)


def serve(models: Sequence[Model], host: str = DEFAULT_HOST, port: int = 0,
          **kwargs: Any) -> RunningServer:
    """Serve kserve models on ``host:port`` (default 127.0.0.1, a free port) in a thread.

    Returns once the server accepts connections::

        with serve([DriftloopModel("m", model_dir=folder)]) as srv:
            httpx.post(f"{srv.url}/v1/models/m:predict", json={"instances": [...]})

    Args:
        models: The models; each is loaded first if not ready.
        host: Address to bind.
        port: Port to bind; 0 picks a free one (see ``RunningServer.port``).
        **kwargs: ``log_level``, ``access_log``, ``ready_timeout``.
    """
    return RunningServer(build_app(models), host, port, **kwargs)


def run(models: Sequence[Model], host: str = DEFAULT_HOST, port: int = 8080, *,
        log_level: str = "info", access_log: bool = True) -> None:
    """Serve kserve models in the foreground until SIGTERM or SIGINT."""
    run_app(build_app(models), host, port, log_level=log_level, access_log=access_log)


class _ForegroundServer(uvicorn.Server):
    """A uvicorn server that exits normally after a graceful SIGTERM/SIGINT shutdown.

    uvicorn re-raises the captured signal once it has shut down, so the process would die
    of it (exit status -15) after a clean shutdown; here ``run`` simply returns.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        handled = (signal.SIGINT, signal.SIGTERM)
        original = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)


def run_app(app: Any, host: str = DEFAULT_HOST, port: int = 8080, *,
            log_level: str = "info", access_log: bool = True) -> None:
    """Serve any ASGI app in the foreground; return after SIGTERM/SIGINT and a clean stop."""
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(name)s %(message)s")
    sock = _bind(host, port)
    try:
        _ForegroundServer(_config(app, log_level=log_level, access_log=access_log)).run(
            sockets=[sock]
        )
    finally:
        sock.close()

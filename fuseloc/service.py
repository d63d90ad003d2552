"""The localization service: a map bundle held in memory behind HTTP (FastAPI on uvicorn).

    POST /localize   body: the image file's bytes (JPEG, PNG...); query parameters: ``camera`` (optional,
                     ``MODEL W H params...``; without it the image's EXIF data), ``name`` (optional),
                     ``guess_focal`` (optional, default false). Returns the JSON record of
                     :meth:`~fuseloc.localize.bundle.LocalizationResult.to_record`.
    GET  /health     the bundle's summary and the service's load.

Bad input gets a 4xx with a one-line ``detail``: 400 (empty body, undecodable image, bad camera string), 422
(intrinsics that do not fit the image, no EXIF focal length), 413 (body over ``max_image_bytes``); 503 when
``max_queue`` requests already wait. At most ``max_concurrency`` requests are localized at once, each in a
worker thread (:meth:`Bundle.localize` is thread-safe); the others wait their turn.

``python localize.py serve --bundle PATH`` runs it; :func:`create_app` gives the ASGI app for other servers.
"""

from __future__ import annotations

import json
import logging
import threading
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from fuseloc.errors import InputError
from fuseloc.localize.bundle import Bundle, load_bundle

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServiceConfig:
    """How the service listens and how much it takes on.

    Attributes:
        host: address to listen on (loopback by default; ``0.0.0.0`` for every interface).
        port: TCP port (0: any free one).
        max_concurrency: requests localized at once (worker threads).
        max_queue: requests allowed to wait for a worker; more are refused with 503.
        max_image_bytes: largest request body accepted (413 above).
        device: where network extractors run.
    """

    host: str = "127.0.0.1"
    port: int = 8000
    max_concurrency: int = 2
    max_queue: int = 64
    max_image_bytes: int = 50 * 2**20
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.max_concurrency < 1:
            raise InputError(f"max_concurrency must be at least 1, got {self.max_concurrency}")
        if self.max_queue < 0:
            raise InputError(f"max_queue must be at least 0, got {self.max_queue}")
        if self.max_image_bytes < 1:
            raise InputError(f"max_image_bytes must be positive, got {self.max_image_bytes}")


#: raw messages of InputErrors that are about the request's syntax (400) rather than its content (422)
_SYNTAX_PREFIXES = ("cannot decode image", "bad camera")


def create_app(bundle: Bundle, config: ServiceConfig = ServiceConfig()) -> Any:  # noqa: ANN401 (a FastAPI app)
    """The ASGI app serving ``bundle`` (loaded once, by the caller)."""
    app = FastAPI(title="fuseloc", description="Localize photos against a map bundle.", version="1")
    state = {"in_flight": 0, "running": 0, "served": 0, "rejected": 0}
    lock = threading.Lock()
    limiter: anyio.CapacityLimiter | None = None

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"detail": " ".join(message.split())}, status_code=status)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", **bundle.describe(), "max_concurrency": config.max_concurrency, **state}

    @app.post("/localize")
    async def localize(request: Request, camera: str | None = None, name: str | None = None,
                       guess_focal: bool = False) -> JSONResponse:
        nonlocal limiter
        if limiter is None:  # made inside the server's event loop
            limiter = anyio.CapacityLimiter(config.max_concurrency)
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > config.max_image_bytes:
            return error(413, f"image of {int(declared)} bytes is over the {config.max_image_bytes}-byte limit")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > config.max_image_bytes:
                return error(413, f"image is over the {config.max_image_bytes}-byte limit")
        if not body:
            return error(400, "empty request body: send the image file's bytes")
        with lock:
            if state["in_flight"] >= config.max_queue + config.max_concurrency:
                state["rejected"] += 1
                return error(503, f"busy: {state['in_flight']} requests in progress or waiting; retry later")
            state["in_flight"] += 1
        label = name or "image"
        try:
            result = await anyio.to_thread.run_sync(
                lambda: _run(bundle, bytes(body), camera, label, guess_focal, state, lock), limiter=limiter)
        except InputError as exc:
            status = 400 if exc.raw_message.startswith(_SYNTAX_PREFIXES) else 422
            return error(status, str(exc))
        finally:
            with lock:
                state["in_flight"] -= 1
        return JSONResponse(result)

    return app


def _run(bundle: Bundle, data: bytes, camera: str | None, name: str, guess_focal: bool, state: dict,
         lock: threading.Lock) -> dict:
    with lock:
        state["running"] += 1
    try:
        result = bundle.localize(data, camera, name=name, allow_guessed_focal=guess_focal)
    finally:
        with lock:
            state["running"] -= 1
            state["served"] += 1
    return result.to_record()


def serve(bundle_path: str | Path, config: ServiceConfig = ServiceConfig()) -> None:
    """Load the bundle once and serve it with uvicorn until interrupted."""
    import uvicorn

    bundle = load_bundle(bundle_path, device=config.device)
    logger.info("serving %s on http://%s:%d (%d at once)", bundle_path, config.host, config.port, config.max_concurrency)
    uvicorn.run(create_app(bundle, config), host=config.host, port=config.port, log_level="warning",
                # the limiter bounds the localization work; uvicorn's own limit only keeps idle sockets in check
                limit_concurrency=config.max_concurrency + config.max_queue + 16)


class BackgroundServer:
    """The service on a uvicorn server in a daemon thread of this process (tests, benchmarks, notebooks)::

        with BackgroundServer(bundle, ServiceConfig(port=0)) as server:
            urllib.request.urlopen(server.url + "/health")

    ``port=0`` takes a free port; ``url`` says which.
    """

    def __init__(self, bundle: Bundle, config: ServiceConfig = ServiceConfig()):
        import socket

        import uvicorn

        self.config = config
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((config.host, config.port))
        self.port = self._socket.getsockname()[1]
        self.url = f"http://{config.host}:{self.port}"
        self._server = uvicorn.Server(uvicorn.Config(create_app(bundle, config), log_level="warning",
                                                     limit_concurrency=config.max_concurrency + config.max_queue + 16))
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._socket]}, daemon=True)

    def __enter__(self) -> BackgroundServer:
        import time

        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the service did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=30)
        self._socket.close()


def post_image(url: str, body: bytes, timeout: float = 60.0, **params: str) -> tuple[int, dict]:
    """A client call: POST ``body`` (image file bytes) to ``<url>/localize?<params>``; the status and JSON reply."""
    request = urllib.request.Request(f"{url}/localize?{urllib.parse.urlencode(params)}", data=body, method="POST",
                                     headers={"Content-Type": "application/octet-stream"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)

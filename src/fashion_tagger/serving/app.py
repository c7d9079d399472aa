"""The FastAPI app: `create_app(settings)` wires settings, model, batcher, metrics and routers.

Nothing happens at import: the model is loaded in `lifespan` when the server starts, so tests
can build an app, override `get_predictor` with a fake, and never touch torch.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fashion_tagger._cpu import usable_cores
from fashion_tagger._version import __version__
from fashion_tagger.serving.metrics import Metrics
from fashion_tagger.serving.routers import health, model, page, predict
from fashion_tagger.serving.settings import Settings


class LimitsAndMetrics:
    """Outermost ASGI layer: refuses bodies over the limit (413) and times every request.

    The body is read here, up to the limit, before the app sees it: a client that lies about
    (or omits) Content-Length still cannot make the service hold more than `max_body` bytes.
    """

    def __init__(self, app: ASGIApp, max_body: int, metrics: Metrics) -> None:
        self.app, self.max_body, self.metrics = app, max_body, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = {"code": 500}

        async def send_and_record(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            replay = await self._read_body(scope, receive)
            if replay is None:
                self.metrics.error(
                    scope["path"] if scope["path"] == "/v1/predict" else "other", "body_too_large"
                )
                await self._too_large(send_and_record)
                return
            await self.app(scope, replay, send_and_record)
        finally:
            route = scope.get("route")
            name = getattr(route, "path", None) or (
                "/v1/predict" if scope["path"] == "/v1/predict" else "unmatched"
            )
            self.metrics.request(name, scope["method"], status["code"], time.perf_counter() - start)

    async def _read_body(self, scope: Scope, receive: Receive) -> Receive | None:
        """A `receive` that replays the whole body, or None when it is over the limit."""
        headers = dict(scope["headers"])
        length = headers.get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_body:
            return None
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return replay

    async def _too_large(self, send: Send) -> None:
        mb = self.max_body / 1024 / 1024
        body = json.dumps(
            {"detail": f"request body is larger than {mb:g} MiB; send fewer or smaller images"}
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """One readable sentence, like every other 4xx of the API (not FastAPI's list of dicts)."""
    parts = []
    for err in exc.errors()[:3]:
        where = ".".join(str(p) for p in err.get("loc", ()))
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return JSONResponse({"detail": "; ".join(parts) or "invalid request"}, status_code=422)


def _decode_pool(settings: Settings) -> ThreadPoolExecutor:
    """Where uploaded images decode: not asyncio's default pool (cores + 4 threads), since under
    load more decoding threads than cores only fight the model's own threads for the CPU."""
    return ThreadPoolExecutor(
        max_workers=settings.decode_threads or usable_cores(), thread_name_prefix="decode"
    )


def create_app(settings: Settings | None = None) -> FastAPI:
    """The service for `settings`; with `settings.run_dir` the model loads when the app starts."""
    settings = settings or Settings()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.run_dir is not None and getattr(app.state, "predictor", None) is None:
            from fashion_tagger.serving.predictor import TaggerPredictor

            app.state.predictor = TaggerPredictor.load(settings.run_dir, settings.backend)
        app.state.decode_pool = _decode_pool(settings)  # a fresh one each time the app starts
        try:
            yield
        finally:
            batcher = getattr(app.state, "batcher", None)
            if batcher is not None:
                await batcher.close()
            app.state.decode_pool.shutdown(wait=False)

    app = FastAPI(
        title="fashion-tagger",
        version=__version__,
        description="Classify fashion photos into a catalog's category tree and attributes.",
        lifespan=lifespan,
        # FastAPI's /docs and /redoc pages load their scripts from a CDN; the service serves
        # nothing from elsewhere, so it offers the schema itself (/openapi.json) instead.
        docs_url=None,
        redoc_url=None,
    )
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.predictor = None
    app.state.batcher = None
    app.state.decode_pool = _decode_pool(settings)
    for r in (predict.router, model.router, health.router, page.router):
        app.include_router(r)
    static = resources.files("fashion_tagger.serving").joinpath("static")
    app.mount("/static", StaticFiles(directory=str(static)), name="static")
    app.add_middleware(LimitsAndMetrics, max_body=settings.max_body_bytes, metrics=metrics)
    return app

"""The HTTP API: FastAPI in front of a :class:`Batcher` (or, with ``--workers N``, a :class:`WorkerPool`).

The event loop only parses requests, saves uploads and waits: encoders and the head run in the
batcher's threads (or worker processes), so ``/health`` answers while predictions run, and
requests that arrive together are encoded in one batch. Every request outside the limits gets a
4xx with a message; malformed requests a 422; a full queue a 503. The routes are in
:mod:`emostore.serve.routes`, the state they share in :mod:`emostore.serve.service`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles

from emostore import __version__
from emostore.extract.segment import SegmenterConfig
from emostore.serve.batcher import Batcher
from emostore.serve.predictor import Predictor
from emostore.serve.routes import STATIC, prediction_routes, stream_routes
from emostore.serve.service import Limits, Service

__all__ = ["Limits", "create_app"]


def create_app(engine: Predictor | Batcher | Any, limits: Limits | None = None, *, max_batch: int = 32,
               batch_wait_ms: float = 2.0, segmenter: SegmenterConfig | None = None) -> FastAPI:
    """The app over ``engine``: a :class:`Predictor` (batched here with ``max_batch`` and ``batch_wait_ms``),
    or a ready :class:`Batcher` or :class:`~emostore.serve.workers.WorkerPool`, which the app closes at shutdown.
    ``segmenter``: how ``/stream`` and ``/timeline`` cut speech into segments."""
    limits = limits or Limits()
    if isinstance(engine, Predictor):
        engine = Batcher(engine, max_batch=max_batch, batch_wait_ms=batch_wait_ms, max_queue=limits.max_queue)
    svc = Service(engine, limits, (segmenter or SegmenterConfig()).check())

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await run_in_threadpool(svc.close)

    app = FastAPI(title="emostore", version=__version__, lifespan=lifespan,
                  description="Emotion of utterances and conversation turns from text, voice and face.")
    app.add_middleware(BodyLimit, json_bytes=6 * limits.max_text_chars + (64 << 10),
                       form_bytes=limits.max_upload_bytes + 6 * limits.max_text_chars + (2 << 20))
    app.state.engine = engine

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(status_code=422, content={"detail": _plain(exc.errors())})

    app.include_router(prediction_routes(svc))
    app.include_router(stream_routes(svc))
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


class BodyLimit:
    """Cap request bodies while they arrive, before anything reads them whole: a declared
    Content-Length above the cap is refused at once, and a body that grows past it (chunked, or
    lying about its length) stops the request with 413 at the first byte too many."""

    def __init__(self, app: Any, *, json_bytes: int, form_bytes: int):
        self.app, self.json_bytes, self.form_bytes = app, json_bytes, form_bytes

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        cap = self.form_bytes if headers.get("content-type", "").startswith("multipart/") else self.json_bytes
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > cap:
            response = JSONResponse(status_code=413, content={"detail": f"request body larger than {cap} bytes"})
            await response(scope, receive, send)
            return
        seen = 0

        async def limited() -> Any:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > cap:
                    raise HTTPException(413, f"request body larger than {cap} bytes")
            return message

        await self.app(scope, limited, send)


def _plain(errors: Any) -> Any:
    """Validation errors as JSON-safe values (inputs can be bytes or exceptions)."""
    out = []
    for e in errors:
        out.append({k: (list(v) if isinstance(v, tuple) else
                        v if isinstance(v, (str, int, float, bool, type(None), list)) else str(v))
                    for k, v in dict(e).items() if k != "ctx"})
    return out

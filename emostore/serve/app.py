"""The HTTP API: FastAPI in front of a :class:`Batcher` (or, with ``--workers N``, a :class:`WorkerPool`).

The event loop only parses requests, saves uploads and waits: encoders and the head run in the
batcher's threads (or worker processes), so ``/health`` answers while predictions run, and
requests that arrive together are encoded in one batch. Every request outside the limits gets a
4xx with a message; malformed requests a 422; a full queue a 503.
"""

from __future__ import annotations

import asyncio
import re
import tempfile
from collections import OrderedDict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request, WebSocket
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from emostore import __version__
from emostore.errors import UserError
from emostore.extract.segment import SegmenterConfig
from emostore.search.query import AUDIO, IMAGE, VIDEO
from emostore.serve.batcher import Batcher, Busy, Job
from emostore.serve.predictor import Inputs, Predictor
from emostore.serve.stream import Hub, StreamLimits
from emostore.serve.timeline_endpoint import timeline_of_upload

STATIC = Path(__file__).parent / "static"

CONVERSATION_ID = r"^[A-Za-z0-9_.:-]{1,64}$"


@dataclass
class Limits:
    max_text_chars: int = 2000
    max_upload_bytes: int = 20 * 1024 * 1024
    max_turns: int = 50
    max_conversations: int = 1000
    max_queue: int = 1024
    max_streams: int = 8
    max_stream_rate: float = 4.0
    media_suffixes: tuple[str, ...] = tuple(sorted(AUDIO | VIDEO | IMAGE))


class TextRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str = Field(description="The utterance.")


class MediaForm(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str | None = Field(default=None, description="The utterance (optional beside a media file).")


class TimelineForm(BaseModel):
    model_config = ConfigDict(extra="forbid")
    transcript: str | None = Field(default=None, max_length=1_000_000,
                                   description="CSV of start, end, text (seconds) for the recording.")


class TurnRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str | None = Field(default=None, description="What the speaker said.")
    speaker: str | None = Field(default=None, max_length=128, description="Who spoke (same name = same speaker).")


def _body_schema(model: type[BaseModel], file_help: str) -> dict[str, Any]:
    multipart = {"type": "object", "additionalProperties": False, "properties": {
        **{k: v for k, v in model.model_json_schema()["properties"].items()},
        "file": {"type": "string", "format": "binary", "description": file_help},
    }}
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": model.model_json_schema()},
        "multipart/form-data": {"schema": multipart},
    }}}


def create_app(engine: Predictor | Batcher | Any, limits: Limits | None = None, *, max_batch: int = 32,
               batch_wait_ms: float = 2.0, segmenter: SegmenterConfig | None = None) -> FastAPI:
    """The app over ``engine``: a :class:`Predictor` (batched here with ``max_batch`` and ``batch_wait_ms``),
    or a ready :class:`Batcher` or :class:`~emostore.serve.workers.WorkerPool`, which the app closes at shutdown.
    ``segmenter``: how ``/stream`` and ``/timeline`` cut speech into segments."""
    limits = limits or Limits()
    if isinstance(engine, Predictor):
        engine = Batcher(engine, max_batch=max_batch, batch_wait_ms=batch_wait_ms, max_queue=limits.max_queue)
    segmenter = (segmenter or SegmenterConfig()).check()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        hub.close()
        await run_in_threadpool(engine.close)

    app = FastAPI(title="emostore", version=__version__, lifespan=lifespan,
                  description="Emotion of utterances and conversation turns from text, voice and face.")
    app.add_middleware(BodyLimit, json_bytes=6 * limits.max_text_chars + (64 << 10),
                       form_bytes=limits.max_upload_bytes + 6 * limits.max_text_chars + (2 << 20))
    app.state.engine = engine
    conversations: OrderedDict[str, None] = OrderedDict()  # ids, least recently used first

    def touch(conversation_id: str) -> None:
        """Mark a conversation as just used; the least recent beyond the limit are forgotten."""
        conversations.pop(conversation_id, None)
        conversations[conversation_id] = None  # most recent last
        while len(conversations) > limits.max_conversations:
            forget(next(iter(conversations)))

    hub = Hub(engine, StreamLimits(max_streams=limits.max_streams, max_rate=limits.max_stream_rate,
                                   max_message_bytes=min(limits.max_upload_bytes, 1 << 20)), segmenter, touch)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(status_code=422, content={"detail": _plain(exc.errors())})

    @asynccontextmanager
    async def read_inputs(request: Request, model: type[BaseModel], form_model: type[BaseModel] | None = None
                          ) -> AsyncIterator[tuple[BaseModel, Upload | None]]:
        """The request's fields and its uploaded file (saved to a temporary file, removed when the
        block ends, whatever happens: a refusal, an error, a client that went away)."""
        ctype = request.headers.get("content-type", "")
        if ctype.startswith("application/json"):
            try:
                body = model.model_validate_json(await request.body())
            except ValidationError as exc:
                raise RequestValidationError(exc.errors()) from None
            yield body, None
            return
        if not ctype.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
            raise HTTPException(415, "send application/json, or multipart/form-data (text and a media file)")
        try:
            form = await request.form(max_files=1, max_fields=8, max_part_size=limits.max_upload_bytes + 1)
        except HTTPException:
            raise
        except Exception as exc:  # noqa: BLE001  (malformed multipart bodies)
            raise HTTPException(422, f"malformed multipart body: {_first_line(exc)}") from None
        upload = None
        try:
            fields = {k: v for k, v in form.items() if isinstance(v, str)}
            try:
                body = (form_model or model).model_validate(fields)
            except ValidationError as exc:
                raise RequestValidationError(exc.errors()) from None
            file = form.get("file")
            if file is not None and not isinstance(file, str):
                upload = await save_upload(file)
            yield body, upload
        finally:
            await form.close()
            if upload is not None:
                upload.path.unlink(missing_ok=True)

    async def save_upload(file: Any) -> Upload:
        name = Path(file.filename or "").name
        suffix = Path(name).suffix.lower()
        if suffix not in limits.media_suffixes:
            raise HTTPException(415, f"unsupported media type {suffix or name!r}; accepted: "
                                     f"{', '.join(limits.media_suffixes)}")
        data = await file.read(limits.max_upload_bytes + 1)
        if len(data) > limits.max_upload_bytes:
            raise HTTPException(413, f"upload larger than {limits.max_upload_bytes} bytes")
        if not data:
            raise HTTPException(422, "the uploaded file is empty")
        path = await run_in_threadpool(write_temp, data, suffix)
        kind = "audio" if suffix in AUDIO else ("video" if suffix in VIDEO else "image")
        return Upload(path, kind, name or f"upload{suffix}")

    def check_text(text: str | None, required: bool) -> None:
        if text is not None and len(text) > limits.max_text_chars:
            raise HTTPException(413, f"text longer than {limits.max_text_chars} characters")
        if required and (text is None or not text.strip()):
            raise HTTPException(422, "give a non-empty text or a media file")

    async def run(job: Job, upload: Upload | None = None) -> dict[str, Any]:
        try:
            future = engine.submit(job)
        except Busy as exc:
            raise HTTPException(503, f"server busy: {exc}", headers={"Retry-After": "1"}) from None
        try:
            return await asyncio.wrap_future(future)
        except UserError as exc:
            raise HTTPException(422, _scrub(str(exc), upload)) from None
        except Busy as exc:
            raise HTTPException(503, f"server busy: {exc}", headers={"Retry-After": "1"}) from None

    def forget(conversation_id: str) -> None:
        conversations.pop(conversation_id, None)
        engine.submit(Job("forget", conversation=conversation_id))  # after its pending turns, in order

    @app.get("/health")
    async def health() -> dict[str, Any]:
        """Liveness, what this server predicts with, and how its batches go."""
        return {"status": "ok", "version": __version__, **engine.info, "limits": asdict(limits),
                "conversations": len(conversations), "streams": hub.summary(), **engine.summary()}

    @app.post("/predict", openapi_extra=_body_schema(TextRequest, "An audio, video or image file."))
    async def predict(request: Request) -> dict[str, Any]:
        """Emotion of one utterance: JSON ``{"text": ...}`` or multipart text + media file."""
        async with read_inputs(request, TextRequest, MediaForm) as (body, upload):
            text = getattr(body, "text", None)
            check_text(text, required=upload is None)
            return await run(Job("predict", Inputs(text=text, **(upload.inputs() if upload else {}))), upload)

    @app.post("/conversations/{conversation_id}/turns",
              openapi_extra=_body_schema(TurnRequest, "Optional audio, video or image of the turn."))
    async def add_turn(conversation_id: str, request: Request) -> dict[str, Any]:
        """Append a turn to a conversation and get its emotion from the turns so far."""
        if not re.match(CONVERSATION_ID, conversation_id):
            raise HTTPException(422, f"conversation id must match {CONVERSATION_ID}")
        async with read_inputs(request, TurnRequest) as (body, upload):
            text = getattr(body, "text", None)
            check_text(text, required=upload is None)
            touch(conversation_id)
            out = await run(Job("turn", Inputs(text=text, speaker=getattr(body, "speaker", None),
                                               **(upload.inputs() if upload else {})),
                                conversation=conversation_id, max_turns=limits.max_turns), upload)
            out["conversation"] = conversation_id
            return out

    @app.post("/timeline", openapi_extra={"requestBody": {"required": True, "content": {"multipart/form-data": {
        "schema": {"type": "object", "additionalProperties": False, "required": ["file"], "properties": {
            "file": {"type": "string", "format": "binary", "description": "An audio or video recording."},
            "transcript": TimelineForm.model_json_schema()["properties"]["transcript"]}}}}}})
    async def timeline(request: Request) -> dict[str, Any]:
        """Emotion timeline of a recording: its speech segments, each predicted, and time per emotion
        (what ``emostore predict --timeline`` gives)."""
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise HTTPException(415, "send multipart/form-data with the recording as 'file'")
        async with read_inputs(request, TimelineForm) as (body, upload):
            if upload is None:
                raise HTTPException(422, "upload the recording as the multipart field 'file'")
            if upload.kind == "image":
                raise HTTPException(422, "a timeline needs an audio or video recording, not an image")
            try:
                out = await timeline_of_upload(engine, upload.path, upload.kind, getattr(body, "transcript", None),
                                               segmenter, hub.run)
            except UserError as exc:
                raise HTTPException(422, _scrub(str(exc), upload)) from None
            return {**out, "file": upload.name}

    @app.websocket("/stream")
    async def stream(websocket: WebSocket) -> None:
        """Live audio in, a ``segment`` message per speech segment out (protocol: README, "Real time")."""
        await hub.handle(websocket)

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.delete("/conversations/{conversation_id}")
    async def delete_conversation(conversation_id: str) -> dict[str, Any]:
        """Forget a conversation's turns."""
        if conversation_id not in conversations:
            raise HTTPException(404, f"no conversation {conversation_id!r}")
        forget(conversation_id)
        return {"deleted": conversation_id}

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


@dataclass
class Upload:
    """An uploaded file: where it was saved, its kind (audio, video, image) and the client's name."""

    path: Path
    kind: str
    name: str

    def inputs(self) -> dict[str, Path]:
        return {self.kind: self.path}


def _scrub(message: str, upload: Upload | None) -> str:
    """A message without server paths: the upload's temporary file by the client's name, any
    other path under the temporary folder as ``<temporary file>``."""
    if upload is not None:
        message = message.replace(str(upload.path), upload.name)
    return re.sub(re.escape(tempfile.gettempdir()) + r"/[^\s'\",;:)]+", "<temporary file>", message)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def write_temp(data: bytes, suffix: str) -> Path:
    with tempfile.NamedTemporaryFile(suffix=suffix, delete=False) as tmp:
        tmp.write(data)
    return Path(tmp.name)


def _plain(errors: Any) -> Any:
    """Validation errors as JSON-safe values (inputs can be bytes or exceptions)."""
    out = []
    for e in errors:
        out.append({k: (list(v) if isinstance(v, tuple) else
                        v if isinstance(v, (str, int, float, bool, type(None), list)) else str(v))
                    for k, v in dict(e).items() if k != "ctx"})
    return out

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

    async def read_inputs(request: Request, model: type[BaseModel],
                          form_model: type[BaseModel] | None = None) -> tuple[BaseModel, Path | None, str | None]:
        ctype = request.headers.get("content-type", "")
        if ctype.startswith("application/json"):
            try:
                body = model.model_validate_json(await request.body())
            except ValidationError as exc:
                raise RequestValidationError(exc.errors()) from None
            return body, None, None
        if ctype.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
            try:
                form = await request.form(max_files=1, max_fields=8, max_part_size=limits.max_upload_bytes + 1)
            except Exception as exc:  # noqa: BLE001  (malformed multipart bodies)
                raise HTTPException(422, f"malformed multipart body: {exc}") from None
            fields = {k: v for k, v in form.items() if isinstance(v, str)}
            try:
                body = (form_model or model).model_validate(fields)
            except ValidationError as exc:
                raise RequestValidationError(exc.errors()) from None
            upload = form.get("file")
            if upload is None or isinstance(upload, str):
                return body, None, None
            return body, *await save_upload(upload)
        raise HTTPException(415, "send application/json, or multipart/form-data (text and a media file)")

    async def save_upload(upload: Any) -> tuple[Path, str]:
        name = upload.filename or ""
        suffix = Path(name).suffix.lower()
        if suffix not in limits.media_suffixes:
            raise HTTPException(415, f"unsupported media type {suffix or name!r}; accepted: "
                                     f"{', '.join(limits.media_suffixes)}")
        data = await upload.read(limits.max_upload_bytes + 1)
        if len(data) > limits.max_upload_bytes:
            raise HTTPException(413, f"upload larger than {limits.max_upload_bytes} bytes")
        if not data:
            raise HTTPException(422, "the uploaded file is empty")
        path = await run_in_threadpool(write_temp, data, suffix)
        kind = "audio" if suffix in AUDIO else ("video" if suffix in VIDEO else "image")
        return path, kind

    def check_text(text: str | None, required: bool) -> None:
        if text is not None and len(text) > limits.max_text_chars:
            raise HTTPException(413, f"text longer than {limits.max_text_chars} characters")
        if required and (text is None or not text.strip()):
            raise HTTPException(422, "give a non-empty text or a media file")

    async def run(job: Job) -> dict[str, Any]:
        try:
            future = engine.submit(job)
        except Busy as exc:
            raise HTTPException(503, f"server busy: {exc}", headers={"Retry-After": "1"}) from None
        try:
            return await asyncio.wrap_future(future)
        except UserError as exc:
            raise HTTPException(422, str(exc)) from None
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
        body, path, kind = await read_inputs(request, TextRequest, MediaForm)
        text = getattr(body, "text", None)
        check_text(text, required=path is None)
        try:
            return await run(Job("predict", Inputs(text=text, **({kind: path} if path else {}))))
        finally:
            if path:
                path.unlink(missing_ok=True)

    @app.post("/conversations/{conversation_id}/turns",
              openapi_extra=_body_schema(TurnRequest, "Optional audio, video or image of the turn."))
    async def add_turn(conversation_id: str, request: Request) -> dict[str, Any]:
        """Append a turn to a conversation and get its emotion from the turns so far."""
        if not re.match(CONVERSATION_ID, conversation_id):
            raise HTTPException(422, f"conversation id must match {CONVERSATION_ID}")
        body, path, kind = await read_inputs(request, TurnRequest)
        text = getattr(body, "text", None)
        check_text(text, required=path is None)
        try:
            touch(conversation_id)
            out = await run(Job("turn", Inputs(text=text, speaker=getattr(body, "speaker", None),
                                               **({kind: path} if path else {})),
                                conversation=conversation_id, max_turns=limits.max_turns))
            out["conversation"] = conversation_id
            return out
        finally:
            if path:
                path.unlink(missing_ok=True)

    @app.post("/timeline", openapi_extra={"requestBody": {"required": True, "content": {"multipart/form-data": {
        "schema": {"type": "object", "additionalProperties": False, "required": ["file"], "properties": {
            "file": {"type": "string", "format": "binary", "description": "An audio or video recording."},
            "transcript": TimelineForm.model_json_schema()["properties"]["transcript"]}}}}}})
    async def timeline(request: Request) -> dict[str, Any]:
        """Emotion timeline of a recording: its speech segments, each predicted, and time per emotion
        (what ``emostore predict --timeline`` gives)."""
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise HTTPException(415, "send multipart/form-data with the recording as 'file'")
        body, path, kind = await read_inputs(request, TimelineForm)
        if path is None:
            raise HTTPException(422, "upload the recording as the multipart field 'file'")
        try:
            if kind == "image":
                raise HTTPException(422, "a timeline needs an audio or video recording, not an image")
            return await timeline_of_upload(engine, path, kind or "audio", getattr(body, "transcript", None),
                                            segmenter, hub.run)
        finally:
            path.unlink(missing_ok=True)

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

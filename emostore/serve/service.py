"""The state behind the HTTP API: the inference engine, the limits, the live streams and the
conversations; and how a request's inputs are read (uploads saved to temporary files that are
removed whatever happens), checked and answered."""

from __future__ import annotations

import asyncio
import re
import tempfile
from collections import OrderedDict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

from emostore.errors import UserError
from emostore.extract.segment import SegmenterConfig
from emostore.search.query import AUDIO, IMAGE, VIDEO
from emostore.serve.batcher import Busy, Job
from emostore.serve.stream import Hub, StreamLimits


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


@dataclass
class Upload:
    """An uploaded file: where it was saved, its kind (audio, video, image) and the client's name."""

    path: Path
    kind: str
    name: str

    def inputs(self) -> dict[str, Path]:
        return {self.kind: self.path}


class Service:
    """One server's engine (a Batcher or a WorkerPool), limits, streams and conversations."""

    def __init__(self, engine: Any, limits: Limits, segmenter: SegmenterConfig):
        self.engine, self.limits, self.segmenter = engine, limits, segmenter
        self.conversations: OrderedDict[str, None] = OrderedDict()  # ids, least recently used first
        self.hub = Hub(engine, StreamLimits(max_streams=limits.max_streams, max_rate=limits.max_stream_rate,
                                            max_message_bytes=min(limits.max_upload_bytes, 1 << 20)),
                       segmenter, self.touch)

    def close(self) -> None:
        self.hub.close()
        self.engine.close()

    # ----- conversations -----------------------------------------------------------------
    def touch(self, conversation_id: str) -> None:
        """Mark a conversation as just used; the least recent beyond the limit are forgotten."""
        self.conversations.pop(conversation_id, None)
        self.conversations[conversation_id] = None  # most recent last
        while len(self.conversations) > self.limits.max_conversations:
            self.forget(next(iter(self.conversations)))

    def forget(self, conversation_id: str) -> None:
        self.conversations.pop(conversation_id, None)
        self.engine.submit(Job("forget", conversation=conversation_id))  # after its pending turns, in order

    # ----- requests ----------------------------------------------------------------------
    @asynccontextmanager
    async def inputs(self, request: Request, model: type[BaseModel], form_model: type[BaseModel] | None = None
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
            form = await request.form(max_files=1, max_fields=8, max_part_size=self.limits.max_upload_bytes + 1)
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
                upload = await self.save_upload(file)
            yield body, upload
        finally:
            await form.close()
            if upload is not None:
                upload.path.unlink(missing_ok=True)

    async def save_upload(self, file: Any) -> Upload:
        limits = self.limits
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

    def check_text(self, text: str | None, required: bool) -> None:
        if text is not None and len(text) > self.limits.max_text_chars:
            raise HTTPException(413, f"text longer than {self.limits.max_text_chars} characters")
        if required and (text is None or not text.strip()):
            raise HTTPException(422, "give a non-empty text or a media file")

    async def run(self, job: Job, upload: Upload | None = None) -> dict[str, Any]:
        """The engine's answer to ``job``; refusals as HTTP errors (no server path in them)."""
        try:
            future = self.engine.submit(job)
        except Busy as exc:
            raise HTTPException(503, f"server busy: {exc}", headers={"Retry-After": "1"}) from None
        try:
            return await asyncio.wrap_future(future)
        except UserError as exc:
            raise HTTPException(422, scrub(str(exc), upload)) from None
        except Busy as exc:
            raise HTTPException(503, f"server busy: {exc}", headers={"Retry-After": "1"}) from None


def scrub(message: str, upload: Upload | None) -> str:
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

"""The HTTP API: FastAPI over one :class:`Predictor`, loaded once at start-up.

Every request outside the limits gets a 4xx with a message; malformed requests a 422. Encoders
and the head are not assumed thread-safe: one request at a time runs them.
"""

from __future__ import annotations

import re
import tempfile
import threading
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from emostore import __version__
from emostore.errors import UserError
from emostore.search.query import AUDIO, IMAGE, VIDEO
from emostore.serve.predictor import Conversation, Predictor

CONVERSATION_ID = r"^[A-Za-z0-9_.:-]{1,64}$"


@dataclass
class Limits:
    max_text_chars: int = 2000
    max_upload_bytes: int = 20 * 1024 * 1024
    max_turns: int = 50
    max_conversations: int = 1000
    media_suffixes: tuple[str, ...] = tuple(sorted(AUDIO | VIDEO | IMAGE))


class TextRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str = Field(description="The utterance.")


class MediaForm(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str | None = Field(default=None, description="The utterance (optional beside a media file).")


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


def create_app(predictor: Predictor, limits: Limits | None = None) -> FastAPI:
    limits = limits or Limits()
    app = FastAPI(title="emostore", version=__version__,
                  description="Emotion of utterances and conversation turns from text, voice and face.")
    lock = threading.Lock()
    conversations: OrderedDict[str, Conversation] = OrderedDict()
    predictor.load_encoders()  # everything heavy happens once, before the first request

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
        tmp = tempfile.NamedTemporaryFile(suffix=suffix, delete=False)
        tmp.write(data)
        tmp.close()
        kind = "audio" if suffix in AUDIO else ("video" if suffix in VIDEO else "image")
        return Path(tmp.name), kind

    def check_text(text: str | None, required: bool) -> None:
        if text is not None and len(text) > limits.max_text_chars:
            raise HTTPException(413, f"text longer than {limits.max_text_chars} characters")
        if required and (text is None or not text.strip()):
            raise HTTPException(422, "give a non-empty text or a media file")

    def run(fn: Any, **kwargs: Any) -> dict[str, Any]:
        try:
            with lock:
                return fn(**kwargs)
        except UserError as exc:
            raise HTTPException(422, str(exc)) from None

    @app.get("/health")
    def health() -> dict[str, Any]:
        """Liveness and what this server predicts with."""
        m = predictor.meta
        return {"status": "ok", "version": __version__, "head": m["head"], "target": m["target"]["name"],
                "labels": m["target"]["labels"], "feature_sets": predictor.feature_sets,
                "limits": asdict(limits), "conversations": len(conversations)}

    @app.post("/predict", openapi_extra=_body_schema(TextRequest, "An audio, video or image file."))
    async def predict(request: Request) -> dict[str, Any]:
        """Emotion of one utterance: JSON ``{"text": ...}`` or multipart text + media file."""
        body, path, kind = await read_inputs(request, TextRequest, MediaForm)
        text = getattr(body, "text", None)
        check_text(text, required=path is None)
        try:
            return run(predictor.predict, text=text, **({kind: path} if path else {}))
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
            conv = conversations.pop(conversation_id, None) or Conversation()
            conversations[conversation_id] = conv  # most recent last
            while len(conversations) > limits.max_conversations:
                conversations.popitem(last=False)
            out = run(predictor.add_turn, conversation=conv, max_turns=limits.max_turns, text=text,
                      speaker=getattr(body, "speaker", None), **({kind: path} if path else {}))
            out["conversation"] = conversation_id
            return out
        finally:
            if path:
                path.unlink(missing_ok=True)

    @app.delete("/conversations/{conversation_id}")
    def forget(conversation_id: str) -> dict[str, Any]:
        """Forget a conversation's turns."""
        if conversations.pop(conversation_id, None) is None:
            raise HTTPException(404, f"no conversation {conversation_id!r}")
        return {"deleted": conversation_id}

    return app


def _plain(errors: Any) -> Any:
    """Validation errors as JSON-safe values (inputs can be bytes or exceptions)."""
    out = []
    for e in errors:
        out.append({k: (list(v) if isinstance(v, tuple) else
                        v if isinstance(v, (str, int, float, bool, type(None), list)) else str(v))
                    for k, v in dict(e).items() if k != "ctx"})
    return out

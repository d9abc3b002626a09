"""The API's routes, in two routers over one :class:`~emostore.serve.service.Service`: single
utterances and conversations (``/health``, ``/predict``, ``/conversations``), and recordings and
live streams (``/timeline``, ``/stream``, the page at ``/``)."""

from __future__ import annotations

import re
from dataclasses import asdict
from pathlib import Path
from typing import Any

from fastapi import APIRouter, HTTPException, Request, WebSocket
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field

from emostore import __version__
from emostore.errors import UserError
from emostore.serve.batcher import Job
from emostore.serve.predictor import Inputs
from emostore.serve.service import Service, scrub
from emostore.serve.timeline_endpoint import timeline_of_upload

STATIC = Path(__file__).parent / "static"
CONVERSATION_ID = r"^[A-Za-z0-9_.:-]{1,64}$"


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


def prediction_routes(svc: Service) -> APIRouter:
    """``/health``, ``/predict`` and ``/conversations``."""
    router = APIRouter()

    @router.get("/health")
    async def health() -> dict[str, Any]:
        """Liveness, what this server predicts with, and how its batches go."""
        return {"status": "ok", "version": __version__, **svc.engine.info, "limits": asdict(svc.limits),
                "conversations": len(svc.conversations), "streams": svc.hub.summary(), **svc.engine.summary()}

    @router.post("/predict", openapi_extra=_body_schema(TextRequest, "An audio, video or image file."))
    async def predict(request: Request) -> dict[str, Any]:
        """Emotion of one utterance: JSON ``{"text": ...}`` or multipart text + media file."""
        async with svc.inputs(request, TextRequest, MediaForm) as (body, upload):
            text = getattr(body, "text", None)
            svc.check_text(text, required=upload is None)
            return await svc.run(Job("predict", Inputs(text=text, **(upload.inputs() if upload else {}))), upload)

    @router.post("/conversations/{conversation_id}/turns",
                 openapi_extra=_body_schema(TurnRequest, "Optional audio, video or image of the turn."))
    async def add_turn(conversation_id: str, request: Request) -> dict[str, Any]:
        """Append a turn to a conversation and get its emotion from the turns so far."""
        if not re.match(CONVERSATION_ID, conversation_id):
            raise HTTPException(422, f"conversation id must match {CONVERSATION_ID}")
        async with svc.inputs(request, TurnRequest) as (body, upload):
            text = getattr(body, "text", None)
            svc.check_text(text, required=upload is None)
            svc.touch(conversation_id)
            out = await svc.run(Job("turn", Inputs(text=text, speaker=getattr(body, "speaker", None),
                                                   **(upload.inputs() if upload else {})),
                                    conversation=conversation_id, max_turns=svc.limits.max_turns), upload)
            out["conversation"] = conversation_id
            return out

    @router.delete("/conversations/{conversation_id}")
    async def delete_conversation(conversation_id: str) -> dict[str, Any]:
        """Forget a conversation's turns."""
        if conversation_id not in svc.conversations:
            raise HTTPException(404, f"no conversation {conversation_id!r}")
        svc.forget(conversation_id)
        return {"deleted": conversation_id}

    return router


TIMELINE_BODY = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "additionalProperties": False, "required": ["file"], "properties": {
        "file": {"type": "string", "format": "binary", "description": "An audio or video recording."},
        "transcript": TimelineForm.model_json_schema()["properties"]["transcript"]}}}}}}


def stream_routes(svc: Service) -> APIRouter:
    """``/timeline`` (a recording), ``/stream`` (live audio, a WebSocket) and the page at ``/``."""
    router = APIRouter()

    @router.post("/timeline", openapi_extra=TIMELINE_BODY)
    async def timeline(request: Request) -> dict[str, Any]:
        """Emotion timeline of a recording: its speech segments, each predicted, and time per emotion
        (what ``emostore predict --timeline`` gives)."""
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise HTTPException(415, "send multipart/form-data with the recording as 'file'")
        async with svc.inputs(request, TimelineForm) as (body, upload):
            if upload is None:
                raise HTTPException(422, "upload the recording as the multipart field 'file'")
            if upload.kind == "image":
                raise HTTPException(422, "a timeline needs an audio or video recording, not an image")
            try:
                out = await timeline_of_upload(svc.engine, upload.path, upload.kind,
                                               getattr(body, "transcript", None), svc.segmenter, svc.hub.run)
            except UserError as exc:
                raise HTTPException(422, scrub(str(exc), upload)) from None
            return {**out, "file": upload.name}

    @router.websocket("/stream")
    async def stream(websocket: WebSocket) -> None:
        """Live audio in, a ``segment`` message per speech segment out (protocol: README, "Real time")."""
        await svc.hub.handle(websocket)

    @router.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    return router

"""``POST /timeline``: the timeline of an uploaded recording, predicted by the server's batcher."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import HTTPException

from emostore.errors import UserError
from emostore.extract.segment import Segment, SegmenterConfig
from emostore.serve.batcher import Busy, Job
from emostore.serve.timeline import check_usable, entry, inputs_for, parse_transcript, segments_of, summarize


async def timeline_of_upload(engine: Any, path: Path, kind: str, transcript: str | None, config: SegmenterConfig,
                             run: Callable[..., Awaitable[Any]]) -> dict[str, Any]:
    """Segment ``path`` in a pool thread (``run``), then predict every segment through ``engine``."""
    try:
        pieces = parse_transcript(io.StringIO(transcript)) if transcript else []
        check_usable([f.split("/", 1)[0] for f in engine.info["feature_sets"]], kind, bool(pieces))
        segments, duration = await run(_segment, path, config)
    except UserError as exc:
        raise HTTPException(422, str(exc)) from None
    items = [inputs_for(s, path, kind, pieces) for s in segments]
    try:
        futures = [asyncio.wrap_future(engine.submit(Job("predict", it))) for it in items]
    except Busy as exc:
        raise HTTPException(503, f"server busy: {exc}", headers={"Retry-After": "1"}) from None
    results = await asyncio.gather(*futures, return_exceptions=True)
    if any(isinstance(r, Busy) for r in results):
        raise HTTPException(503, "server busy: try again shortly", headers={"Retry-After": "1"})
    rows = [entry(s, r if isinstance(r, dict | UserError) else RuntimeError("server error"), it.text)
            for s, it, r in zip(segments, items, results)]
    return {"file": path.name, "segments": rows, "summary": summarize(rows, duration)}


def _segment(path: Path, config: SegmenterConfig) -> tuple[list[Segment], float]:
    seconds = [0.0]
    out = []
    for seg in segments_of(path, config, lambda s: seconds.__setitem__(0, seconds[0] + s)):
        seg.audio = np.zeros(0, np.float32)  # predicted from the file's span; the copy is not needed
        out.append(seg)
    return out, seconds[0]

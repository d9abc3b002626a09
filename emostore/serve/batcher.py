"""Dynamic micro-batching: requests that arrive together are encoded and predicted together.

Two threads own the :class:`Predictor`'s models, so the caller (the server's event loop) never
runs one:

- the **media thread** runs the audio and visual encoders (openSMILE, MediaPipe), one request at
  a time: they process one signal or video per call, so batching gives them nothing to share;
- the **batch thread** takes whatever requests are ready, waiting at most ``batch_wait_ms`` after
  the first for more (up to ``max_batch``), encodes all their texts in one ``encode_rows`` call
  per text feature set (one forward pass of the sentence model), runs the head once over the
  single utterances and once per conversation, and answers each request.

A text-only request therefore never waits behind a video, and a request whose media is being
decoded does not hold back the texts of the others. A request that fails (bad file, nothing
encodable, an encoder error on its input alone) gets its own error; the rest of its batch goes
on. The turns of one conversation are taken one at a time, in the order they were submitted:
a turn enters the pipeline only once the previous turn of its conversation is answered, so a
context head (and an encoder that reads the previous turns) always sees the turns in order.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from emostore.errors import UserError
from emostore.serve.predictor import Conversation, Encoded, Inputs, Predictor

log = logging.getLogger("emostore.serve")


class Busy(Exception):
    """Too many requests are waiting: the caller should retry later (HTTP 503)."""


@dataclass(frozen=True)
class Job:
    """One request: ``predict`` an utterance, add a ``turn`` to a conversation, or ``forget`` one."""

    kind: str
    inputs: Inputs | None = None
    conversation: str | None = None
    max_turns: int = 50


@dataclass
class _Item:
    job: Job
    future: Future
    inputs: Inputs | None = None
    encoded: Encoded | None = None
    done: bool = False


@dataclass
class Stats:
    batches: int = 0
    requests: int = 0
    largest: int = 0
    text_passes: int = 0
    recent: deque = field(default_factory=lambda: deque(maxlen=1000))

    def add(self, size: int) -> None:
        self.batches += 1
        self.requests += size
        self.largest = max(self.largest, size)
        self.recent.append(size)

    def summary(self) -> dict[str, Any]:
        recent = list(self.recent)
        return {"batches": self.batches, "requests": self.requests, "largest": self.largest,
                "mean_recent": round(sum(recent) / len(recent), 2) if recent else 0.0,
                "text_passes": self.text_passes}


class Batcher:
    """Runs a :class:`Predictor` in its own threads; :meth:`submit` returns a future per request."""

    def __init__(self, predictor: Predictor, *, max_batch: int = 32, batch_wait_ms: float = 2.0,
                 max_queue: int = 1024):
        if max_batch < 1:
            raise UserError(f"--max-batch must be at least 1, got {max_batch}")
        if batch_wait_ms < 0:
            raise UserError(f"--batch-wait-ms must be 0 or more, got {batch_wait_ms}")
        self.predictor = predictor
        self.max_batch = max_batch
        self.batch_wait = batch_wait_ms / 1000
        self.max_queue = max_queue
        self.conversations: dict[str, Conversation] = {}
        self.stats = Stats()
        self._lock = threading.Lock()
        self._waiting: dict[str, deque[_Item]] = {}  # conversation -> its turns behind the one in the pipeline
        self._pending = 0
        self._ready: queue.Queue[_Item | None] = queue.Queue()
        self._media: queue.Queue[_Item | None] = queue.Queue()
        self._closed = False
        predictor.load_encoders()  # everything heavy happens once, before the first request
        self._threads = [threading.Thread(target=self._batch_loop, name="emostore-batch", daemon=True)]
        if predictor.media_feature_sets:
            self._threads.append(threading.Thread(target=self._media_loop, name="emostore-media", daemon=True))
        for t in self._threads:
            t.start()

    @property
    def info(self) -> dict[str, Any]:
        return self.predictor.info

    @property
    def in_flight(self) -> int:
        """Requests submitted and not yet answered."""
        return self._pending

    def summary(self) -> dict[str, Any]:
        return {"in_flight": self._pending, "max_batch": self.max_batch,
                "batch_wait_ms": round(self.batch_wait * 1000, 3), "batching": self.stats.summary()}

    # ----- submitting --------------------------------------------------------------------
    def submit(self, job: Job) -> Future:
        """Queue a request; the future gets its result dict or its exception (:class:`UserError` for bad input).

        Raises :class:`Busy` when ``max_queue`` requests are already waiting."""
        if self._closed:
            raise RuntimeError("this batcher is closed")
        item = _Item(job, Future())
        if job.kind not in ("predict", "turn", "forget") or (job.kind != "predict") == (job.conversation is None):
            item.future.set_exception(ValueError(f"bad job: {job.kind!r} (conversation {job.conversation!r})"))
            return item.future
        if job.kind != "forget":
            try:
                item.inputs = self.predictor.check(job.inputs or Inputs())
            except UserError as exc:
                item.future.set_exception(exc)
                return item.future
            item.encoded = Encoded(speaker=item.inputs.speaker, text=item.inputs.text)
        with self._lock:
            if self._pending >= self.max_queue:
                raise Busy(f"{self._pending} requests are waiting; try again shortly")
            self._pending += 1
            if job.kind != "predict":
                if job.conversation in self._waiting:  # a turn of this conversation is in the pipeline
                    self._waiting[job.conversation].append(item)
                    return item.future
                self._waiting[job.conversation] = deque()
        self._dispatch(item)
        return item.future

    def _dispatch(self, item: _Item) -> None:
        needs_media = item.inputs is not None and item.inputs.media and self.predictor.media_feature_sets
        (self._media if needs_media else self._ready).put(item)

    def _finish(self, item: _Item, result: Any = None, error: BaseException | None = None) -> None:
        if item.done:
            return
        item.done = True
        if error is not None:
            item.future.set_exception(error)
        else:
            item.future.set_result(result)
        nxt = None
        with self._lock:
            self._pending -= 1
            if item.job.kind != "predict":
                behind = self._waiting[item.job.conversation]
                if behind:
                    nxt = behind.popleft()
                else:
                    del self._waiting[item.job.conversation]
        if nxt is not None:
            self._dispatch(nxt)

    # ----- the threads -------------------------------------------------------------------
    def _media_loop(self) -> None:
        media = self.predictor.media_feature_sets
        while (item := self._media.get()) is not None:
            try:
                _, failed = self.predictor.encode_many([item.inputs], media, into=[item.encoded])  # type: ignore[list-item]
            except Exception as exc:  # noqa: BLE001  (never let one request stop the thread)
                failed = {0: exc}
            if failed:
                self._fail(item, failed[0])
            else:
                self._ready.put(item)

    def _batch_loop(self) -> None:
        while (first := self._ready.get()) is not None:
            batch = [first]
            deadline = time.monotonic() + self.batch_wait
            stop = False
            while len(batch) < self.max_batch:
                try:
                    nxt = self._ready.get_nowait() if self.batch_wait == 0 else \
                        self._ready.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                batch.append(nxt)
            try:
                self._run_batch(batch)
            except Exception as exc:  # a bug must not hang the callers
                log.exception("batch of %d requests failed", len(batch))
                for item in batch:
                    self._fail(item, exc)
            if stop:
                break

    def _fail(self, item: _Item, exc: BaseException) -> None:
        if not isinstance(exc, UserError):
            log.error("request failed: %s: %s", type(exc).__name__, exc)
        self._finish(item, error=exc)

    def _run_batch(self, batch: list[_Item]) -> None:
        self.stats.add(len(batch))
        work = [it for it in batch if it.job.kind != "forget"]
        texts, media = self.predictor.text_feature_sets, self.predictor.media_feature_sets
        plain = [it for it in work if not it.inputs.media]  # type: ignore[union-attr]
        if plain and media:  # records the media feature sets as absent; runs no encoder
            self.predictor.encode_many([it.inputs for it in plain], media,  # type: ignore[misc]
                                       into=[it.encoded for it in plain])  # type: ignore[misc]
        if work and texts:
            self.stats.text_passes += 1
            # a turn is encoded after its conversation's earlier turns (one turn per conversation is in flight)
            histories = [[] if it.job.kind == "predict" else
                         self.predictor.history(self.conversations.get(it.job.conversation), it.job.max_turns)
                         for it in work]
            _, failed = self.predictor.encode_many([it.inputs for it in work], texts,  # type: ignore[misc]
                                                   into=[it.encoded for it in work],  # type: ignore[misc]
                                                   histories=histories)
            for j, exc in failed.items():
                self._fail(work[j], exc)
        single = [it for it in work if it.job.kind == "predict" and not it.done]
        if single:
            results = self.predictor.predict_encoded([it.inputs for it in single],  # type: ignore[misc]
                                                     [it.encoded for it in single])  # type: ignore[misc]
            for it, res in zip(single, results):
                if isinstance(res, Exception):
                    self._fail(it, res)
                else:
                    self._finish(it, res)
        for it in batch:
            if it.done:
                continue
            try:
                if it.job.kind == "forget":
                    gone = self.conversations.pop(it.job.conversation, None)  # type: ignore[arg-type]
                    self._finish(it, {"deleted": it.job.conversation, "existed": gone is not None})
                else:
                    conv = self.conversations.setdefault(it.job.conversation, Conversation())  # type: ignore[arg-type]
                    self._finish(it, self.predictor.add_encoded_turn(conv, it.job.max_turns, it.encoded,  # type: ignore[arg-type]
                                                                     it.inputs))  # type: ignore[arg-type]
            except Exception as exc:  # noqa: BLE001  (this request fails alone)
                self._fail(it, exc)

    def close(self) -> None:
        """Stop the threads after the requests already queued."""
        if self._closed:
            return
        self._closed = True
        self._media.put(None)
        for t in self._threads:
            if t.name == "emostore-media":
                t.join(timeout=60)
        self._ready.put(None)
        for t in self._threads:
            t.join(timeout=60)

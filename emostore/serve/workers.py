"""``--workers N``: N inference processes behind one HTTP process.

Each worker process loads its own :class:`Predictor` and runs its own :class:`Batcher`. The HTTP
process parses requests and routes them: every turn of a conversation goes to the same worker
(chosen by a hash of the conversation id), so its turns stay in order and in one memory; a
single prediction goes to the worker with the fewest requests in flight. Uploaded files are
saved by the HTTP process and read by the worker from the same path.

More processes help where one process cannot keep the cores busy: many cores and small text
batches, or audio and video requests (openSMILE and MediaPipe use one core per request). Each
worker holds a copy of the models and gets ``cores / N`` PyTorch threads.
"""

from __future__ import annotations

import itertools
import logging
import multiprocessing as mp
import os
import queue
import threading
import time
import zlib
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from emostore.errors import UserError
from emostore.serve.batcher import Busy, Job

log = logging.getLogger("emostore.serve")


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _worker_main(wid: int, jobs: Any, results: Any, predictor_args: dict[str, Any],
                 batcher_args: dict[str, Any], threads: int) -> None:
    """A worker process: load, say ready, then answer jobs until ``None``."""
    import torch

    from emostore.serve.batcher import Batcher
    from emostore.serve.predictor import Predictor

    torch.set_num_threads(threads)
    try:
        batcher = Batcher(Predictor(**predictor_args), **batcher_args)
    except Exception as exc:  # noqa: BLE001  (reported to the HTTP process, which stops)
        results.put(("failed", wid, f"{type(exc).__name__}: {exc}" if not isinstance(exc, UserError) else str(exc)))
        return
    results.put(("ready", wid, batcher.info))

    def reply(job_id: int, fut: Future) -> None:
        exc = fut.exception()
        if exc is None:
            results.put((job_id, "ok", fut.result()))
        elif isinstance(exc, UserError):
            results.put((job_id, "user", str(exc)))
        else:
            results.put((job_id, "error", f"{type(exc).__name__}: {exc}"))

    while (msg := jobs.get()) is not None:
        job_id, job = msg
        try:
            batcher.submit(job).add_done_callback(lambda f, i=job_id: reply(i, f))
        except Busy as exc:
            results.put((job_id, "busy", str(exc)))
    batcher.close()


class WorkerDied(Busy):
    """The worker process running a request died; it is being restarted, so the request can be sent again
    (HTTP 503 with Retry-After)."""


class WorkerPool:
    """The same interface as :class:`Batcher` (``submit``, ``info``, ``summary``, ``close``) over N processes.

    Each worker has its own job queue and its own result queue, read by its own thread: a worker killed
    while writing a result can leave only its own queue unreadable, and a watcher thread fails that
    worker's requests and starts it again, however busy the others are."""

    def __init__(self, workers: int, *, checkpoint: Path, device: str = "auto", evidence_store: Path | None = None,
                 max_batch: int = 32, batch_wait_ms: float = 2.0, max_queue: int = 1024, start_timeout: float = 900):
        if workers < 1:
            raise UserError(f"--workers must be at least 1, got {workers}")
        self._ctx = mp.get_context("spawn")  # never fork a process that holds threads and models
        self.n = workers
        self.max_queue = max_queue
        self._predictor_args = {"checkpoint": Path(checkpoint), "device": device, "evidence_store": evidence_store}
        self._batcher_args = {"max_batch": max_batch, "batch_wait_ms": batch_wait_ms, "max_queue": max_queue}
        self._threads = max(1, available_cores() // workers)
        self._lock = threading.Lock()
        self._futures: dict[int, tuple[int, Future]] = {}
        self._ids = itertools.count()
        self._procs: list[Any] = [None] * workers
        self._queues: list[Any] = [None] * workers
        self._results: list[Any] = [None] * workers
        self.info: dict[str, Any] = {}
        self.restarts = 0
        self._closed = False
        for wid in range(workers):
            self._start(wid)
        try:
            self._wait_ready(start_timeout)
        except BaseException:
            self.close()
            raise
        for wid in range(workers):
            self._listen(wid)
        self._watcher = threading.Thread(target=self._watch, name="emostore-workers", daemon=True)
        self._watcher.start()

    def _wait_ready(self, start_timeout: float) -> None:
        deadline = time.monotonic() + start_timeout
        for wid in range(self.n):
            try:
                msg = self._results[wid].get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                late = self.n - wid
                raise UserError(f"{late} of {self.n} workers did not start within {start_timeout:.0f} s") from None
            if msg[0] == "failed":
                raise UserError(msg[2])
            self.info = msg[2]

    def _start(self, wid: int) -> None:
        self._queues[wid], self._results[wid] = self._ctx.Queue(), self._ctx.Queue()
        p = self._ctx.Process(target=_worker_main, name=f"emostore-worker-{wid}", daemon=True,
                              args=(wid, self._queues[wid], self._results[wid], self._predictor_args,
                                    self._batcher_args, self._threads))
        p.start()
        self._procs[wid] = p

    def _listen(self, wid: int) -> None:
        threading.Thread(target=self._read, args=(self._procs[wid], self._results[wid]),
                         name=f"emostore-worker-{wid}-results", daemon=True).start()

    @property
    def in_flight(self) -> int:
        return len(self._futures)

    def summary(self) -> dict[str, Any]:
        per = [0] * self.n
        with self._lock:
            for wid, _ in self._futures.values():
                per[wid] += 1
        return {"in_flight": sum(per), "workers": self.n, "in_flight_per_worker": per,
                "worker_restarts": self.restarts, **{k: v for k, v in self._batcher_args.items() if k != "max_queue"}}

    def pids(self) -> list[int]:
        return [p.pid for p in self._procs if p is not None]

    def _route(self, job: Job) -> int:
        if job.conversation is not None:
            return zlib.crc32(job.conversation.encode("utf-8")) % self.n
        load = [0] * self.n
        for wid, _ in self._futures.values():
            load[wid] += 1
        return min(range(self.n), key=lambda w: load[w])

    def submit(self, job: Job) -> Future:
        if self._closed:
            raise RuntimeError("the worker pool is closed")
        fut: Future = Future()
        with self._lock:
            if len(self._futures) >= self.max_queue:
                raise Busy(f"{len(self._futures)} requests are waiting; try again shortly")
            wid = self._route(job)
            job_id = next(self._ids)
            self._futures[job_id] = (wid, fut)
            self._queues[wid].put((job_id, job))  # under the lock: never into a dead worker's queue
        return fut

    def _read(self, proc: Any, results: Any) -> None:
        """Deliver one worker process's results until it is gone or the pool closes."""
        while not self._closed:
            try:
                msg = results.get(timeout=0.5)
            except queue.Empty:
                if not proc.is_alive():
                    return
                continue
            except (EOFError, OSError, ValueError):  # a queue closed, or left half-written by a killed worker
                return
            self._deliver(msg)

    def _deliver(self, msg: tuple) -> None:
        if msg[0] in ("ready", "failed"):  # a restarted worker
            if msg[0] == "failed":
                log.error("worker %s failed to restart: %s", msg[1], msg[2])
            return
        job_id, status, payload = msg
        with self._lock:
            _, fut = self._futures.pop(job_id, (None, None))
        if fut is None:  # already failed: its worker died after answering
            return
        if status == "ok":
            fut.set_result(payload)
        elif status == "user":
            fut.set_exception(UserError(payload))
        elif status == "busy":
            fut.set_exception(Busy(payload))
        else:
            fut.set_exception(RuntimeError(payload))

    def _watch(self) -> None:
        while not self._closed:
            time.sleep(0.25)
            self._check_workers()

    def _check_workers(self) -> None:
        """When a worker has died: fail its requests (the client may send them again) and start it again."""
        for wid, p in enumerate(self._procs):
            if self._closed or p is None or p.is_alive():
                continue
            with self._lock:  # no request reaches the dead worker's queue from here on
                lost = [(i, f) for i, (w, f) in self._futures.items() if w == wid]
                for i, _ in lost:
                    del self._futures[i]
                self.restarts += 1
                self._start(wid)
            self._listen(wid)
            log.error("worker %d died (exit code %s); %d requests failed, its conversations are lost; restarted it",
                      wid, p.exitcode, len(lost))
            for _, f in lost:
                f.set_exception(WorkerDied(f"the worker process running this request died (exit code {p.exitcode}) "
                                           "and is being restarted; send it again"))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for wid, p in enumerate(self._procs):
            if p is not None and p.is_alive():
                self._queues[wid].put(None)
        for p in self._procs:
            if p is not None:
                p.join(timeout=30)
                if p.is_alive():
                    p.terminate()
                    p.join(timeout=10)
        with self._lock:
            for _, f in self._futures.values():
                f.set_exception(RuntimeError("the server is shutting down"))
            self._futures.clear()

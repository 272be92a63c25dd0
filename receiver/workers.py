"""Decoding in supervised worker processes, so that one bad stream cannot take the station down.

CompressAI's rANS decoder does not bound-check its input (CompressAI issue #300): a corrupted
string that gets past our checks can crash the process that decodes it. The receiver therefore
decodes in a few worker processes, each holding one frozen copy of the base model that all its
cameras share, and keeping each camera's StreamDecoder. A camera is assigned to the least
loaded worker and stays there (its decoder state lives there).

Worker and pool talk over a Unix socket pair in our own framing (receiver/childproc.py: a JSON
head and a binary body, the packed record one way, the frame's raw bytes the other), so nothing a
worker says is ever unpickled. A 320x240 frame (230 KB) costs about 0.2 ms to send back this way,
against tens of milliseconds to decode it, so shared memory would not pay for its bookkeeping.

A worker that dies closes its socket: the pool sees that at once. A worker that stops answering
instead (deadlocked, looping on a corrupt string, stopped) is killed by a watchdog once it has sat
on one request for the pool's hang timeout. Either way the camera whose record the process was on
(a worker decodes in order, so its oldest pending request) is blamed: that request fails
("worker crashed" or "worker hung") and the camera is quarantined, its records going to no worker
for a time that grows with each repeat offence. The other cameras lose nothing: a spare process,
started in advance with the model loaded, takes the dead one's place at once (and a new spare is
started), each camera's decoder is rebuilt there from the records that made it (receiver/replay.py),
and their requests that were in flight are sent again. A process that cannot start is tried again
with a growing delay: backoff punishes the offending camera, not the slot.

Workers are started with multiprocessing's "spawn" context (receiver/childproc.py says why).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess
from typing import Any

import numpy as np
import torch

from adaptcast.receiver.childproc import (
    MAX_HEAD_BYTES,
    SPAWN,
    enter_child,
    exit_description,
    limit_address_space,
    message,
    read_message,
    receive,
    write_message,
)
from adaptcast.receiver.replay import DecoderHistory
from adaptcast.receiver.stats import DecodeFailure, PoolStats, WorkerFailure, WorkerStats
from adaptcast.shared.codec.bitstream import BackgroundRecord, SegmentStart, StreamHeader, unpack_packed_record
from adaptcast.shared.codec.modelfile import ModelLibrary, load_model
from adaptcast.shared.device import pick_device, usable_cores
from adaptcast.shared.errors import AdaptcastError, BitstreamError, ModelError
from adaptcast.shared.pipeline.streamdecoder import MissingBackground, StreamDecoder

log = logging.getLogger(__name__)

MAX_IN_FLIGHT = 4
"""Requests of one camera sent to its worker and not yet answered; `feed` waits beyond it."""
START_TIMEOUT_SECONDS = 120.0
"""Time a worker gets to import torch and load the model before it counts as failed."""
HANG_TIMEOUT_SECONDS = 10.0
"""Time a worker may spend on one request before it counts as hung and is killed. Decoding a
1080p frame on a slow CPU takes about a second and installing an adapter snapshot less, so ten
times that leaves room for a loaded machine without holding a hung worker's cameras for long."""
FIRST_BACKOFF_SECONDS = 0.5
MAX_BACKOFF_SECONDS = 30.0
"""Delays before trying again to start a process that failed to start."""
QUARANTINE_FIRST_SECONDS = 10.0
"""How long a camera's records go to no worker after one of them killed or hung its worker; it
doubles with each repeat offence up to QUARANTINE_MAX_SECONDS. Long enough for the spare process
that replaced the dead one to have a successor started (a few seconds on a loaded CPU), so that a
camera that kills a worker at each chance never finds the slot without a spare."""
QUARANTINE_MAX_SECONDS = 300.0
QUARANTINE_FORGIVEN_SECONDS = 600.0
"""An offence this long after the previous one counts as a first offence again."""
STOP_GRACE_SECONDS = 5.0
"""Time a worker gets to exit after its socket closes, before it is killed."""
POLL_SECONDS = 0.02
"""How often an exiting worker is checked on (waiting on a process is not an asyncio event)."""


class WorkerStartError(AdaptcastError):
    """A decode worker could not start (the model did not load, or the process died)."""


@dataclass
class DecodeResult:
    """What a worker made of one record."""

    frame: np.ndarray | None = None
    """The decoded RGB frame (uint8, H x W x 3, read-only) for a frame record, else None."""
    error: str | None = None
    """Why the record was not used (a BitstreamError message, "worker crashed", ...); None if it was."""
    reason: DecodeFailure | None = None
    """The error as a short label for counters: bad_record (unparsable bytes), wrong_model,
    no_header, no_background, bad_background, decode, internal, worker_crashed, worker_hung (no
    answer within the pool's hang timeout: the worker was killed and restarted as after a crash),
    quarantined or closed."""
    resynced: bool = False
    """The decoder gave up on the current segment and waits for the next one (after a decode
    error); for a segment record without an error: records before it were missing (dropped
    as stale by the sender, or as late here), and decoding resumed at it."""
    adapter_version: int = 0
    """The adapter version decoding the current segment (0: the base model)."""
    fallback_segments: int = 0
    """Segments of the camera's current decoder that fell back to the base model."""
    fallbacks: dict[str, int] = field(default_factory=dict)
    """The current decoder's adapter fallbacks, by reason (`AdapterStore.fallbacks`)."""
    rejections: dict[str, int] = field(default_factory=dict)
    """The current decoder's rejected adapter updates, by reason (`AdapterStore.rejections`)."""
    adapter_snapshot: bytes | None = None
    """For a segment record decoded with an adapter: the adapter as one coded snapshot
    (`AdapterStore.snapshot`), which the archive writes at the start of each file, since the
    adapter store lives in the worker."""
    decode_seconds: float | None = None
    """For a frame record that gave a frame: the seconds the worker spent on it, measured there (the
    pool's round trip would add queueing). None otherwise: frames skipped or refused take no
    decoding and would drag the receiver's decode time histogram down."""
    swap_seconds: float | None = None
    """For a segment record that switched the decoder to another adapter than the previous
    segment's: the seconds the worker took to install its weights (`StreamDecoder.swap_seconds`);
    None otherwise."""


@dataclass
class _Process:
    """One started worker process with the model loaded, and the pool's end of its socket."""

    process: BaseProcess
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    threads: int | None
    """Torch threads the process reported it runs with."""
    model: str


@dataclass
class _Request:
    camera: str
    packed: bytes
    future: asyncio.Future[DecodeResult]
    replay: bool = False
    """Sent to rebuild the camera's decoder in a new process: its answer was given before."""


@dataclass
class _Worker:
    """The pool's side of one worker slot, which outlives the processes that fill it."""

    index: int
    current: _Process | None = None
    up: asyncio.Event = field(default_factory=asyncio.Event)
    """Set while a process is running with the model loaded and the slot's cameras rebuilt."""
    cameras: set[str] = field(default_factory=set)
    pending: dict[int, _Request] = field(default_factory=dict)
    """Requests sent to the current process and not yet answered, by request id (in sending order)."""
    busy_since: float = 0.0
    """When the current process began on its oldest pending request, as far as the pool can tell:
    that request's sending or the previous answer, whichever came later (monotonic). The watchdog
    measures from here, so a backlog of requests answered one after the other never looks hung."""
    restarts: int = 0
    supervisor: asyncio.Task[None] | None = None


@dataclass
class _Camera:
    worker: _Worker
    slots: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(MAX_IN_FLIGHT))
    history: DecoderHistory = field(default_factory=DecoderHistory)
    quarantined: int = 0
    """Times this camera's record was in flight when its worker died or hung."""
    quarantined_until: float = 0.0
    """Monotonic time before which its records go to no worker."""
    last_offence: float = -math.inf
    repeat: int = 0
    """Offences before the latest one without a forgiving quiet period between them."""


class DecodePool:
    """Worker processes that decode the cameras' streams; use from one event loop.

    `await start()`, `assign` each camera, then `await feed(camera, packed)` per record, in the
    camera's order; `await close()` at the end.
    """

    def __init__(self, model_spec: str, device: str, workers: int, *, threads_per_worker: int | None = None,
                 hang_timeout: float = HANG_TIMEOUT_SECONDS, other_models: Sequence[str] = (),
                 memory_limit_bytes: int | None = None, quarantine_seconds: float = QUARANTINE_FIRST_SECONDS) -> None:
        if workers < 1:
            raise ValueError(f"a decode pool needs at least one worker, got {workers}")
        self.model_spec = model_spec
        self.other_models = list(other_models)
        """Models besides `model_spec` that a stream may name (the bundled ones are searched too)."""
        self.device = device
        self.hang_timeout = hang_timeout
        """Seconds a worker may spend on one request before it is killed and replaced."""
        self.memory_limit_bytes = memory_limit_bytes
        """Address space a worker process may take (RLIMIT_AS) on the CPU beyond what it holds with
        the model loaded; None: no limit."""
        self.quarantine_seconds = quarantine_seconds
        """A camera's first quarantine; it doubles with each repeat offence up to QUARANTINE_MAX_SECONDS."""
        self.threads = threads_per_worker or max(1, usable_cores() // workers)
        """Torch threads asked of each process."""
        self._workers = [_Worker(index) for index in range(workers)]
        self._spare: asyncio.Task[_Process] | None = None
        """A process started in advance, which takes the place of the next one to die."""
        self._cameras: dict[str, _Camera] = {}
        self._request_ids = itertools.count(1)
        self._closed = False

    async def start(self) -> None:
        """Start every worker and the spare, and wait until each has loaded the model.

        Raises WorkerStartError (with the worker's own message, e.g. a bad model file) if one
        cannot start; the others are then stopped.
        """
        tasks = [asyncio.create_task(self._start_process(f"decode worker {worker.index}", restarted=False))
                 for worker in self._workers]
        self._spare = asyncio.create_task(self._start_process("the spare decode worker", restarted=True))
        started = await asyncio.gather(*tasks, self._spare, return_exceptions=True)
        failures = [result for result in started if isinstance(result, BaseException)]
        processes = [result for result in started if isinstance(result, _Process)]
        if failures:  # each start ends within START_TIMEOUT_SECONDS: the others are stopped, not abandoned
            self._spare = None
            for process in processes:
                await _end(process)
            await self.close()
            raise failures[0]
        for worker, process in zip(self._workers, processes):  # all started: in the workers' order
            self._install(worker, process)
            worker.up.set()
            worker.supervisor = asyncio.create_task(self._supervise(worker, process))

    def assign(self, camera: str) -> None:
        """Give `camera` a worker: the one with the fewest cameras. A camera keeps its worker."""
        if camera in self._cameras:
            return
        worker = min(self._workers, key=lambda w: (len(w.cameras), w.index))
        worker.cameras.add(camera)
        self._cameras[camera] = _Camera(worker)
        log.info("camera %s: decoded by worker %d", camera, worker.index)

    async def feed(self, camera: str, packed: bytes) -> DecodeResult:
        """Decode one record (`pack_record`'s bytes) of an assigned camera in its worker.

        Records of one camera are decoded in the order of these calls. Beyond MAX_IN_FLIGHT
        unanswered requests of the camera, and while its worker is replaced, this waits. While
        the camera is quarantined (its record was in flight when its worker died or hung), its
        records go to no worker and are answered "quarantined".
        """
        if camera not in self._cameras:
            raise KeyError(f"camera {camera} has no decode worker: assign it first")
        state = self._cameras[camera]
        worker = state.worker
        async with state.slots:
            while not worker.up.is_set():  # being replaced (it may have died again by the time we run)
                await worker.up.wait()
            if self._closed:
                return DecodeResult(error="decode pool closed", reason="closed")
            if time.monotonic() < state.quarantined_until:
                return DecodeResult(error="camera quarantined after its record killed or hung a worker",
                                    reason="quarantined")
            future: asyncio.Future[DecodeResult] = asyncio.get_running_loop().create_future()
            self._send(worker, _Request(camera, packed, future))
            return await future

    def stats(self) -> PoolStats:
        """The workers' state, for metrics and health."""
        return PoolStats(
            workers=tuple(
                WorkerStats(
                    index=worker.index,
                    pid=worker.current.process.pid if worker.current is not None else None,
                    running=worker.up.is_set(),
                    restarts=worker.restarts,
                    threads=worker.current.threads if worker.current is not None else None,
                    cameras=tuple(sorted(worker.cameras)),
                    in_flight=len(worker.pending),
                )
                for worker in self._workers
            ),
            cameras={camera: state.worker.index for camera, state in self._cameras.items()},
            quarantined={camera: state.quarantined for camera, state in self._cameras.items()},
            restarts=sum(worker.restarts for worker in self._workers),
        )

    async def close(self) -> None:
        """Stop the workers (their sockets close, they exit; killed if they do not) and answer
        every waiting request with "decode pool closed"."""
        if self._closed:
            return
        self._closed = True
        supervisors = [worker.supervisor for worker in self._workers if worker.supervisor is not None]
        for task in supervisors:
            task.cancel()
        await asyncio.gather(*supervisors, return_exceptions=True)
        await asyncio.gather(*(self._stop(worker) for worker in self._workers), self._stop_spare())

    def _send(self, worker: _Worker, request: _Request) -> None:
        if not worker.pending:
            worker.busy_since = time.monotonic()
        request_id = next(self._request_ids)
        worker.pending[request_id] = request
        assert worker.current is not None, "sent only while the slot has a process: up and open, or being rebuilt"
        # No drain: what is buffered is bounded by MAX_IN_FLIGHT records per camera and its history.
        worker.current.writer.writelines(message({"id": request_id, "camera": request.camera}, request.packed))

    async def _start_process(self, what: str, restarted: bool) -> _Process:
        """Start a worker process and wait for it to load the model."""
        try:
            ours, theirs = socket.socketpair()
        except OSError as exc:
            raise WorkerStartError(f"{what} could not start: {exc}") from None
        process = SPAWN.Process(
            target=_worker_main, name="adaptcast-decode", daemon=True,
            args=(theirs, self.model_spec, self.other_models, self.device, self.threads, restarted,
                  logging.getLogger().level, self.memory_limit_bytes),
        )
        try:
            process.start()  # a few milliseconds: the child imports torch after this returns
        except OSError as exc:
            ours.close()
            raise WorkerStartError(f"{what} could not start: {exc}") from None
        finally:
            theirs.close()  # the child's copy alone must hold it, so that its death closes the socket
        reader, writer = await asyncio.open_unix_connection(sock=ours, limit=MAX_HEAD_BYTES)
        try:
            head, _ = await asyncio.wait_for(receive(reader), START_TIMEOUT_SECONDS)
            failure = head.get("error")  # the worker's own words, e.g. a bad model file
        except (asyncio.IncompleteReadError, ConnectionError):
            failure = "it exited while loading the model"
        except asyncio.TimeoutError:
            process.kill()
            failure = f"no word from it in {START_TIMEOUT_SECONDS:g} s"
        except (ValueError, TypeError) as exc:
            process.kill()
            failure = f"a malformed message ({exc})"
        except asyncio.CancelledError:  # the pool is closing while this spare starts
            process.kill()
            await asyncio.shield(_end(_Process(process, reader, writer, None, "")))
            raise
        if failure:
            exitcode = await _end(_Process(process, reader, writer, None, ""))
            raise WorkerStartError(f"{what} could not start: {exit_description(failure, exitcode)}")
        return _Process(process, reader, writer, head.get("threads"), str(head.get("model")))

    def _install(self, worker: _Worker, process: _Process) -> None:
        worker.current = process
        log.info("decode worker %d: started (pid %d, threads %s, model %s on %s, restarts %d)", worker.index,
                 process.process.pid, process.threads, process.model, self.device, worker.restarts)

    async def _supervise(self, worker: _Worker, process: _Process) -> None:
        """Serve `worker`'s replies from `process`, its current one; when that dies or hangs, blame the
        camera whose record it was on, put the spare in its place and rebuild the other cameras'
        decoders there."""
        while True:
            pid = process.process.pid
            why, reason = await self._serve(worker, process)
            worker.up.clear()
            pending, worker.pending = list(worker.pending.values()), {}
            exitcode = await _end(process)
            worker.current = None
            culprit = pending[0].camera if pending else None
            cameras = ", ".join(sorted(worker.cameras)) or "none"
            log.warning("decode worker %d (pid %d): %s; its cameras (%s) move to a new process%s", worker.index, pid,
                        exit_description(why, exitcode), cameras, f", camera {culprit} is blamed" if culprit else "")
            if culprit is not None:
                self._blame(culprit, reason)
            error = "worker hung" if reason == "worker_hung" else "worker crashed"
            for request in pending:
                if request.camera == culprit and not request.future.done():
                    request.future.set_result(DecodeResult(error=error, reason=reason))
            process = await self._replacement(worker)
            worker.restarts += 1
            self._install(worker, process)
            # A history being replayed when the process died is replayed afresh, not sent twice.
            self._rebuild(worker, [request for request in pending if request.camera != culprit and not request.replay])
            worker.up.set()

    def _blame(self, camera: str, reason: WorkerFailure) -> None:
        """Quarantine `camera`: its records go to no worker for a time that doubles with each
        offence (from `quarantine_seconds` up to QUARANTINE_MAX_SECONDS), and its decoder
        keeps its stream header alone, so that it resumes at a fresh segment."""
        state = self._cameras[camera]
        now = time.monotonic()
        state.repeat = state.repeat + 1 if now - state.last_offence <= QUARANTINE_FORGIVEN_SECONDS else 0
        seconds = min(QUARANTINE_MAX_SECONDS, self.quarantine_seconds * 2**state.repeat)
        state.quarantined += 1
        state.last_offence = now
        state.quarantined_until = now + seconds
        state.history.forget_since_header()
        log.warning("camera %s: quarantined for %g s (its record %s its decode worker; offence %d)", camera,
                    seconds, "hung" if reason == "worker_hung" else "killed", state.quarantined)

    async def _replacement(self, worker: _Worker) -> _Process:
        """The spare process when it is ready (then another spare starts), else a new one; a
        process that cannot start is tried again after a growing delay."""
        failures = 0
        while True:
            spare, self._spare = self._spare, None
            self._spare = asyncio.create_task(self._start_process("the spare decode worker", restarted=True))
            try:
                if spare is not None:
                    return await spare
                return await self._start_process(f"decode worker {worker.index}", restarted=True)
            except WorkerStartError as exc:
                log.error("%s; trying again", exc)
            failures += 1
            await asyncio.sleep(min(MAX_BACKOFF_SECONDS, FIRST_BACKOFF_SECONDS * 2 ** (failures - 1)))

    def _rebuild(self, worker: _Worker, innocent: list[_Request]) -> None:
        """Bring the new process to where the old one was: each camera's history (its header
        alone for one whose history is incomplete or blamed), then the innocent requests that
        were in flight, in their order. The replies to the history are dropped."""
        loop = asyncio.get_running_loop()
        for camera in sorted(worker.cameras):
            for packed in self._cameras[camera].history.replay():
                self._send(worker, _Request(camera, packed, loop.create_future(), replay=True))
        for request in innocent:
            self._send(worker, request)

    async def _serve(self, worker: _Worker, current: _Process) -> tuple[str, WorkerFailure]:
        """Answer requests with the replies of `current`, the worker's process, until its socket
        closes or it hangs.

        Returns why it stopped, in words for the log and as the reason the culprit's requests get.
        After each quarter of the hang timeout without a reply, the watchdog looks at how long the
        worker has been on its oldest pending request; an idle worker has none and is left alone.
        """
        receiving = asyncio.ensure_future(receive(current.reader))
        try:
            while True:
                done, _ = await asyncio.wait([receiving], timeout=self.hang_timeout / 4)
                if not done:
                    busy = time.monotonic() - worker.busy_since
                    if worker.pending and busy > self.hang_timeout:
                        current.process.kill()
                        return f"hung, no answer in {busy:.1f} s", "worker_hung"
                    continue
                try:
                    head, body = receiving.result()
                    result = _unpack_result(head, body)
                    request = worker.pending.pop(head["id"])
                except (asyncio.IncompleteReadError, ConnectionError):
                    return "its socket closed", "worker_crashed"
                except (ValueError, KeyError, TypeError) as exc:  # a worker gone wrong: replace it
                    current.process.kill()
                    return f"malformed reply ({exc}), killed", "worker_crashed"
                worker.busy_since = time.monotonic()
                if not request.replay:
                    self._cameras[request.camera].history.add(request.packed)
                if not request.future.done():  # its caller may have been cancelled
                    request.future.set_result(result)
                receiving = asyncio.ensure_future(receive(current.reader))
        finally:
            receiving.cancel()

    async def _stop(self, worker: _Worker) -> None:
        pending, worker.pending = worker.pending, {}
        for request in pending.values():
            if not request.future.done():
                request.future.set_result(DecodeResult(error="decode pool closed", reason="closed"))
        worker.up.set()  # wakes the callers waiting for a replacement: they see the pool closed
        if worker.current is not None:
            pid, exitcode = worker.current.process.pid, await _end(worker.current)
            log.info("decode worker %d: stopped (pid %d, exit code %s)", worker.index, pid, exitcode)
        worker.current = None

    async def _stop_spare(self) -> None:
        spare, self._spare = self._spare, None
        if spare is None:
            return
        spare.cancel()
        result = (await asyncio.gather(spare, return_exceptions=True))[0]
        if isinstance(result, _Process):
            await _end(result)


async def _end(process: _Process) -> int | None:
    """Close a process's socket (it reads the end of its input and exits) and reap it."""
    process.writer.close()
    return await _reap(process.process)


async def _reap(process: BaseProcess) -> int | None:
    """Wait for `process` to exit, without blocking the loop; kill it after STOP_GRACE_SECONDS."""
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    while process.is_alive():
        if time.monotonic() >= deadline:
            process.kill()
            deadline = math.inf
        await asyncio.sleep(POLL_SECONDS)
    exitcode = process.exitcode
    process.close()
    return exitcode


def _pack_result(request_id: int, result: DecodeResult) -> list[bytes | memoryview]:
    frame = np.ascontiguousarray(result.frame) if result.frame is not None else None
    snapshot = result.adapter_snapshot
    head = {
        "id": request_id, "error": result.error, "reason": result.reason, "resynced": result.resynced,
        "adapter_version": result.adapter_version, "fallback_segments": result.fallback_segments,
        "fallbacks": result.fallbacks, "rejections": result.rejections,
        "shape": list(frame.shape[:2]) if frame is not None else None,
        "snapshot_bytes": len(snapshot) if snapshot is not None else None,
        "decode_seconds": result.decode_seconds, "swap_seconds": result.swap_seconds,
    }
    body: list[bytes | memoryview] = [frame.reshape(-1).data] if frame is not None else []
    if snapshot is not None:
        body.append(snapshot)
    return message(head, *body)


def _unpack_result(head: dict[str, Any], body: bytes) -> DecodeResult:
    frame_bytes = 0
    frame = None
    if head["shape"] is not None:
        height, width = (int(n) for n in head["shape"])
        frame_bytes = height * width * 3
        frame = np.frombuffer(body, np.uint8, frame_bytes).reshape(height, width, 3)
    snapshot_bytes = head["snapshot_bytes"]
    if frame_bytes + (snapshot_bytes or 0) != len(body):
        raise ValueError(f"a reply of {len(body)} bytes does not hold what its head says")
    return DecodeResult(
        frame=frame, error=head["error"], reason=head["reason"], resynced=bool(head["resynced"]),
        adapter_version=int(head["adapter_version"]), fallback_segments=int(head["fallback_segments"]),
        fallbacks=dict(head["fallbacks"]), rejections=dict(head["rejections"]),
        adapter_snapshot=body[frame_bytes:] if snapshot_bytes is not None else None,
        decode_seconds=_seconds(head["decode_seconds"]), swap_seconds=_seconds(head["swap_seconds"]),
    )


def _seconds(value: Any) -> float | None:
    """A timing from a reply's head: seconds, or null where the record has none."""
    return float(value) if value is not None else None


# The worker process's side.


class _Decoders:
    """A worker's cameras: one StreamDecoder each, created by the camera's stream header."""

    def __init__(self, models: ModelLibrary, device: torch.device, restarted: bool) -> None:
        self.models = models
        self.device = device
        self.decoders: dict[str, StreamDecoder] = {}
        self.no_header = "no stream header since the worker restarted" if restarted else "no stream header yet"

    def feed(self, camera: str, packed: bytes) -> DecodeResult:
        """Decode one record of `camera` as the receiver's session did in-process: after a decode
        error, resync (and feed a failed segment record again, so its segment is not lost)."""
        started = time.perf_counter()
        try:
            record = unpack_packed_record(packed)
        except BitstreamError as exc:  # unknown what was lost: the next record out of order will tell
            return self._result(camera, error=str(exc), reason="bad_record")
        if isinstance(record, StreamHeader):
            self.decoders.pop(camera, None)
            try:
                loaded = self.models.find(record.model_sha256, record.model_name)
                loaded.model.to(self.device)
                self.decoders[camera] = StreamDecoder(record, loaded, self.device)
            except ModelError as exc:
                return self._result(camera, error=str(exc), reason="wrong_model")
            return self._result(camera)
        decoder = self.decoders.get(camera)
        if decoder is None:
            return self._result(camera, error=self.no_header, reason="no_header")
        try:
            frame = decoder.feed(record)
            seconds = time.perf_counter() - started if frame is not None else None
            return self._result(camera, frame=frame, segment=isinstance(record, SegmentStart), decode_seconds=seconds)
        except MissingBackground as exc:  # the decoder already skips the segment; its background must come again
            return self._result(camera, error=str(exc), reason="no_background", resynced=True)
        except BitstreamError as exc:
            if isinstance(record, BackgroundRecord):  # refused and not kept: the backgrounds held before stay
                return self._result(camera, error=str(exc), reason="bad_background")
            decoder.resync()
            error = str(exc)
        except Exception as exc:  # torch or CompressAI failed on bad input: the decoder's state is unknown
            log.exception("camera %s: unexpected error on a %s record", camera, type(record).__name__)
            decoder.resync()
            return self._result(camera, error=f"internal error: {exc!r}", reason="internal", resynced=True)
        if isinstance(record, SegmentStart):  # records were lost before it: resume right here
            try:
                decoder.feed(record)
            except BitstreamError as again:
                return self._result(camera, error=str(again), reason="decode", resynced=True, segment=True)
            return self._result(camera, resynced=True, segment=True)
        return self._result(camera, error=error, reason="decode", resynced=True)

    def _result(self, camera: str, frame: np.ndarray | None = None, error: str | None = None,
                reason: DecodeFailure | None = None, resynced: bool = False, segment: bool = False,
                decode_seconds: float | None = None) -> DecodeResult:
        decoder = self.decoders.get(camera)
        if decoder is None:
            return DecodeResult(frame=frame, error=error, reason=reason, resynced=resynced)
        snapshot = None
        if segment and decoder.adapter_version:
            snapshot = decoder.store.snapshot(decoder.adapter_version)
        return DecodeResult(
            frame=frame, error=error, reason=reason, resynced=resynced, adapter_version=decoder.adapter_version,
            fallback_segments=decoder.fallback_segments, fallbacks=dict(decoder.store.fallbacks.items()),
            rejections=dict(decoder.store.rejections.items()), adapter_snapshot=snapshot,
            decode_seconds=decode_seconds, swap_seconds=decoder.swap_seconds if segment else None,
        )


def _worker_main(sock: socket.socket, model_spec: str, other_models: list[str], device_name: str, threads: int,
                 restarted: bool, log_level: int, memory_limit_bytes: int | None) -> None:
    """A worker process: load the model once, then decode requests in arrival order until the
    pool closes the socket (a worker therefore never outlives the receiver). A stream that names
    another model gets it from the worker's model library, loaded when first named.

    `enter_child` says what the process does first; on the CPU `limit_address_space` bounds it
    by `memory_limit_bytes` once the model is loaded, so that a record that makes torch allocate
    too much is refused as "internal" rather than exhausting the machine.
    """
    enter_child(log_level, threads)
    stream = sock.makefile("rwb")
    try:
        try:
            device = pick_device(device_name)
            loaded = load_model(model_spec)
            loaded.model.to(device)
            limit_address_space(device, memory_limit_bytes)
        except AdaptcastError as exc:
            write_message(stream, message({"error": str(exc)}))
            return
        write_message(stream, message({"model": loaded.info.name, "threads": torch.get_num_threads()}))
        decoders = _Decoders(ModelLibrary(other_models, loaded=[loaded]), device, restarted)
        while (request := read_message(stream)) is not None:
            head, body = request
            write_message(stream, _pack_result(head["id"], decoders.feed(head["camera"], body)))
    except (BrokenPipeError, ConnectionResetError):
        pass  # the pool is gone

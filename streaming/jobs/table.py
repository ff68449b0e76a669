"""A bounded table of prediction jobs keyed by an id, for transports whose clients submit work and come back for
it (gary4juce's poll API, gary4live's Socket.IO events, magenta-retry's `/generate` + `/progress`).

    table = JobTable(engine)                             # one per app; close() it with the server
    job_id = table.submit(work, work_seconds=30.0, input_bytes=len(wav_bytes), owner=sid, job_id=None)
    table.status(job_id) -> JobStatus | None             # state, stage, progress 0..1, queue position, estimate
    await asyncio.wrap_future(table.future(job_id))      # the work's return value, or its exception
    table.cancel(job_id); table.cancel_owner(sid); table.discard(job_id)
    table.outstanding() -> int                           # what a drain waits for (streaming.app.capacity.Drain)

`work(ctx)` is a plain function run on one of the table's own threads (never the event loop, never the sidecar's
blocking pool, which opens sessions). It reaches the engine through `ctx.generate(BatchRequest, span=(a, b))`:
that calls `Engine.generate` (RequestError comes back as the job's error), relays the engine's progress into
[a, b] of the job's progress, and cancels the engine job when the table cancels this one. Between generations it
may report `ctx.stage(name, progress)` (e.g. "decoding", "encoding"); progress never goes down. It returns the
result (bytes, str, a dict of them, or any object with `nbytes`: its size counts against the byte bound); an
exception it raises is the job's error (`str(exc)` is what clients see, so make it say what to change).

Queue: `workers` jobs run at once (default 1), the rest in submission order; a running job's prediction then waits
in the engine's own line for a prediction slot (engine.runtime.admission), its stage WAITING_FOR_SLOT and its
`position` the predictions ahead. A queued job's `position` counts this table's jobs before it (0 = next);
`estimated_seconds` comes from measured throughput (wall seconds per `work_seconds`, averaged over finished jobs;
the running job's own rate; DEFAULT_SECONDS_PER_WORK_SECOND before any).

Bounds (constructor arguments): `max_entries` entries, `max_pending` queued or running, `max_bytes` of inputs plus
results; a finished entry is reaped `keep_seconds` after it finished, or DELIVERED_KEEP_SECONDS after a poll carried
its result (`delivered`); a job unfinished after `max_job_seconds` is cancelled. At a bound finished entries go
oldest first, then `submit` raises TableFull ("try again"); a result over the byte bound fails its job. A reaper
thread enforces the times without any client; `status` of a reaped or unknown id is None. A drain
(streaming.app.capacity.Drain) waits for `outstanding()`: jobs unfinished, or finished under `pickup_seconds` ago
with a result no poll carried.

Every method is thread-safe and returns at once (a short lock), so an event loop may call them directly. A
future ends with the work's own exception, JobCancelled (cancelled, timed out, table closed) or JobFailed (its
result did not fit). States, JobStatus and the errors live in streaming.jobs.state; import them from here.
"""

import contextlib
import itertools
import logging
import secrets
import threading
import time
import typing as tp
from concurrent.futures import Future, InvalidStateError

from engine.api import BatchRequest, BatchResult, GenerationCancelled
from streaming.jobs.state import (
    CANCELLED,
    COMPLETED,
    FAILED,
    FINISHED,
    MAX_BYTES,
    QUEUED,
    RUNNING,
    WAITING_FOR_SLOT,
    Entry,
    InputTooLarge,
    JobCancelled,
    JobFailed,
    JobStatus,
    TableFull,
    result_size,
)

__all__ = ["CANCELLED", "COMPLETED", "FAILED", "FINISHED", "QUEUED", "RUNNING", "InputTooLarge", "JobCancelled",
           "JobContext", "JobFailed", "JobStatus", "JobTable", "TableFull", "WAITING_FOR_SLOT", "result_size"]
logger = logging.getLogger(__name__)

MAX_ENTRIES = 64
MAX_PENDING = 16
KEEP_SECONDS = 600.0
DELIVERED_KEEP_SECONDS = 30.0
MAX_JOB_SECONDS = 900.0
MAX_ID_CHARS = 128
DEFAULT_SECONDS_PER_WORK_SECOND = 1.0
REAP_INTERVAL_SECONDS = 1.0
PICKUP_SECONDS = 10.0  # a drain's wait for a finished job's next poll (the Darius tab polls every 250 ms)


class JobTable:
    def __init__(self, engine, workers: int = 1, max_entries: int = MAX_ENTRIES, max_pending: int = MAX_PENDING,
                 max_bytes: int = MAX_BYTES, keep_seconds: float = KEEP_SECONDS,
                 max_job_seconds: float = MAX_JOB_SECONDS, pickup_seconds: float = PICKUP_SECONDS,
                 clock: tp.Callable[[], float] = time.monotonic) -> None:
        self.engine = engine
        self.max_entries, self.max_pending, self.max_bytes = max_entries, max_pending, max_bytes
        self.keep_seconds, self.max_job_seconds, self.pickup_seconds = keep_seconds, max_job_seconds, pickup_seconds
        self.workers = workers
        self._clock = clock
        self._lock = threading.Condition()
        self._entries: dict[str, Entry] = {}  # in submission order
        self._queue: list[Entry] = []
        self._seconds_per_work: tp.Optional[float] = None  # measured: an exponential average over finished jobs
        self._closed = threading.Event()
        self._counter = itertools.count()
        self._threads = [threading.Thread(target=self._run_worker, name=f"jobs-{i}", daemon=True)
                         for i in range(workers)]
        self._threads.append(threading.Thread(target=self._run_reaper, name="jobs-reaper", daemon=True))
        for thread in self._threads:
            thread.start()

    # -- the public API ----------------------------------------------------------------------------------------
    def submit(self, work: tp.Callable[["JobContext"], tp.Any], *, work_seconds: float, input_bytes: int = 0,
               owner: tp.Optional[str] = None, job_id: tp.Optional[str] = None) -> str:
        """Queues `work`; returns its id (`job_id` when given: ValueError if it is taken or too long; else a new
        unguessable one). Raises TableFull when a bound leaves no room now, ValueError when the input alone is over the
        byte bound (InputTooLarge), RuntimeError once closed."""
        if job_id is not None and (not job_id or len(job_id) > MAX_ID_CHARS):
            raise ValueError(f"job id must be 1..{MAX_ID_CHARS} characters")
        with self._lock:
            if self._closed.is_set():
                raise RuntimeError("the job table is closed")
            if job_id is not None and job_id in self._entries:
                raise ValueError(f"job id {job_id!r} is already in use")
            if input_bytes > self.max_bytes:
                raise InputTooLarge(f"the input takes {input_bytes / 2**20:.0f} MiB as samples, more than the "
                                 f"{self.max_bytes // 2**20} MiB this server holds for jobs (JAM_JOB_BYTES): send "
                                 "shorter audio")
            self._reap_locked(self._clock())
            pending = sum(1 for e in self._entries.values() if e.state not in FINISHED)
            if pending >= self.max_pending:
                raise TableFull(f"server busy: {pending} jobs are queued or running (the limit is "
                                f"{self.max_pending}); try again when one has finished")
            self._make_room_locked(extra_entries=1, extra_bytes=input_bytes)
            if len(self._entries) >= self.max_entries:
                raise TableFull(f"server busy: {self.max_entries} jobs are held; try again later")
            if self._held_bytes_locked() + input_bytes > self.max_bytes:
                raise TableFull(f"server busy: jobs hold {self._held_bytes_locked() // 2**20} MiB (the limit is "
                                f"{self.max_bytes // 2**20} MiB); try again when one has finished")
            job_id = job_id or f"{secrets.token_urlsafe(12)}{next(self._counter)}"
            entry = Entry(job_id, owner, work, work_seconds, input_bytes, self._clock())
            self._entries[job_id] = entry
            self._queue.append(entry)
            self._lock.notify_all()
        return job_id

    def status(self, job_id: str) -> tp.Optional[JobStatus]:
        with self._lock:
            entry = self._entries.get(job_id)
            if entry is None:
                return None
            return self._snapshot_locked(entry)

    def future(self, job_id: str) -> tp.Optional[Future]:
        """Resolves with the work's result, or its exception (JobCancelled when cancelled); None for unknown ids."""
        with self._lock:
            entry = self._entries.get(job_id)
            return None if entry is None else entry.future

    def cancel(self, job_id: str, reason: str = "cancelled") -> bool:
        with self._lock:
            entry = self._entries.get(job_id)
            if entry is None or entry.state in FINISHED:
                return False
            self._cancel_locked(entry, reason)
            return True

    def cancel_owner(self, owner: str, reason: str = "the client left") -> int:
        """Cancels every unfinished job of `owner` (a socket that closed); returns how many."""
        with self._lock:
            entries = [e for e in self._entries.values() if e.owner == owner and e.state not in FINISHED]
            for entry in entries:
                self._cancel_locked(entry, reason)
            return len(entries)

    def delivered(self, job_id: str) -> None:
        """A finished entry's result reached its client: it is kept DELIVERED_KEEP_SECONDS more, not keep_seconds."""
        with self._lock:
            entry = self._entries.get(job_id)
            if entry is not None and entry.state in FINISHED and entry.delivered is None:
                entry.delivered = self._clock()

    def discard(self, job_id: str) -> None:
        """Forgets an entry (cancelling it if unfinished): its result was delivered and will not be asked again."""
        with self._lock:
            entry = self._entries.get(job_id)
            if entry is None:
                return
            if entry.state not in FINISHED:
                self._cancel_locked(entry, "discarded")
            self._entries.pop(job_id, None)

    def counts(self) -> dict:
        with self._lock:
            states = [e.state for e in self._entries.values()]
            return {"entries": len(states), "queued": states.count(QUEUED), "running": states.count(RUNNING),
                    "bytes": self._held_bytes_locked()}

    def outstanding(self) -> int:
        """Jobs queued or running, and those finished less than `pickup_seconds` ago whose result no poll has
        carried yet (`delivered`): what a replica's drain waits for before it stops serving."""
        now = self._clock()
        with self._lock:
            return sum(1 for e in self._entries.values() if e.state not in FINISHED
                       or (e.delivered is None and e.finished is not None and now - e.finished < self.pickup_seconds))

    def close(self) -> None:
        """Cancels every unfinished job (their futures resolve) and stops the threads."""
        with self._lock:
            self._closed.set()
            for entry in list(self._entries.values()):
                if entry.state not in FINISHED:
                    self._cancel_locked(entry, "the server is shutting down")
            self._lock.notify_all()
        for thread in self._threads:
            thread.join(timeout=5)

    # -- inside ------------------------------------------------------------------------------------------------
    def _snapshot_locked(self, entry: Entry) -> JobStatus:
        position = self._queue.index(entry) if entry.state == QUEUED and entry in self._queue else entry.slot_ahead
        return JobStatus(job_id=entry.job_id, owner=entry.owner, state=entry.state, stage=entry.stage,
                         progress=entry.progress, position=position,
                         estimated_seconds=None if entry.state in FINISHED else self._estimate_locked(entry),
                         error=entry.error, result=entry.result if entry.state == COMPLETED else None,
                         submitted=entry.submitted, finished=entry.finished)

    def _rate_locked(self, running: tp.Optional[Entry] = None) -> float:
        """Wall seconds per work second: the running job's own rate once it has made progress, else measured."""
        if running is not None and running.started is not None and running.progress > 0.05:
            elapsed = self._clock() - running.started
            return elapsed / (running.progress * running.work_seconds)
        return self._seconds_per_work or DEFAULT_SECONDS_PER_WORK_SECOND

    def _estimate_locked(self, entry: Entry) -> float:
        running = [e for e in self._entries.values() if e.state == RUNNING]
        if entry.state == RUNNING:
            return max(0.0, (1 - entry.progress) * entry.work_seconds * self._rate_locked(entry))
        rate = self._rate_locked()
        ahead = sum((1 - e.progress) * e.work_seconds * self._rate_locked(e) for e in running)
        index = self._queue.index(entry) if entry in self._queue else 0
        ahead += sum(e.work_seconds for e in self._queue[:index]) * rate
        # `workers` run side by side; this job runs alone once its turn comes
        return ahead / max(self.workers, 1) + entry.work_seconds * rate

    def _held_bytes_locked(self) -> int:
        return sum(e.held_bytes for e in self._entries.values())

    def _make_room_locked(self, extra_entries: int, extra_bytes: int) -> None:
        """Reaps finished entries, oldest first, until the new one fits (or none is left to reap)."""
        for entry in list(self._entries.values()):
            fits = (len(self._entries) + extra_entries <= self.max_entries
                    and self._held_bytes_locked() + extra_bytes <= self.max_bytes)
            if fits:
                return
            if entry.state in FINISHED:
                self._entries.pop(entry.job_id, None)

    def _reap_locked(self, now: float) -> None:
        for entry in list(self._entries.values()):
            if entry.state in FINISHED and (now - entry.finished > self.keep_seconds or (
                    entry.delivered is not None and now - entry.delivered > DELIVERED_KEEP_SECONDS)):
                self._entries.pop(entry.job_id, None)
            elif (entry.state not in FINISHED and not entry.cancelled.is_set()
                  and now - entry.submitted > self.max_job_seconds):
                self._cancel_locked(entry, f"timed out: not finished within {self.max_job_seconds:.0f} s")

    def _cancel_locked(self, entry: Entry, reason: str) -> None:
        entry.cancel_reason = reason
        entry.cancelled.set()
        if entry.state == QUEUED:
            if entry in self._queue:
                self._queue.remove(entry)
            self._finish_locked(entry, CANCELLED, error=reason)
        else:
            with entry.lock:
                engine_job = entry.engine_job
            if engine_job is not None:
                engine_job.cancel()  # the worker then finishes the entry as cancelled

    def _finish_locked(self, entry: Entry, state: str, result: tp.Any = None, error: tp.Optional[str] = None,
                       exc: tp.Optional[BaseException] = None) -> None:
        if entry.state in FINISHED:
            return
        entry.state, entry.stage, entry.finished = state, state, self._clock()
        entry.error, entry.work, entry.input_bytes = error, None, 0  # the input goes with the work
        if state == COMPLETED:
            entry.result, entry.result_bytes, entry.progress = result, result_size(result), 1.0
            if entry.started is not None:
                rate = (entry.finished - entry.started) / entry.work_seconds
                previous = self._seconds_per_work
                self._seconds_per_work = rate if previous is None else 0.7 * previous + 0.3 * rate
        with contextlib.suppress(InvalidStateError):
            if state == COMPLETED:
                entry.future.set_result(result)
            else:
                fallback = JobCancelled(error) if state == CANCELLED else JobFailed(error)
                entry.future.set_exception(exc if exc is not None else fallback)
        self._lock.notify_all()

    def report(self, entry: Entry, stage: tp.Optional[str] = None, progress: tp.Optional[float] = None,
               slot_ahead: tp.Optional[int] = None) -> None:
        """A running job's stage and progress (from its JobContext); progress never goes down. `slot_ahead`: with
        stage WAITING_FOR_SLOT, the predictions ahead of it in the engine's line."""
        with self._lock:
            if entry.state != RUNNING:
                return
            if stage is not None:
                entry.stage = stage
                entry.slot_ahead = slot_ahead if stage == WAITING_FOR_SLOT else None
            if progress is not None:
                entry.progress = max(entry.progress, min(float(progress), 0.999))

    def _next_locked(self) -> tp.Optional[Entry]:
        while not self._queue and not self._closed.is_set():
            self._lock.wait()
        if self._closed.is_set():
            return None
        entry = self._queue.pop(0)
        entry.state, entry.stage, entry.started = RUNNING, "starting", self._clock()
        return entry

    def _run_worker(self) -> None:
        while True:
            with self._lock:
                entry = self._next_locked()
            if entry is None:
                return
            try:
                result = entry.work(JobContext(self, entry))
            except JobCancelled as exc:
                with self._lock:
                    self._finish_locked(entry, CANCELLED, error=str(exc) or entry.cancel_reason, exc=exc)
            except Exception as exc:  # the work's error is the job's; the worker goes on
                if not isinstance(exc, ValueError):
                    logger.exception("job %s failed", entry.job_id)
                with self._lock:
                    if entry.cancelled.is_set():
                        self._finish_locked(entry, CANCELLED, error=entry.cancel_reason)
                    else:
                        self._finish_locked(entry, FAILED, error=str(exc) or type(exc).__name__, exc=exc)
            else:
                with self._lock:
                    if entry.cancelled.is_set():
                        self._finish_locked(entry, CANCELLED, error=entry.cancel_reason)
                    else:
                        self._store_locked(entry, result)

    def _store_locked(self, entry: Entry, result: tp.Any) -> None:
        size = result_size(result)
        entry.input_bytes = 0  # the input is spent; the result takes its place
        self._make_room_locked(extra_entries=0, extra_bytes=size)
        if size > self.max_bytes or self._held_bytes_locked() + size > self.max_bytes:
            self._finish_locked(entry, FAILED, error=f"the result ({size // 2**20} MiB) does not fit in the "
                                                     f"{self.max_bytes // 2**20} MiB the server holds for jobs")
        else:
            self._finish_locked(entry, COMPLETED, result=result)

    def _run_reaper(self) -> None:
        while not self._closed.wait(REAP_INTERVAL_SECONDS):
            with self._lock:
                self._reap_locked(self._clock())


class JobContext:
    """What a job's work sees: its id, its cancel flag, its progress and stages, and one way to the engine's
    predictions that relays their progress, their place in the engine's line and their cancellation."""

    def __init__(self, table: JobTable, entry: Entry) -> None:
        self._table, self._entry = table, entry
        self.job_id = entry.job_id
        self.cancelled = entry.cancelled

    def stage(self, name: str, progress: tp.Optional[float] = None) -> None:
        self._table.report(self._entry, stage=name, progress=progress)

    def progress(self, fraction: float) -> None:
        self._table.report(self._entry, progress=fraction)

    def check(self) -> None:
        """Raises JobCancelled once the job is cancelled: call it between steps of long work."""
        if self.cancelled.is_set():
            raise JobCancelled(self._entry.cancel_reason)

    def generate(self, request: BatchRequest, span: tuple[float, float] = (0.0, 1.0),
                 stage: str = "generating") -> BatchResult:
        """One prediction on the engine; its progress maps onto [span[0], span[1]] of the job's. While the engine
        holds it in its line for a prediction slot, the job's stage says so, with the predictions ahead."""
        self.check()
        low, high = span
        job = self._table.engine.generate(request)
        with self._entry.lock:
            self._entry.engine_job = job
        if self.cancelled.is_set():  # cancelled between the check and the engine taking it
            job.cancel()

        def queued(position: tp.Optional[int]) -> None:
            if position is None:
                self.stage(stage, low)
            else:
                self._table.report(self._entry, stage=WAITING_FOR_SLOT, slot_ahead=position - 1)

        try:
            return job.wait(on_progress=lambda done, total: self.progress(low + (high - low) * done / max(total, 1)),
                            poll_seconds=0.1, on_queue=queued)
        except GenerationCancelled:
            raise JobCancelled(self._entry.cancel_reason) from None
        finally:
            with self._entry.lock:
                self._entry.engine_job = None

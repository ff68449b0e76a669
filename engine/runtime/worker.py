"""A thread that owns part of the model and runs submitted jobs in order, guarded so that it cannot die.

The engine has two: the LM thread (jobs plus, between jobs, batched decode steps of all live streams) and the
codec thread (audio encode, streaming decode, MultiBand Diffusion), so a long decode never holds up a decode step.
On CUDA the codec thread also has its own CUDA stream, so its kernels overlap the LM's steps instead of queueing
behind them on the default stream (see `Worker.call` for the hand-offs).
Every future handed out resolves: with the job's result or error, or with `EngineUnavailable` when the worker is
closed or unhealthy.

Jobs run earliest deadline first (engine.runtime.deadlines): URGENT jobs with a `due` time (a realtime chunk's decode)
by that time, then URGENT ones without (a session's melody analysis), NORMAL ones (control: a request, an update,
adding a stream) in arrival order, BACKGROUND ones last (batch pieces, no deadline) in arrival order. A BACKGROUND
job starts only when the deadlines admit its kind of piece (`label`): its cost fits in every realtime stream's slack;
until then the worker runs other work or waits, and its own background work (the LM thread's decode steps) is gated
the same way by the scheduler.
"""

import contextlib
import functools
import heapq
import itertools
import logging
import threading
import time
import typing as tp
from concurrent.futures import Future

import torch

from engine.runtime.deadlines import Deadlines

logger = logging.getLogger(__name__)

T = tp.TypeVar("T")

URGENT, NORMAL, BACKGROUND = 0, 1, 2  # job priorities: live sessions, control, batch pieces (see the docstring)
_DUE, _URGENT, _NORMAL, _BACKGROUND, _CLOSE = range(5)  # the order of the queue: its first key
HOLD_POLL_SECONDS = 0.02  # a worker holding batch work looks again this often (and whenever a deadline moves)


class EngineUnavailable(RuntimeError):
    """The engine cannot take work (closed, or a thread is stuck); the message says which."""


class Background(tp.Protocol):
    """Work a worker does between jobs, one bounded piece at a time."""

    def pending(self) -> bool:
        """Whether a piece may run now."""

    def held(self) -> bool:
        """Whether a piece waits for the deadlines to admit it (the worker then looks again soon)."""

    def run_once(self) -> None: ...


def resolve(future: Future, fn: tp.Callable[[], T]) -> None:
    """Runs `fn` into `future`, unless the future was cancelled or already resolved."""
    if future.done() or not future.set_running_or_notify_cancel():
        return
    try:
        result = fn()
    except BaseException as exc:  # the caller gets every failure; the thread lives on
        future.set_exception(exc)
    else:
        future.set_result(result)


def run_in_pieces(worker: "Worker", pieces: tp.Generator[tp.Optional[str], None, T], priority: int = BACKGROUND,
                  abandoned: tp.Callable[[], bool] = lambda: False, label: str = "pieces") -> "Future[T]":
    """Runs a generator on `worker` one `next()` per job, so that work queued meanwhile (a live session's decode)
    goes between its pieces; the future carries the generator's return value or its error. Once `abandoned()`
    is true the remaining pieces are dropped and the future is cancelled. `label`: the kind of the first piece
    (whose cost the deadlines estimate for a BACKGROUND one); a generator that yields a string names the kind of
    the piece after it, else the kind stays."""
    future: Future[T] = Future()
    caller = torch.cuda.current_stream() if worker.stream is not None else None
    kind = [label]

    def piece() -> None:
        if abandoned():
            future.cancel()
            return
        try:
            following = next(pieces)
        except StopIteration as finished:  # handed over complete, as a job's result (_on_stream)
            future.set_result(_handed_over(worker.stream, caller, finished.value))
        except BaseException as exc:  # the caller gets every failure
            future.set_exception(exc)
        else:
            kind[0] = following if isinstance(following, str) else kind[0]
            worker.call(piece, priority, label=kind[0]).add_done_callback(lost)

    def lost(queued: Future) -> None:  # the worker refused or dropped a piece (closed, unhealthy)
        if queued.exception() is not None and not future.done():
            future.set_exception(queued.exception())

    worker.call(piece, priority, label=label).add_done_callback(lost)
    return future


def _on_stream(worker: "Worker", fn: tp.Callable[[], T]) -> tp.Callable[[], T]:
    """`fn` run on the worker's own CUDA stream, with events at both hand-offs:
    - in: an event recorded now on the caller's current stream, which the worker's stream waits for, so the job
      sees every tensor the caller queued work on before handing it over (an LM step's tokens);
    - out: the worker's stream is synchronized before the result is handed back (this thread waits, no other), and
      CUDA tensors in it are marked as used on the caller's stream, so their memory is not reused by the worker's
      stream while the caller's kernels still read them (a melody's chroma prefix, a prompt's tokens).
    Where the worker's stream was set to None meanwhile, `fn` runs on the thread's current stream as before."""
    ready = torch.cuda.Event()
    ready.record()
    caller = torch.cuda.current_stream()

    @functools.wraps(fn)
    def run() -> T:
        stream = worker.stream
        if stream is None:
            return fn()
        stream.wait_event(ready)
        with torch.cuda.stream(stream):
            result = fn()
        return _handed_over(stream, caller, result)

    return run


def _handed_over(stream: tp.Optional["torch.cuda.Stream"], caller: tp.Optional["torch.cuda.Stream"], result: T) -> T:
    """`result` of work queued on `stream`, made safe to hand to a thread on `caller`: complete, and its CUDA
    tensors (the result, or those of a tuple/list) kept from reuse by `stream` while `caller` still reads them."""
    if stream is None:
        return result
    stream.synchronize()
    for tensor in result if isinstance(result, (tuple, list)) else (result,):
        if isinstance(tensor, torch.Tensor) and tensor.is_cuda and caller is not None:
            tensor.record_stream(caller)
    return result


class Worker:
    def __init__(self, name: str, background: tp.Optional[Background] = None, stall_seconds: float = 120.0,
                 threads: tp.Optional[int] = None, stream: tp.Optional["torch.cuda.Stream"] = None,
                 deadlines: tp.Optional[Deadlines] = None) -> None:
        """`threads` sets this thread's intra-op threads (torch's setting is per thread), so that a helper thread
        does not crowd the cores the LM thread needs. `stream`: a CUDA stream this worker's jobs run on (None: the
        thread's current stream, the default one). `deadlines`: the realtime streams' deadlines that admit its
        BACKGROUND jobs (None: they run as they come)."""
        self.name = name
        self.stream = stream
        self.background = background
        self.stall_seconds = stall_seconds
        self.threads = threads
        self.deadlines = deadlines
        # the longest job or background piece since the last reset_longest(): (seconds, what it was), so the job
        # bound (engine.config.JOB_BOUND_SECONDS) can be checked on a running engine
        self.longest_job: tuple[float, str] = (0.0, "")
        # (rank, key, arrival, job): see the module's docstring; job None closes
        self._jobs: list[tuple[int, float, int, tp.Any]] = []
        self._arrivals = itertools.count()
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)  # a job came, or a deadline moved
        self._running = threading.Lock()  # held while a job runs (see paused)
        self._closed = False
        self._busy_since: tp.Optional[float] = None
        if deadlines is not None:
            deadlines.on_change(self._wake)
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # -- any thread ---------------------------------------------------------------------------------------------
    def call(self, fn: tp.Callable[[], T], priority: int = NORMAL, due: tp.Optional[float] = None,
             label: tp.Optional[str] = None) -> "Future[T]":
        """Runs `fn` on this worker's thread; the future carries its result or exception. `due` (URGENT only): the
        time.monotonic() by which it must be done, which orders it among the other due jobs; `label`: the kind of
        piece a BACKGROUND job is, whose cost the deadlines estimate (default: the function's name)."""
        future: Future[T] = Future()
        if self.stream is not None:
            fn = _on_stream(self, fn)
        if priority == URGENT:
            rank, key = (_URGENT, 0.0) if due is None else (_DUE, due)
        else:
            rank, key = (_NORMAL if priority == NORMAL else _BACKGROUND), 0.0
        label = label or getattr(fn, "__qualname__", "job")
        with self._lock:
            problem = self.problem
            if problem is None:
                heapq.heappush(self._jobs, (rank, key, next(self._arrivals), (future, fn, label, rank)))
                self._changed.notify()
                return future
        future.set_exception(EngineUnavailable(problem))
        return future

    @property
    def problem(self) -> tp.Optional[str]:
        """None when healthy, else why new work is refused."""
        if self._closed:
            return f"the {self.name} thread is shut down"
        if not self._thread.is_alive():
            return f"the {self.name} thread has stopped"
        busy_since = self._busy_since
        if busy_since is not None and time.monotonic() - busy_since > self.stall_seconds:
            return f"the {self.name} thread has been busy with one task for {time.monotonic() - busy_since:.0f} s"
        return None

    def close(self, timeout: float = 30) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            heapq.heappush(self._jobs, (_CLOSE, 0.0, next(self._arrivals), None))
            self._changed.notify()
        self._thread.join(timeout=timeout)

    @contextlib.contextmanager
    def paused(self) -> tp.Iterator[None]:
        """No job of this worker runs inside the block (one already running finishes first). For work another
        thread must do with the GPU to itself: capturing a CUDA graph in the global capture mode fails when another
        thread allocates or synchronizes meanwhile, as the codec thread does. Never call it on this worker's own
        thread."""
        with self._running:
            yield

    def reset_longest(self) -> tuple[float, str]:
        """Returns the longest job so far and starts counting again."""
        longest, self.longest_job = self.longest_job, (0.0, "")
        return longest

    def _wake(self) -> None:
        with self._lock:
            self._changed.notify()

    # -- the thread ---------------------------------------------------------------------------------------------
    def _run(self) -> None:
        torch.set_grad_enabled(False)
        if self.threads is not None:
            torch.set_num_threads(self.threads)
        while True:
            try:
                if self._serve_one():
                    break
            except BaseException:  # the guard: log and keep serving
                logger.exception("%s thread: unexpected failure (the thread goes on)", self.name)
            finally:
                self._busy_since = None
        self._drain()

    def _admitted(self, label: str) -> bool:
        """Whether a batch piece may start now (a closing worker runs what was queued before the close)."""
        return self.deadlines is None or self._closed or self.deadlines.admits(self.name, label)

    def _next_job(self) -> tp.Union[None, bool, tuple]:
        """The job to run now (None: closed; False: background work instead), waiting until there is one."""
        with self._lock:
            while True:
                held = False
                if self._jobs:
                    rank, _, _, job = self._jobs[0]
                    if rank == _CLOSE:
                        return None
                    if rank != _BACKGROUND or self._admitted(job[2]):
                        return heapq.heappop(self._jobs)[3]
                    held = True  # the first job is batch work the deadlines hold: the background may run
                if self.background is not None and self.background.pending():
                    return False
                held = held or (self.background is not None and self.background.held())
                self._changed.wait(HOLD_POLL_SECONDS if held else None)

    def _serve_one(self) -> bool:
        """One job, or one piece of background work; True when the worker was closed."""
        job = self._next_job()
        if job is None:
            return True
        with self._running:  # held by paused() meanwhile: the job waits, and is not counted busy while it does
            self._busy_since = started = time.monotonic()
            if job:
                resolve(*job[:2])
            else:
                self.background.run_once()
        elapsed = time.monotonic() - started
        if job and job[3] == _BACKGROUND and self.deadlines is not None:
            self.deadlines.observe(self.name, job[2], elapsed)
        if elapsed > self.longest_job[0]:
            work = job[1] if job else self.background.run_once
            self.longest_job = (elapsed, getattr(work, "__qualname__", repr(work)))
        return False

    def _drain(self) -> None:
        """Jobs queued before the close was seen: each future still gets an answer."""
        with self._lock:
            jobs, self._jobs = self._jobs, []
        for _, _, _, job in jobs:
            if job is not None and not job[0].done():
                job[0].set_exception(EngineUnavailable(f"the {self.name} thread is shut down"))

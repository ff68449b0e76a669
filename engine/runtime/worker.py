"""A thread that owns part of the model and runs submitted jobs in order, guarded so that it cannot die.

The engine has two: the LM thread (jobs plus, between jobs, batched decode steps of all live streams) and the
codec thread (audio encode, streaming decode, MultiBand Diffusion), so a long decode never holds up a decode step.
On CUDA the codec thread also has its own CUDA stream, so its kernels overlap the LM's steps instead of queueing
behind them on the default stream (see `Worker.call` for the hand-offs).
Every future handed out resolves: with the job's result or error, or with `EngineUnavailable` when the worker is
closed or unhealthy.
"""

import contextlib
import functools
import itertools
import logging
import queue
import threading
import time
import typing as tp
from concurrent.futures import Future

import torch

logger = logging.getLogger(__name__)

T = tp.TypeVar("T")

URGENT, NORMAL, BACKGROUND = 0, 1, 2  # job priorities: live sessions, everything else, prediction decode pieces
_CLOSE = 3


class EngineUnavailable(RuntimeError):
    """The engine cannot take work (closed, or a thread is stuck); the message says which."""


class Background(tp.Protocol):
    """Work a worker does between jobs, one bounded piece at a time."""

    def pending(self) -> bool: ...

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


def run_in_pieces(worker: "Worker", pieces: tp.Generator[None, None, T], priority: int = BACKGROUND,
                  abandoned: tp.Callable[[], bool] = lambda: False) -> "Future[T]":
    """Runs a generator on `worker` one `next()` per job, so that work queued meanwhile (a live session's decode)
    goes between its pieces; the future carries the generator's return value or its error. Once `abandoned()`
    is true the remaining pieces are dropped and the future is cancelled."""
    future: Future[T] = Future()
    caller = torch.cuda.current_stream() if worker.stream is not None else None

    def piece() -> None:
        if abandoned():
            future.cancel()
            return
        try:
            next(pieces)
        except StopIteration as finished:  # handed over complete, as a job's result (_on_stream)
            future.set_result(_handed_over(worker.stream, caller, finished.value))
        except BaseException as exc:  # the caller gets every failure
            future.set_exception(exc)
        else:
            worker.call(piece, priority).add_done_callback(lost)

    def lost(queued: Future) -> None:  # the worker refused or dropped a piece (closed, unhealthy)
        if queued.exception() is not None and not future.done():
            future.set_exception(queued.exception())

    worker.call(piece, priority).add_done_callback(lost)
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
                 threads: tp.Optional[int] = None, stream: tp.Optional["torch.cuda.Stream"] = None) -> None:
        """`threads` sets this thread's intra-op threads (torch's setting is per thread), so that a helper thread
        does not crowd the cores the LM thread needs. `stream`: a CUDA stream this worker's jobs run on (None: the
        thread's current stream, the default one)."""
        self.name = name
        self.stream = stream
        self.background = background
        self.stall_seconds = stall_seconds
        self.threads = threads
        # the longest job or background piece since the last reset_longest(): (seconds, what it was), so the job
        # bound (engine.config.JOB_BOUND_SECONDS) can be checked on a running engine
        self.longest_job: tuple[float, str] = (0.0, "")
        # (priority, arrival, job): urgent work first, then in arrival order; None closes
        self._jobs: queue.PriorityQueue = queue.PriorityQueue()
        self._arrivals = itertools.count()
        self._lock = threading.Lock()
        self._running = threading.Lock()  # held while a job runs (see paused)
        self._closed = False
        self._busy_since: tp.Optional[float] = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # -- any thread ---------------------------------------------------------------------------------------------
    def call(self, fn: tp.Callable[[], T], priority: int = NORMAL) -> "Future[T]":
        """Runs `fn` on this worker's thread; the future carries its result or exception."""
        future: Future[T] = Future()
        if self.stream is not None:
            fn = _on_stream(self, fn)
        with self._lock:
            problem = self.problem
            if problem is None:
                self._jobs.put((priority, next(self._arrivals), (future, fn)))
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
            self._jobs.put((_CLOSE, next(self._arrivals), None))
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

    def _serve_one(self) -> bool:
        """One job, or one piece of background work; True when the worker was closed."""
        busy = self.background is not None and self.background.pending()
        try:
            job = (self._jobs.get_nowait() if busy else self._jobs.get())[2]
        except queue.Empty:
            job = False
        if job is None:
            return True
        with self._running:  # held by paused() meanwhile: the job waits, and is not counted busy while it does
            self._busy_since = started = time.monotonic()
            if job:
                resolve(*job)
            else:
                self.background.run_once()
        elapsed = time.monotonic() - started
        if elapsed > self.longest_job[0]:
            work = job[1] if job else self.background.run_once
            self.longest_job = (elapsed, getattr(work, "__qualname__", repr(work)))
        return False

    def _drain(self) -> None:
        """Jobs queued before the close was seen: each future still gets an answer."""
        while True:
            try:
                job = self._jobs.get_nowait()[2]
            except queue.Empty:
                return
            if job is not None and not job[0].done():
                job[0].set_exception(EngineUnavailable(f"the {self.name} thread is shut down"))

"""The engine: the loaded model plus the one thread that runs all work on it."""

import logging
import queue
import threading
import typing as tp
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path

from engine import batch
from engine.model import LoadedModel, load_model
from engine.worker import ModelThread

logger = logging.getLogger(__name__)


class BatchJob:
    """A submitted prediction: wait for it (relaying progress to the caller's thread) or cancel it."""

    def __init__(self, prepared: batch.PreparedBatch) -> None:
        self.prepared = prepared
        self.cancelled = threading.Event()
        self.progress: queue.SimpleQueue[tuple[int, int]] = queue.SimpleQueue()
        self.future: Future[batch.BatchResult] = Future()

    def cancel(self) -> None:
        self.cancelled.set()
        self.future.cancel()  # succeeds only while still queued; a running job stops at its next step

    def wait(self, on_progress: tp.Callable[[int, int], None] = lambda done, total: None,
             poll_seconds: float = 0.25) -> batch.BatchResult:
        """Blocks in short slices so that the waiting thread stays interruptible (Cog cancels by exception)."""
        while True:
            try:
                result = self.future.result(timeout=poll_seconds)
            except FutureTimeout:
                result = None
            last = None
            while not self.progress.empty():
                last = self.progress.get_nowait()
            if last is not None:
                on_progress(*last)
            if result is not None:
                return result


class Engine:
    """Owns the model. Callers submit work; only the engine thread touches the model."""

    def __init__(self, model: LoadedModel) -> None:
        self.model = model
        self._thread = ModelThread("engine")

    @classmethod
    def load(cls, source: tp.Union[str, Path, None] = None, device: tp.Optional[str] = None) -> "Engine":
        return cls(load_model(source, device))

    def submit_batch(self, request: batch.BatchRequest) -> BatchJob:
        """Validates and decodes on the caller's thread (RequestError), then queues the model work."""
        job = BatchJob(batch.prepare(request, self.model))

        def run() -> batch.BatchResult:
            return batch.generate(self.model, job.prepared, on_progress=lambda d, t: job.progress.put((d, t)),
                                  cancelled=job.cancelled)

        inner = self._thread.submit(run)
        inner.add_done_callback(lambda f: _copy_outcome(f, job.future))
        return job

    def close(self) -> None:
        self._thread.close()


def _copy_outcome(source: Future, target: Future) -> None:
    if target.cancelled():
        return
    if source.cancelled():
        target.cancel()
    elif source.exception() is not None:
        target.set_exception(source.exception())
    else:
        target.set_result(source.result())

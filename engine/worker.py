"""A single thread that executes all model work, so batch predictions and jam sessions never race on the GPU."""

import logging
import queue
import threading
import typing as tp
from concurrent.futures import Future

logger = logging.getLogger(__name__)

T = tp.TypeVar("T")


class ModelThread:
    """Runs submitted callables one at a time, in order, on one dedicated thread."""

    def __init__(self, name: str = "engine") -> None:
        self._jobs: queue.SimpleQueue[tp.Optional[tuple[Future, tp.Callable[[], tp.Any]]]] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn: tp.Callable[[], T]) -> "Future[T]":
        future: Future[T] = Future()
        self._jobs.put((future, fn))
        return future

    def close(self) -> None:
        self._jobs.put(None)
        self._thread.join(timeout=10)

    def _run(self) -> None:
        import torch

        torch.set_grad_enabled(False)
        while True:
            job = self._jobs.get()
            if job is None:
                return
            future, fn = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = fn()
            except BaseException as exc:  # the caller gets every failure; the thread lives on
                future.set_exception(exc)
            else:
                future.set_result(result)

"""How many predictions decode at once: a fixed number of prediction slots, the rest waiting in order.

The decoder has rows for `max_predictions` predictions beside the sessions (engine.config), and Cog hands the
container up to COG_MAX_CONCURRENCY at once; the jam sidecar's jobs (Gary continuations, bar-mode loops) ask too.
A prediction past the slots waits here rather than failing for want of rows, and a slot comes back when a
prediction's job resolves, however it ends: a result, a failure, a cancel (also of one still waiting).
"""

import logging
import threading
import typing as tp
from collections import deque

from engine.work.batch import BatchJob, GenerationCancelled

logger = logging.getLogger(__name__)


class Startable(tp.Protocol):
    job: BatchJob

    def start(self) -> BatchJob: ...


class PredictionSlots:
    def __init__(self, slots: int) -> None:
        self._free = slots
        self._waiting: deque[Startable] = deque()
        self._lock = threading.Lock()

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def admit(self, prediction: Startable) -> BatchJob:
        """Starts `prediction` now when a slot is free, else when one frees; returns its job either way."""
        job = prediction.job
        with self._lock:
            start = self._free > 0
            if start:
                self._free -= 1
            else:
                self._waiting.append(prediction)
                job._on_cancel = lambda: job.fail(GenerationCancelled())  # replaced by start() once it runs
                job._queue_position = lambda: self.position(job)
        if start:
            self._run(prediction)
        else:
            logger.info("prediction waits for a slot (%d waiting)", len(self._waiting))
        return job

    def position(self, job: BatchJob) -> tp.Optional[int]:
        """`job`'s place in the line (1: the next to start), counting only the jobs still waiting; None when it is
        not waiting (running, done, or cancelled while waiting)."""
        with self._lock:
            waiting = [queued.job for queued in self._waiting if not queued.job.future.done()]
        return waiting.index(job) + 1 if job in waiting else None

    def _run(self, prediction: Startable) -> None:
        prediction.job.future.add_done_callback(lambda _: self._release())
        try:
            prediction.start()
        except BaseException as exc:  # the job carries it; the callback above gives the slot back
            prediction.job.fail(exc)

    def _release(self) -> None:
        with self._lock:
            while self._waiting and self._waiting[0].job.future.done():  # cancelled while waiting
                self._waiting.popleft()
            following = self._waiting.popleft() if self._waiting else None
            if following is None:
                self._free += 1
        if following is not None:
            self._run(following)

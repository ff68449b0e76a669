"""What a job's work sees (streaming.jobs.table): its id and cancel flag, its progress and stages, and one way to the
engine's predictions that relays their progress and their cancellation. `table` is the streaming.jobs.table.JobTable
that runs the job (its `report` and `wait_for_engine`)."""

import typing as tp

from engine.api import BatchRequest, BatchResult, GenerationCancelled
from streaming.jobs.state import Entry, JobCancelled


class JobContext:
    """What a job's work sees: its id, its cancel flag, progress and stages, and the engine's prediction API."""

    def __init__(self, table: tp.Any, entry: Entry) -> None:
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
        """One prediction on the engine; its progress maps onto [span[0], span[1]] of the job's."""
        self.check()
        self._table.wait_for_engine(self._entry)
        self.stage(stage, span[0])
        job = self._table.engine.generate(request)
        low, high = span
        with self._entry.lock:
            self._entry.engine_job = job
        if self.cancelled.is_set():  # cancelled between the check and the engine taking it
            job.cancel()
        try:
            return job.wait(on_progress=lambda done, total: self.progress(low + (high - low) * done / max(total, 1)),
                            poll_seconds=0.1)
        except GenerationCancelled:
            raise JobCancelled(self._entry.cancel_reason) from None
        finally:
            with self._entry.lock:
                self._entry.engine_job = None

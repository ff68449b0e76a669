"""The parts of streaming.jobs.table that hold no logic: the states, the snapshot a transport renders, the errors,
one entry of the table, and the default byte bound. Import them from streaming.jobs.table."""

import os
import threading
import typing as tp
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path


def machine_bytes(share: int, low: int, high: int) -> int:
    """1/`share` of the memory this process may use (the machine's, or its container's cgroup limit when lower),
    within `low`..`high`: the default of a byte bound that grows with the machine."""
    memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        memory = min(memory, int(limit)) if limit.isdigit() else memory
    except OSError:
        pass
    return min(high, max(low, memory // share))


# JAM_JOB_BYTES's default: 1/128 of memory within 256 MiB..1 GiB. The floor holds the largest job the routes take
# (gary: 300 s of 48 kHz stereo is 115 MB of samples while it runs, and its result ~85 MB of base64 WAV); a result
# is held only until a poll has carried it (streaming.jobs.table), so a stream of jobs holds little for long.
MAX_BYTES = machine_bytes(128, 256 * 2**20, 2**30)

QUEUED, RUNNING, COMPLETED, FAILED, CANCELLED = "queued", "running", "completed", "failed", "cancelled"
FINISHED = (COMPLETED, FAILED, CANCELLED)
# A running job whose prediction waits in the engine's own line (engine.runtime.admission) for a prediction slot.
WAITING_FOR_SLOT = "waiting for a prediction slot"


class TableFull(RuntimeError):
    """No room for another job now; the message says which bound and that a retry later may succeed."""


class InputTooLarge(ValueError):
    """A job whose input alone is over the table's byte bound: no wait makes room for it; the message says so."""


class JobFailed(RuntimeError):
    """A job that failed in the table itself (its result did not fit); a work's own exception is passed as is."""


class JobCancelled(Exception):
    """The job was cancelled (by its client, its owner leaving, its time running out, or the table closing)."""


@dataclass(frozen=True)
class JobStatus:
    """A snapshot of one entry, for any transport to render."""

    job_id: str
    owner: tp.Optional[str]
    state: str  # queued | running | completed | failed | cancelled
    stage: str  # "queued", WAITING_FOR_SLOT, "generating", the work's own stages, then the state
    progress: float  # 0..1, never decreasing; 1.0 once completed
    # queued: jobs of this table that start before this one; waiting for a slot: predictions ahead of it in the
    # engine's line (0 = next, either way); else None
    position: tp.Optional[int]
    estimated_seconds: tp.Optional[float]  # until this job finishes; None once finished
    error: tp.Optional[str]
    result: tp.Any  # the work's return value once completed, else None
    submitted: float  # time.monotonic() values
    finished: tp.Optional[float]

    @property
    def waiting(self) -> bool:
        """Not started yet, in this table's queue or in the engine's line: what clients show as queued."""
        return self.state == QUEUED or self.stage == WAITING_FOR_SLOT


def result_size(value: tp.Any) -> int:
    """Bytes a result holds, roughly: what the byte bound counts."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return len(value)
    if isinstance(value, str):
        return len(value)
    if isinstance(value, dict):
        return sum(result_size(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(result_size(v) for v in value)
    nbytes = getattr(value, "nbytes", None)
    return int(nbytes) if isinstance(nbytes, int) else 0


class Entry:
    def __init__(self, job_id: str, owner: tp.Optional[str], work: tp.Callable[[tp.Any], tp.Any],
                 work_seconds: float, input_bytes: int, now: float) -> None:
        self.job_id, self.owner, self.work = job_id, owner, work
        self.work_seconds, self.input_bytes = max(work_seconds, 1e-3), input_bytes
        self.state, self.stage, self.progress = QUEUED, QUEUED, 0.0
        self.error: tp.Optional[str] = None
        self.result: tp.Any = None
        self.result_bytes = 0
        self.submitted, self.started, self.finished = now, None, None
        self.delivered: tp.Optional[float] = None  # when its result reached the client (JobTable.delivered)
        self.cancelled = threading.Event()
        self.cancel_reason = "cancelled"
        self.future: Future = Future()
        self.lock = threading.Lock()
        self.engine_job = None  # the engine's BatchJob while one runs
        self.slot_ahead: tp.Optional[int] = None  # predictions ahead of it in the engine's line while it waits

    @property
    def held_bytes(self) -> int:
        return self.input_bytes + self.result_bytes

"""One batch generation, with the semantics of the Replicate MusicGen model users compare us to: the checks of
a request (engine.params.BatchRequest) that need the model, the job a caller waits on, and the result.

`prepare` validates a request and decodes the part of its audio that is used, on the caller's thread;
engine.work.prediction then runs it on the engine (the fast path on the step decoder, or audiocraft's own generate).
The caller normalises and encodes the result (streaming/formats.py).
"""

import contextlib
import logging
import os
import threading
import typing as tp
from concurrent.futures import Future, InvalidStateError
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass

import torch

from engine.codec import input_audio as audio
from engine.codec.melody import WINDOW_SECONDS
from engine.config import MAX_INPUT_AUDIO_SECONDS
from engine.loading.model import MAX_WINDOW_SECONDS
from engine.params import BatchRequest, RequestError
from engine.runtime.streams import window_offsets

if tp.TYPE_CHECKING:
    from engine.runtime.context import Runtime

logger = logging.getLogger(__name__)


class GenerationCancelled(Exception):
    """The caller cancelled the generation."""


@dataclass(frozen=True)
class PreparedBatch:
    """A validated request: decoded audio slice, the seed actually used, and what to generate."""

    request: BatchRequest
    seed: int
    audio_slice: tp.Optional[torch.Tensor]  # [channels, samples] at audio_rate
    audio_rate: int

    @property
    def mode(self) -> str:
        if self.audio_slice is None:
            return "text"
        return "continuation" if self.request.continuation else "melody"

    @property
    def prompt_seconds(self) -> float:
        """Seconds of input audio the output starts with (continuation only)."""
        return self.audio_slice.shape[-1] / self.audio_rate if self.mode == "continuation" else 0.0

    @property
    def total_seconds(self) -> float:
        return self.request.duration + self.prompt_seconds


@dataclass(frozen=True)
class BatchResult:
    wav: torch.Tensor  # [channels, samples], float, before normalisation
    sample_rate: int
    seed: int
    generation_seconds: float
    tokens: torch.Tensor  # [K, frames] the audio tokens (prompt included for continuations)

    @property
    def audio_seconds(self) -> float:
        return self.wav.shape[-1] / self.sample_rate

    @property
    def real_time_factor(self) -> float:
        """Wall seconds per generated second: below 1 is faster than real time."""
        return self.generation_seconds / max(self.audio_seconds, 1e-9)


class BatchJob:
    """A submitted prediction: wait for it (relaying progress to the caller's thread) or cancel it."""

    def __init__(self, prepared: PreparedBatch) -> None:
        self.prepared = prepared
        self.cancelled = threading.Event()
        self.progress: tp.Optional[tuple[int, int]] = None
        self.future: Future[BatchResult] = Future()
        self._on_cancel: tp.Callable[[], None] = lambda: None
        self._queue_position: tp.Callable[[], tp.Optional[int]] = lambda: None  # set by the engine's admission

    @property
    def queue_position(self) -> tp.Optional[int]:
        """Its place in the engine's line for a prediction slot (1: next to start), None once it runs or ends:
        what a caller shows while it waits (engine.runtime.admission owns the line)."""
        return self._queue_position()

    def cancel(self) -> None:
        self.cancelled.set()
        self._on_cancel()

    def fail(self, exc: BaseException) -> None:
        with contextlib.suppress(InvalidStateError):  # already resolved, maybe by another thread just now
            self.future.set_exception(exc)

    def succeed(self, result: "BatchResult") -> None:
        with contextlib.suppress(InvalidStateError):  # cancelled or failed meanwhile: the caller has its answer
            self.future.set_result(result)

    def fail_from(self, done: Future) -> None:
        """A done-callback: passes on the failure of a job this prediction depends on."""
        if done.exception() is not None:
            self.fail(done.exception())

    def wait(self, on_progress: tp.Callable[[int, int], None] = lambda done, total: None,
             poll_seconds: float = 0.25,
             on_queue: tp.Callable[[tp.Optional[int]], None] = lambda position: None) -> BatchResult:
        """Blocks in short slices so that the waiting thread stays interruptible (Cog cancels by exception).
        `on_queue` hears the job's queue_position at once and whenever it changes (None: it runs)."""
        reported = None
        position = self.queue_position
        on_queue(position)
        while True:
            try:
                return self.future.result(timeout=poll_seconds)
            except FutureTimeout:
                pass
            finally:
                now = self.queue_position
                if now != position:
                    position = now
                    on_queue(position)
                if self.progress is not None and self.progress != reported:
                    reported = self.progress
                    on_progress(*reported)


def random_seed() -> int:
    return int.from_bytes(os.urandom(4), "little") & 0x7FFFFFFF


def prepare(request: BatchRequest, runtime: "Runtime") -> PreparedBatch:
    """Checks what the schema cannot express and decodes the used part of the input audio; raises RequestError
    naming the input."""
    model = runtime.model
    if not (request.prompt and request.prompt.strip()) and request.input_audio is None:
        raise RequestError("Give a prompt, an input_audio, or both: there is nothing to condition on")
    if request.prompt:
        try:
            runtime.check_prompt(request.prompt)
        except ValueError as exc:
            raise RequestError(f"prompt: {exc}") from None
    if request.multi_band_diffusion and model.channels != 1:
        raise RequestError("multi_band_diffusion decodes mono audio (MultiBand Diffusion is trained on mono 32 kHz "
                           "EnCodec tokens) and this is a stereo checkpoint: set multi_band_diffusion=false")
    if request.multi_band_diffusion and model.mbd is None:
        raise RequestError("multi_band_diffusion was requested but this checkpoint has no MultiBand Diffusion "
                           "weights (mbd_musicgen_32khz.th); fetch them with `python -m weights.fetch --mbd` "
                           "or set multi_band_diffusion=false")
    seed = random_seed() if request.seed is None or request.seed == -1 else request.seed
    if request.input_audio is None:
        return PreparedBatch(request=request, seed=seed, audio_slice=None, audio_rate=model.sample_rate)
    if not request.continuation and not model.supports_melody:
        raise RequestError("input_audio with continuation=false asks the model to follow its melody, but the "
                           "loaded model cannot follow a melody (it has no chroma conditioner); use a melody "
                           "checkpoint or set continuation=true")
    frames = int(request.duration * model.frame_rate)
    last_window = window_offsets(frames, runtime.window_frames, runtime.keep_frames)[-1] / model.frame_rate
    wav, rate = _input_slice(request, melody_seconds=last_window + WINDOW_SECONDS)
    return PreparedBatch(request=request, seed=seed, audio_slice=wav, audio_rate=rate)


def _input_slice(request: BatchRequest, melody_seconds: float) -> tuple[torch.Tensor, int]:
    """The continuation_start..end slice, decoded alone: a continuation shorter than the model's window; a melody
    as much as audiocraft's chroma conditioner reads of it, `melody_seconds`: its first 30 s for an output of one
    window (the conditioner analyses the whole melody and keeps 30 s of chroma), up to the end of the last
    window's 30 s beyond (windowed extension loops the whole melody from each window's offset)."""
    start = request.continuation_start
    end = None if request.continuation_end in (None, -1) else request.continuation_end
    if end is not None and end <= start:
        raise RequestError(f"continuation_end ({end}) must be greater than continuation_start ({start})")
    cap = MAX_WINDOW_SECONDS if request.continuation else melody_seconds
    try:
        piece = audio.decode_slice(request.input_audio, start, end, max_seconds=cap,
                                   max_file_seconds=MAX_INPUT_AUDIO_SECONDS)
    except audio.AudioInputError as exc:
        raise RequestError(f"input_audio: {exc}") from None
    if piece.wav.shape[-1] == 0:
        length = f" ({piece.file_seconds:.2f} s)" if piece.file_seconds is not None else ""
        raise RequestError(f"continuation_start ({start} s) is past the end of input_audio{length}")
    reached_cap = piece.truncated and (end is None or start + cap < end)
    if request.continuation and (reached_cap or piece.seconds >= MAX_WINDOW_SECONDS):
        raise RequestError(f"the continuation slice of input_audio is at least {MAX_WINDOW_SECONDS:.0f} s; it must "
                           f"be shorter than the model's {MAX_WINDOW_SECONDS:.0f} s window: set continuation_end")
    return piece.wav, piece.sample_rate

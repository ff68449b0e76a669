"""One batch generation, with the semantics of the Replicate MusicGen model users compare us to.

`prepare` validates a request and decodes the part of its audio that is used, on the caller's thread. `start`
then runs it on the engine: as a finite stream on the step decoder (the fast path: its steps interleave with live
sessions, its tokens are decoded on the codec thread while they come; a melody becomes a chroma prefix there
first, one per window past 30 s), or through audiocraft's own `generate` (the reference path: models the step
decoder does not support, and comparisons). Both end in `_trim`; no piece of either path's work on the codec
thread, MultiBand Diffusion included, is longer than the job bound (README, "Job bound"). The caller normalises
and encodes the result (streaming/audio.py).
"""

import contextlib
import logging
import os
import threading
import time
import typing as tp
from concurrent.futures import Future, InvalidStateError
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from pathlib import Path

import torch

from engine import audio
from engine.codec_stream import StreamingCodecDecoder
from engine.config import MAX_INPUT_AUDIO_SECONDS
from engine.mbd import SlicedDiffusion
from engine.melody import WINDOW_SECONDS
from engine.model import EXTEND_STRIDE_SECONDS, MAX_WINDOW_SECONDS
from engine.streams import Conditioning, SamplingParams, Stream, window_offsets
from engine.worker import BACKGROUND, run_in_pieces

logger = logging.getLogger(__name__)

MAX_DURATION_SECONDS = 300
DECODE_EVERY_FRAMES = 50  # the codec thread decodes a prediction's tokens in pieces of this many frames


class RequestError(ValueError):
    """A request the model cannot serve; the message names the input to change."""


class GenerationCancelled(Exception):
    """The caller cancelled the generation."""


@dataclass(frozen=True)
class BatchRequest:
    """The Replicate inputs, as plain values (no Cog types), so the engine does not depend on Cog."""

    prompt: tp.Optional[str] = None
    input_audio: tp.Optional[Path] = None
    duration: int = 8
    continuation: bool = False
    continuation_start: int = 0
    continuation_end: tp.Optional[int] = None
    multi_band_diffusion: bool = False
    normalization_strategy: str = "loudness"
    top_k: int = 250
    top_p: float = 0.0
    temperature: float = 1.0
    classifier_free_guidance: float = 3.0
    output_format: str = "wav"
    seed: tp.Optional[int] = None

    @property
    def sampling(self) -> SamplingParams:
        return SamplingParams(temperature=self.temperature, top_k=self.top_k, top_p=self.top_p,
                              guidance=float(self.classifier_free_guidance))


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
             poll_seconds: float = 0.25) -> BatchResult:
        """Blocks in short slices so that the waiting thread stays interruptible (Cog cancels by exception)."""
        reported = None
        while True:
            try:
                return self.future.result(timeout=poll_seconds)
            except FutureTimeout:
                pass
            finally:
                if self.progress is not None and self.progress != reported:
                    reported = self.progress
                    on_progress(*reported)


def random_seed() -> int:
    return int.from_bytes(os.urandom(4), "little") & 0x7FFFFFFF


def prepare(request: BatchRequest, engine) -> PreparedBatch:
    """Checks what the schema cannot express and decodes the used part of the input audio; raises RequestError
    naming the input."""
    model = engine.model
    if not (request.prompt and request.prompt.strip()) and request.input_audio is None:
        raise RequestError("Give a prompt, an input_audio, or both: there is nothing to condition on")
    if not 1 <= request.duration <= MAX_DURATION_SECONDS:
        raise RequestError(f"duration must be between 1 and {MAX_DURATION_SECONDS} seconds")
    if request.normalization_strategy not in audio.NORMALIZATION_STRATEGIES:
        raise RequestError(f"normalization_strategy must be one of {', '.join(audio.NORMALIZATION_STRATEGIES)}")
    if request.output_format not in audio.OUTPUT_FORMATS:
        raise RequestError(f"output_format must be one of {', '.join(audio.OUTPUT_FORMATS)}")
    try:
        request.sampling.validate()
    except ValueError as exc:
        raise RequestError(str(exc).replace("guidance", "classifier_free_guidance", 1)) from None
    if request.prompt:
        try:
            engine.check_prompt(request.prompt)
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
    if seed < 0:
        raise RequestError("seed must be -1 (random) or a non-negative integer")
    if request.input_audio is None:
        return PreparedBatch(request=request, seed=seed, audio_slice=None, audio_rate=model.sample_rate)
    if not request.continuation and not model.supports_melody:
        raise RequestError("input_audio with continuation=false asks the model to follow its melody, but the "
                           "loaded model cannot follow a melody (it has no chroma conditioner); use a melody "
                           "checkpoint or set continuation=true")
    frames = int(request.duration * model.frame_rate)
    last_window = window_offsets(frames, engine.window_frames, engine.keep_frames)[-1] / model.frame_rate
    wav, rate = _input_slice(request, melody_seconds=last_window + WINDOW_SECONDS)
    return PreparedBatch(request=request, seed=seed, audio_slice=wav, audio_rate=rate)


def _input_slice(request: BatchRequest, melody_seconds: float) -> tuple[torch.Tensor, int]:
    """The continuation_start..end slice, decoded alone: a continuation shorter than the model's window; a melody
    as much as audiocraft's chroma conditioner reads of it, `melody_seconds`: its first 30 s for an output of one
    window (the conditioner analyses the whole melody and keeps 30 s of chroma), up to the end of the last
    window's 30 s beyond (windowed extension loops the whole melody from each window's offset)."""
    start = request.continuation_start or 0
    end = None if request.continuation_end in (None, -1) else request.continuation_end
    if start < 0:
        raise RequestError("continuation_start must be >= 0")
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


# -- the fast path: a finite stream on the step decoder ---------------------------------------------------------
def start_streamed(engine, prepared: PreparedBatch) -> BatchJob:
    """The prediction becomes a finite stream stepped beside live sessions (past one window, in windows as
    audiocraft's windowed extension makes them); the codec thread decodes its tokens in pieces while they come."""
    job = BatchJob(prepared)
    request = prepared.request
    model = engine.model
    total_frames = int(prepared.total_seconds * model.frame_rate)
    output = _Decoding(engine, job, prepared, time.perf_counter())
    tokens: list[torch.Tensor] = []  # LM thread: every frame, for the result
    undecoded: list[torch.Tensor] = []  # LM thread: frames not yet sent to the codec thread
    state: dict[str, Stream] = {}
    offsets = window_offsets(total_frames, engine.window_frames, engine.keep_frames)

    def on_frames(stream: Stream) -> None:
        frames = stream.take_frames()
        tokens.append(frames)
        undecoded.append(frames)
        job.progress = (min(stream.absolute_complete, total_frames), total_frames)
        done = stream.done()
        if done or sum(f.shape[-1] for f in undecoded) >= DECODE_EVERY_FRAMES:
            piece = torch.cat(undecoded, dim=-1)
            undecoded.clear()
            all_tokens = torch.cat(tokens, dim=-1) if done else None
            engine.codec_worker.call(lambda: output.push(piece, all_tokens),
                                     priority=BACKGROUND).add_done_callback(job.fail_from)
        if done:
            engine.scheduler.remove_stream(stream)

    def melody_window(index: int) -> Future:
        """The chroma prefix of window `index`, computed in pieces on the codec thread: the melody looped from that
        window's offset when the output spans several windows, as audiocraft recomputes it per window."""
        pieces = engine.melody_prefix_pieces(prepared.audio_slice, prepared.audio_rate, prepared.total_seconds,
                                             offsets[index] / model.frame_rate)
        return run_in_pieces(engine.codec_worker, pieces, abandoned=job.future.done)

    def analyse_window(stream: Stream, index: int) -> None:
        """Window `index`'s chroma, handed to the stream (which waits for it at the end of the window before),
        then the next window's."""
        def analysed(done: Future) -> None:
            if done.cancelled():  # the prediction ended meanwhile
                return
            if done.exception() is not None:
                job.fail(done.exception())
                return
            engine.lm_worker.call(lambda: stream.window_prefixes.append(done.result())).add_done_callback(
                job.fail_from)
            if index + 1 < len(offsets):
                analyse_window(stream, index + 1)

        melody_window(index).add_done_callback(analysed)

    def add_stream(prompt: tp.Optional[torch.Tensor], melody: tp.Optional[torch.Tensor]) -> None:
        if job.cancelled.is_set():
            raise GenerationCancelled()
        stream = engine.new_stream(Conditioning([request.prompt or ""], [1.0]), request.sampling, prepared.seed,
                                   prompt=prompt, target_frames=total_frames, melody=melody)
        stream.on_frames = on_frames
        stream.on_failed = lambda _, error: job.fail(RuntimeError(f"generation failed: {error}"))
        windowed_melody = melody is not None and len(offsets) > 1
        if windowed_melody:
            stream.window_prefixes = [melody]
        engine.scheduler.add_stream(stream)
        state["stream"] = stream
        if windowed_melody:
            analyse_window(stream, 1)

    def cancel_on_engine() -> None:
        if "stream" in state:
            engine.scheduler.remove_stream(state["stream"])
        job.fail(GenerationCancelled())

    def cancel() -> None:
        engine.lm_worker.call(cancel_on_engine).add_done_callback(lambda _: job.fail(GenerationCancelled()))

    job._on_cancel = cancel
    # The audio input becomes, on the codec thread, either tokens to continue or a melody's chroma prefix.
    melody_mode = prepared.mode == "melody"
    if prepared.mode == "text":
        engine.lm_worker.call(lambda: add_stream(None, None)).add_done_callback(job.fail_from)
        return job
    if melody_mode:
        analysed = melody_window(0)
    else:
        analysed = engine.codec_worker.call(lambda: engine.encode_now(prepared.audio_slice, prepared.audio_rate))

    def add_after_analysis(done: Future) -> None:
        if done.cancelled() or done.exception() is not None:
            job.fail(GenerationCancelled() if done.cancelled() else done.exception())
            return
        prompt, melody = (None, done.result()) if melody_mode else (done.result(), None)
        engine.lm_worker.call(lambda: add_stream(prompt, melody)).add_done_callback(job.fail_from)

    analysed.add_done_callback(add_after_analysis)
    return job


class _Decoding:
    """The codec-thread side of a prediction: its tokens arrive in pieces, its audio is EnCodec's streaming decode
    of them or, with multi_band_diffusion, MultiBand Diffusion in bounded pieces (engine.mbd), each piece a job of
    its own at BACKGROUND priority so that live sessions' decodes go first."""

    def __init__(self, engine, job: BatchJob, prepared: PreparedBatch, started: float) -> None:
        self.engine = engine
        self.job = job
        self.prepared = prepared
        self.started = started
        model, config = engine.model, engine.config
        self.pieces: list[torch.Tensor] = []
        self.codec: tp.Optional[StreamingCodecDecoder] = None
        self.diffusion: tp.Optional[SlicedDiffusion] = None
        if prepared.request.multi_band_diffusion:
            self.diffusion = SlicedDiffusion(model.mbd, prepared.seed,
                                             window_frames=int(config.mbd_window_seconds * model.frame_rate),
                                             overlap_frames=int(config.mbd_overlap_seconds * model.frame_rate))
        else:
            self.codec = StreamingCodecDecoder(model.musicgen.compression_model)
        self._tokens: tp.Optional[torch.Tensor] = None
        self._queued = False  # a diffusion piece is queued on the codec thread

    def push(self, frames: torch.Tensor, all_tokens: tp.Optional[torch.Tensor]) -> None:
        """Frames [K, n] that follow the last ones; `all_tokens` [K, total] with the last piece (codec thread)."""
        if all_tokens is not None:
            self._tokens = all_tokens
        if self.diffusion is not None:
            self.diffusion.push(frames, last=all_tokens is not None)
            self._advance()
            return
        self.pieces.append(self.codec.push(frames))
        if all_tokens is not None:
            self.pieces.append(self.codec.flush())
            self._finish(torch.cat(self.pieces, dim=-1))

    def _advance(self) -> None:
        """Keeps one diffusion piece queued while one can run; the result once the last one ran."""
        if self.diffusion.done:
            self._finish(self.diffusion.audio())
        elif self.diffusion.ready() and not self._queued:
            self._queued = True
            self.engine.codec_worker.call(self._piece, priority=BACKGROUND).add_done_callback(self.job.fail_from)

    def _piece(self) -> None:
        self._queued = False
        if self.job.future.done():  # cancelled or failed: the rest of the work is dropped
            return
        self.diffusion.run_once()
        self._advance()

    def _finish(self, wav: torch.Tensor) -> None:
        self.job.succeed(_trim(wav, self.prepared, self.engine.model.sample_rate, self.started, self._tokens))


# -- the reference path: audiocraft's own generate ---------------------------------------------------------------
def start_reference(engine, prepared: PreparedBatch) -> BatchJob:
    """audiocraft's MusicGen API on the LM thread; its progress callback lets live streams step in between. MBD
    then decodes its tokens as on the fast path (engine.mbd), so both paths differ in the LM alone."""
    job = BatchJob(prepared)
    started = time.perf_counter()

    def progress(done: int, total: int) -> None:
        if job.cancelled.is_set():
            raise GenerationCancelled()
        job.progress = (done, total)
        engine.scheduler.yield_to_streams()

    def generated(done: Future) -> None:
        if done.exception() is not None:
            job.fail(done.exception())
            return
        wav, tokens = done.result()
        if not prepared.request.multi_band_diffusion:
            job.succeed(_trim(wav, prepared, engine.model.sample_rate, started, tokens))
            return
        output = _Decoding(engine, job, prepared, started)
        engine.codec_worker.call(lambda: output.push(tokens, tokens),
                                 priority=BACKGROUND).add_done_callback(job.fail_from)

    engine.lm_worker.call(lambda: _generate_reference(engine.model, prepared, progress)).add_done_callback(generated)
    return job


def _generate_reference(model, prepared: PreparedBatch,
                        progress: tp.Callable[[int, int], None]) -> tuple[torch.Tensor, torch.Tensor]:
    """(audio [C, samples], tokens [K, frames]) from audiocraft's generate, seeded through torch's global RNG
    (audiocraft samples from it; the LM thread alone uses it)."""
    request = prepared.request
    musicgen = model.musicgen
    torch.manual_seed(prepared.seed)
    musicgen.set_generation_params(
        use_sampling=request.temperature > 0, top_k=request.top_k, top_p=request.top_p,
        temperature=request.temperature, duration=prepared.total_seconds, cfg_coef=request.classifier_free_guidance,
        extend_stride=EXTEND_STRIDE_SECONDS)
    musicgen.set_custom_progress_callback(progress)
    descriptions = [request.prompt or None]
    if prepared.mode == "text":
        wav, tokens = musicgen.generate(descriptions, progress=True, return_tokens=True)
    elif prepared.mode == "continuation":
        wav, tokens = musicgen.generate_continuation(prepared.audio_slice[None], prepared.audio_rate, descriptions,
                                                     progress=True, return_tokens=True)
    else:
        wav, tokens = musicgen.generate_with_chroma(descriptions, prepared.audio_slice[None], prepared.audio_rate,
                                                    progress=True, return_tokens=True)
    return wav[0], tokens[0]


def _trim(wav: torch.Tensor, prepared: PreparedBatch, sample_rate: int, started: float,
          tokens: torch.Tensor) -> BatchResult:
    """Both paths end here: the audio cut to the requested length, as float on the CPU."""
    total = int(round(prepared.total_seconds * sample_rate))
    return BatchResult(wav=wav[:, :total].float().cpu(), sample_rate=sample_rate, seed=prepared.seed,
                       generation_seconds=time.perf_counter() - started, tokens=tokens.cpu())



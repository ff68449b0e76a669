"""The engine: the loaded model plus the scheduler thread that runs all work on it."""

import logging
import threading
import time
import typing as tp
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from pathlib import Path

import torch

from engine import batch
from engine.decoder import UnsupportedModel, check_supported
from engine.model import EXTEND_STRIDE_SECONDS, MAX_WINDOW_SECONDS, LoadedModel, load_model
from engine.scheduler import Scheduler
from engine.streams import Conditioning, SamplingParams, Stream, new_stream

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineConfig:
    """How much the engine serves at once and at what precision."""

    max_rows: int = 16  # decoder rows: a prediction takes 2, a jam session one per style + 1
    # Decoder weights: "float32" (exact), "bfloat16", or "int8" (per-channel int8 weights, bf16 activations: a
    # quarter of fp32's bytes per step; see the benchmarks for its speed and accuracy).
    weight_format: str = "float32"
    window_seconds: float = MAX_WINDOW_SECONDS
    keep_seconds: float = MAX_WINDOW_SECONDS - EXTEND_STRIDE_SECONDS  # context kept when the window rolls


class BatchJob:
    """A submitted prediction: wait for it (relaying progress to the caller's thread) or cancel it."""

    def __init__(self, prepared: batch.PreparedBatch, cancel: tp.Callable[[], None]) -> None:
        self.prepared = prepared
        self.cancelled = threading.Event()
        self.progress: tuple[int, int] | None = None
        self.future: Future[batch.BatchResult] = Future()
        self._cancel = cancel

    def cancel(self) -> None:
        self.cancelled.set()
        self._cancel()

    def wait(self, on_progress: tp.Callable[[int, int], None] = lambda done, total: None,
             poll_seconds: float = 0.25) -> batch.BatchResult:
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


class Engine:
    """Owns the model. Callers submit work; only the scheduler's thread touches the model."""

    def __init__(self, model: LoadedModel, config: EngineConfig = EngineConfig()) -> None:
        self.model = model
        self.config = config
        lm = model.musicgen.lm
        delays = list(lm.pattern_provider.delays)
        self.window_frames = int(config.window_seconds * model.frame_rate)
        self.keep_frames = int(config.keep_seconds * model.frame_rate)
        self.scheduler = Scheduler(lm, max_rows=config.max_rows, max_steps=self.window_frames + max(delays) + 1,
                                   weight_format=config.weight_format)
        self.step_decoder_supported = True
        try:
            check_supported(lm)
        except UnsupportedModel as exc:
            logger.warning("%s: predictions use audiocraft's generate and jam sessions are unavailable", exc)
            self.step_decoder_supported = False

    @classmethod
    def load(cls, source: tp.Union[str, Path, None] = None, device: tp.Optional[str] = None,
             config: EngineConfig = EngineConfig()) -> "Engine":
        return cls(load_model(source, device), config)

    def close(self) -> None:
        self.scheduler.close()

    def open_session(self, settings, seed: int, prompt: tp.Optional[tuple[torch.Tensor, int]] = None):
        """A live jam session (engine.jam.JamSession): next_chunk() -> Future[Chunk], update(settings), close()."""
        from engine.jam import JamSession

        return JamSession.open(self, settings, seed, prompt=prompt)

    def new_stream(self, conditioning: Conditioning, params: SamplingParams, seed: int,
                   prompt: tp.Optional[torch.Tensor] = None, target_frames: tp.Optional[int] = None) -> Stream:
        return new_stream(self.model.musicgen.lm, conditioning, params, seed, self.window_frames,
                          self.keep_frames, prompt, target_frames)

    def encode(self, wav: torch.Tensor, sample_rate: int) -> torch.Tensor:
        """Audio [C, T] -> tokens [K, frames] with the model's codec (engine thread only)."""
        from audiocraft.data.audio_utils import convert_audio

        musicgen = self.model.musicgen
        wav = convert_audio(wav, sample_rate, musicgen.sample_rate, musicgen.audio_channels)
        codes, _ = musicgen.compression_model.encode(wav[None].to(self.model.device))
        return codes[0]

    # -- batch predictions --------------------------------------------------------------------------------------
    def submit_batch(self, request: batch.BatchRequest) -> BatchJob:
        """Validates and decodes on the caller's thread (RequestError), then queues the model work."""
        prepared = batch.prepare(request, self.model)
        if self.step_decoder_supported and prepared.mode != "melody":
            return self._submit_streamed(prepared)
        return self._submit_reference(prepared)

    def _submit_streamed(self, prepared: batch.PreparedBatch) -> BatchJob:
        """The prediction becomes a finite stream, stepped together with live jam sessions."""
        holder: dict[str, Stream] = {}
        job = BatchJob(prepared, cancel=lambda: self.scheduler.call(lambda: finish_cancelled()))
        request = prepared.request
        collected: list[torch.Tensor] = []
        started = time.perf_counter()

        def finish_cancelled() -> None:
            stream = holder.get("stream")
            if stream is not None:
                self.scheduler.remove_stream(stream)
            if not job.future.done():
                job.future.set_exception(batch.GenerationCancelled())

        def on_frames(stream: Stream) -> None:
            if stream.error is not None:
                job.future.set_exception(stream.error)
                return
            collected.append(stream.take_frames())
            done = stream.absolute_complete
            job.progress = (min(done, stream.target_frames), stream.target_frames)
            if stream.done():
                self.scheduler.remove_stream(stream)
                tokens = torch.cat(collected, dim=-1)[None]
                job.future.set_result(self._finish(prepared, tokens, started))

        def start() -> None:
            prompt = None
            if prepared.mode == "continuation":
                prompt = self.encode(prepared.audio_slice, prepared.audio_rate)
            params = SamplingParams(temperature=request.temperature, top_k=request.top_k, top_p=request.top_p,
                                    guidance=float(request.classifier_free_guidance))
            stream = self.new_stream(Conditioning([request.prompt or ""], [1.0]), params, prepared.seed,
                                     prompt=prompt, target_frames=int(prepared.total_seconds * self.model.frame_rate))
            stream.on_frames = on_frames
            holder["stream"] = stream
            if job.cancelled.is_set():
                raise batch.GenerationCancelled()
            self.scheduler.add_stream(stream)

        self.scheduler.call(start).add_done_callback(
            lambda f: f.exception() and not job.future.done() and job.future.set_exception(f.exception()))
        return job

    def _finish(self, prepared: batch.PreparedBatch, tokens: torch.Tensor, started: float) -> batch.BatchResult:
        """Tokens [1, K, T] -> audio, as audiocraft decodes a whole generation (engine thread)."""
        request = prepared.request
        if request.multi_band_diffusion:
            wav = self.model.mbd.tokens_to_wav(tokens)
        else:
            wav = self.model.musicgen.compression_model.decode(tokens, None)
        total = int(round(prepared.total_seconds * self.model.sample_rate))
        return batch.BatchResult(wav=wav[0, :, :total].float().cpu(), sample_rate=self.model.sample_rate,
                                 seed=prepared.seed, generation_seconds=time.perf_counter() - started)

    def _submit_reference(self, prepared: batch.PreparedBatch) -> BatchJob:
        """audiocraft's own generate (melody models); its progress callback lets live streams step."""
        job = BatchJob(prepared, cancel=lambda: None)

        def progress(done: int, total: int) -> None:
            job.progress = (done, total)
            self.scheduler.yield_to_streams()

        def run() -> batch.BatchResult:
            return batch.generate(self.model, prepared, on_progress=progress, cancelled=job.cancelled)

        future = self.scheduler.call(run)
        future.add_done_callback(lambda f: _copy_outcome(f, job.future))
        return job


def _copy_outcome(source: Future, target: Future) -> None:
    if target.done():
        return
    if source.cancelled():
        target.cancel()
    elif source.exception() is not None:
        target.set_exception(source.exception())
    else:
        target.set_result(source.result())

"""A prediction on the engine: the two ways a validated request (engine.work.batch.prepare) is generated.

- `Prediction`, the fast path: the request becomes a finite stream on the step decoder, stepped beside live
  sessions (past one window, in windows as audiocraft's windowed extension makes them; a melody becomes a chroma
  prefix per window, computed on the codec thread in pieces), its tokens decoded on the codec thread while they
  come (`Decoding`).
- `start_reference`: audiocraft's own `generate` on the LM thread (models the step decoder does not support, and
  the yardstick of comparisons), its tokens decoded as on the fast path when MultiBand Diffusion is asked for.
Both end in `trim`; no piece of either path's work on the codec thread is longer than the job bound (docs/engine.md).
"""

import time
import typing as tp
from concurrent.futures import Future

import torch

from engine.codec import mbd, melody
from engine.codec.mbd import SlicedDiffusion
from engine.codec.stream import StreamingCodecDecoder
from engine.loading.model import EXTEND_STRIDE_SECONDS
from engine.runtime.deadlines import CODEC, LM
from engine.runtime.scheduler import PREDICTION_PREFILL, PREDICTION_STEP
from engine.runtime.streams import Conditioning, Stream, window_offsets
from engine.runtime.worker import BACKGROUND, run_in_pieces
from engine.work.batch import BatchJob, BatchResult, GenerationCancelled, PreparedBatch

if tp.TYPE_CHECKING:
    from engine.runtime.context import Runtime

DECODE_EVERY_FRAMES = 50  # the codec thread decodes a prediction's tokens in pieces of this many frames
# the kinds of a prediction's pieces on the codec thread (engine.runtime.deadlines estimates each one's cost)
DECODE_PIECE, ENCODE_PIECE = "prediction decode", "prompt encode"


class Prediction:
    """The fast path of one request. Its parts run on three threads: `start` on the caller's, `_add_stream`,
    `_on_frames` and `_cancel_on_engine` on the LM thread, the melody windows' analysis on the codec thread; the
    token lists are the LM thread's alone."""

    def __init__(self, runtime: "Runtime", prepared: PreparedBatch, adapter: int = 0) -> None:
        """`adapter`: the LoRA slot its rows run with (engine.runtime.adapters; 0: the base model)."""
        self.runtime = runtime
        self.adapter = adapter
        self.prepared = prepared
        self.job = BatchJob(prepared)
        self.total_frames = int(prepared.total_seconds * runtime.model.frame_rate)
        self.offsets = window_offsets(self.total_frames, runtime.window_frames, runtime.keep_frames)
        self.output = Decoding(runtime, self.job, prepared, time.perf_counter())
        self.stream: tp.Optional[Stream] = None
        self._tokens: list[torch.Tensor] = []  # every frame, for the result
        self._undecoded: list[torch.Tensor] = []  # frames not yet sent to the codec thread

    def start(self) -> BatchJob:
        """Queues the work: the audio input first becomes, on the codec thread, tokens to continue or a melody's
        chroma prefix; then the stream joins the scheduler. Its kinds of pieces are admitted to the deadlines at
        once, so realtime consumers raise their lead before any of them runs."""
        runtime, prepared, job = self.runtime, self.prepared, self.job
        job._on_cancel = self._cancel
        release = runtime.deadlines.admit(self.pieces())
        job.future.add_done_callback(lambda _: release())
        if prepared.mode == "text":
            runtime.lm_worker.call(lambda: self._add_stream(None, None)).add_done_callback(job.fail_from)
            return job
        melody_mode = prepared.mode == "melody"
        if melody_mode:
            analysed = self._melody_window(0)
        else:
            analysed = runtime.codec_worker.call(lambda: runtime.encode_now(prepared.audio_slice, prepared.audio_rate),
                                                 priority=BACKGROUND, label=ENCODE_PIECE)

        def add_after_analysis(done: Future) -> None:
            if done.cancelled() or done.exception() is not None:
                job.fail(GenerationCancelled() if done.cancelled() else done.exception())
                return
            prompt, melody = (None, done.result()) if melody_mode else (done.result(), None)
            runtime.lm_worker.call(lambda: self._add_stream(prompt, melody)).add_done_callback(job.fail_from)

        analysed.add_done_callback(add_after_analysis)
        return job

    def pieces(self) -> set[tuple[str, str]]:
        """The kinds of batch pieces this prediction runs, by worker."""
        mode = self.prepared.mode
        kinds = {(LM, PREDICTION_STEP), (LM, PREDICTION_PREFILL), (CODEC, DECODE_PIECE)}
        if self.prepared.request.multi_band_diffusion:
            kinds.update((CODEC, label) for label in mbd.LABELS)
        if mode == "melody":
            kinds.update((CODEC, label) for label in melody.LABELS)
        elif mode == "continuation":
            kinds.add((CODEC, ENCODE_PIECE))
        return kinds

    # -- LM thread --------------------------------------------------------------------------------------------
    def _add_stream(self, prompt: tp.Optional[torch.Tensor], melody: tp.Optional[torch.Tensor]) -> None:
        if self.job.cancelled.is_set():
            raise GenerationCancelled()
        request = self.prepared.request
        stream = self.runtime.new_stream(Conditioning([request.prompt or ""], [1.0]), request.sampling,
                                        self.prepared.seed, prompt=prompt, target_frames=self.total_frames,
                                        melody=melody, adapter=self.adapter)
        stream.on_frames = self._on_frames
        stream.on_failed = lambda _, error: self.job.fail(RuntimeError(f"generation failed: {error}"))
        windowed_melody = melody is not None and len(self.offsets) > 1
        if windowed_melody:
            stream.window_prefixes = [melody]
        self.runtime.scheduler.add_stream(stream)
        self.stream = stream
        if windowed_melody:
            self._analyse_window(1)

    def _on_frames(self, stream: Stream) -> None:
        frames = stream.take_frames()
        self._tokens.append(frames)
        self._undecoded.append(frames)
        self.job.progress = (min(stream.absolute_complete, self.total_frames), self.total_frames)
        done = stream.done()
        if done or sum(f.shape[-1] for f in self._undecoded) >= DECODE_EVERY_FRAMES:
            piece = torch.cat(self._undecoded, dim=-1)
            self._undecoded.clear()
            all_tokens = torch.cat(self._tokens, dim=-1) if done else None
            self.runtime.codec_worker.call(lambda: self.output.push(piece, all_tokens), priority=BACKGROUND,
                                          label=DECODE_PIECE).add_done_callback(self.job.fail_from)
        if done:
            self.runtime.scheduler.remove_stream(stream)

    def _cancel_on_engine(self) -> None:
        if self.stream is not None:
            self.runtime.scheduler.remove_stream(self.stream)
        self.job.fail(GenerationCancelled())

    def _cancel(self) -> None:
        self.runtime.lm_worker.call(self._cancel_on_engine).add_done_callback(
            lambda _: self.job.fail(GenerationCancelled()))

    # -- a melody's windows (codec thread) ---------------------------------------------------------------------
    def _melody_window(self, index: int) -> Future:
        """The chroma prefix of window `index`, computed in pieces on the codec thread: the melody looped from that
        window's offset when the output spans several windows, as audiocraft recomputes it per window."""
        prepared, runtime = self.prepared, self.runtime
        pieces = runtime.melody_prefix_pieces(prepared.audio_slice, prepared.audio_rate, prepared.total_seconds,
                                             self.offsets[index] / runtime.model.frame_rate)
        return run_in_pieces(runtime.codec_worker, pieces, abandoned=self.job.future.done, label=melody.LABEL)

    def _analyse_window(self, index: int) -> None:
        """Window `index`'s chroma, handed to the stream (which waits for it at the end of the window before),
        then the next window's."""
        def analysed(done: Future) -> None:
            if done.cancelled():  # the prediction ended meanwhile
                return
            if done.exception() is not None:
                self.job.fail(done.exception())
                return
            self.runtime.lm_worker.call(lambda: self.stream.window_prefixes.append(done.result())).add_done_callback(
                self.job.fail_from)
            if index + 1 < len(self.offsets):
                self._analyse_window(index + 1)

        self._melody_window(index).add_done_callback(analysed)


class Decoding:
    """The codec-thread side of a prediction: its tokens arrive in pieces, its audio is EnCodec's streaming decode
    of them or, with multi_band_diffusion, MultiBand Diffusion in bounded pieces (engine.codec.mbd), each piece a job of
    its own at BACKGROUND priority so that live sessions' decodes go first."""

    def __init__(self, runtime: "Runtime", job: BatchJob, prepared: PreparedBatch, started: float) -> None:
        self.runtime = runtime
        self.job = job
        self.prepared = prepared
        self.started = started
        model, config = runtime.model, runtime.config
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
            self.runtime.codec_worker.call(self._piece, priority=BACKGROUND,
                                          label=self.diffusion.next_label).add_done_callback(self.job.fail_from)

    def _piece(self) -> None:
        self._queued = False
        if self.job.future.done():  # cancelled or failed: the rest of the work is dropped
            return
        self.diffusion.run_once()
        self._advance()

    def _finish(self, wav: torch.Tensor) -> None:
        self.job.succeed(trim(wav, self.prepared, self.runtime.model.sample_rate, self.started, self._tokens))


# -- the reference path: audiocraft's own generate ---------------------------------------------------------------
def start_reference(runtime: "Runtime", prepared: PreparedBatch) -> BatchJob:
    """audiocraft's MusicGen API on the LM thread; its progress callback lets live streams step in between. MBD
    then decodes its tokens as on the fast path (engine.codec.mbd), so both paths differ in the LM alone."""
    job = BatchJob(prepared)
    started = time.perf_counter()

    def progress(done: int, total: int) -> None:
        if job.cancelled.is_set():
            raise GenerationCancelled()
        job.progress = (done, total)
        runtime.scheduler.yield_to_streams()

    def generated(done: Future) -> None:
        if done.exception() is not None:
            job.fail(done.exception())
            return
        wav, tokens = done.result()
        if not prepared.request.multi_band_diffusion:
            job.succeed(trim(wav, prepared, runtime.model.sample_rate, started, tokens))
            return
        output = Decoding(runtime, job, prepared, started)
        runtime.codec_worker.call(lambda: output.push(tokens, tokens), priority=BACKGROUND,
                                 label=DECODE_PIECE).add_done_callback(job.fail_from)

    runtime.lm_worker.call(lambda: _generate_reference(runtime.model, prepared, progress)).add_done_callback(generated)
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


def trim(wav: torch.Tensor, prepared: PreparedBatch, sample_rate: int, started: float,
          tokens: torch.Tensor) -> BatchResult:
    """Both paths end here: the audio cut to the requested length, as float on the CPU."""
    total = int(round(prepared.total_seconds * sample_rate))
    return BatchResult(wav=wav[:, :total].float().cpu(), sample_rate=sample_rate, seed=prepared.seed,
                       generation_seconds=time.perf_counter() - started, tokens=tokens.cpu())



"""One batch generation, with the semantics of the Replicate MusicGen model users compare us to.

`prepare` validates a request and decodes its audio on the caller's thread. The engine then generates it as a
finite stream on its step decoder (engine.core), or, for models the step decoder does not support (melody models
prepend their chroma), with audiocraft's own `generate` below. The caller normalises and encodes the result
(engine.audio).
"""

import logging
import os
import threading
import time
import typing as tp
from dataclasses import dataclass
from pathlib import Path

import torch

from engine import audio
from engine.model import EXTEND_STRIDE_SECONDS, MAX_WINDOW_SECONDS, LoadedModel

logger = logging.getLogger(__name__)

MAX_DURATION_SECONDS = 300


class RequestError(ValueError):
    """A request the model cannot serve; the message names the input to change."""


class GenerationCancelled(Exception):
    """The caller cancelled the generation; raised inside the engine at the next step."""


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

    @property
    def audio_seconds(self) -> float:
        return self.wav.shape[-1] / self.sample_rate

    @property
    def real_time_factor(self) -> float:
        """Wall seconds per generated second: below 1 is faster than real time."""
        return self.generation_seconds / max(self.audio_seconds, 1e-9)


def random_seed() -> int:
    return int.from_bytes(os.urandom(4), "little") & 0x7FFFFFFF


def prepare(request: BatchRequest, model: LoadedModel) -> PreparedBatch:
    """Checks what the schema cannot express and decodes input audio; raises RequestError naming the input."""
    if not (request.prompt and request.prompt.strip()) and request.input_audio is None:
        raise RequestError("Give a prompt, an input_audio, or both: there is nothing to condition on")
    if not 1 <= request.duration <= MAX_DURATION_SECONDS:
        raise RequestError(f"duration must be between 1 and {MAX_DURATION_SECONDS} seconds")
    if request.normalization_strategy not in audio.NORMALIZATION_STRATEGIES:
        raise RequestError(f"normalization_strategy must be one of {', '.join(audio.NORMALIZATION_STRATEGIES)}")
    if request.output_format not in audio.OUTPUT_FORMATS:
        raise RequestError(f"output_format must be one of {', '.join(audio.OUTPUT_FORMATS)}")
    if request.top_k < 0 or request.top_p < 0 or request.top_p > 1:
        raise RequestError("top_k must be >= 0 and top_p within [0, 1]")
    if request.temperature <= 0:
        raise RequestError("temperature must be greater than 0")
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
    try:
        wav, rate = audio.decode(request.input_audio)
    except audio.AudioInputError as exc:
        raise RequestError(f"input_audio: {exc}") from None
    clip_seconds = wav.shape[-1] / rate
    start = request.continuation_start or 0
    end = clip_seconds if request.continuation_end in (None, -1) else request.continuation_end
    if start < 0:
        raise RequestError("continuation_start must be >= 0")
    if start >= clip_seconds:
        raise RequestError(f"continuation_start ({start} s) is past the end of input_audio ({clip_seconds:.2f} s)")
    if end <= start:
        raise RequestError(f"continuation_end ({end}) must be greater than continuation_start ({start})")
    sliced = wav[:, int(rate * start):int(rate * min(end, clip_seconds))]
    if request.continuation and sliced.shape[-1] / rate >= MAX_WINDOW_SECONDS:
        raise RequestError(f"the continuation slice of input_audio is {sliced.shape[-1] / rate:.1f} s; it must be "
                           f"shorter than the model's {MAX_WINDOW_SECONDS:.0f} s window: set continuation_end")
    return PreparedBatch(request=request, seed=seed, audio_slice=sliced, audio_rate=rate)


def generate(model: LoadedModel, batch: PreparedBatch,
             on_progress: tp.Callable[[int, int], None] = lambda done, total: None,
             cancelled: tp.Optional[threading.Event] = None) -> BatchResult:
    """One prediction through audiocraft's MusicGen API (melody and other models the step decoder does not
    support); runs on the engine thread."""
    request = batch.request
    musicgen = model.musicgen
    started = time.perf_counter()
    torch.manual_seed(batch.seed)

    total_seconds = batch.total_seconds
    musicgen.set_generation_params(
        use_sampling=True, top_k=request.top_k, top_p=request.top_p, temperature=request.temperature,
        duration=total_seconds, cfg_coef=request.classifier_free_guidance, extend_stride=EXTEND_STRIDE_SECONDS)

    def progress(done: int, total: int) -> None:
        if cancelled is not None and cancelled.is_set():
            raise GenerationCancelled()
        on_progress(done, total)

    musicgen.set_custom_progress_callback(progress)
    descriptions = [request.prompt or None]
    if batch.mode == "text":
        wav, tokens = musicgen.generate(descriptions, progress=True, return_tokens=True)
    elif batch.mode == "continuation":
        wav, tokens = musicgen.generate_continuation(batch.audio_slice[None], batch.audio_rate, descriptions,
                                                     progress=True, return_tokens=True)
    else:
        wav, tokens = musicgen.generate_with_chroma(descriptions, batch.audio_slice[None], batch.audio_rate,
                                                    progress=True, return_tokens=True)
    if request.multi_band_diffusion:
        wav = model.mbd.tokens_to_wav(tokens)
    wav = wav[0, :, : int(round(total_seconds * model.sample_rate))].float().cpu()
    return BatchResult(wav=wav, sample_rate=model.sample_rate, seed=batch.seed,
                       generation_seconds=time.perf_counter() - started)

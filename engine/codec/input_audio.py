"""Input audio: the engine's one reader of audio files.

Decoding goes through PyAV (ffmpeg's libraries), so any format ffmpeg reads is accepted, and only the part of a
file that is used is decoded. Writing audio (WAV, MP3, FLAC, PCM, Opus, resampling, loudness) is the transports'
work: streaming/formats.py.
"""

import io
import math
import typing as tp
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

NORMALIZATION_STRATEGIES = ("loudness", "clip", "peak", "rms")
OUTPUT_FORMATS = ("wav", "mp3")


class AudioInputError(ValueError):
    """Input audio that cannot be used; the message says why."""


@dataclass(frozen=True)
class AudioSlice:
    wav: torch.Tensor  # [channels, samples], float
    sample_rate: int
    file_seconds: tp.Optional[float]  # the whole file's length, when the container states it
    truncated: bool  # the file has audio past the slice (the slice hit its end or max_seconds)

    @property
    def seconds(self) -> float:
        return self.wav.shape[-1] / self.sample_rate


def decode(path: tp.Union[str, Path]) -> tuple[torch.Tensor, int]:
    """Reads a whole audio file (any format ffmpeg understands) into float [channels, samples] and its rate."""
    decoded = decode_slice(path)
    return decoded.wav, decoded.sample_rate


def decode_slice(path: tp.Union[str, Path, bytes], start: float = 0.0, end: tp.Optional[float] = None,
                 max_seconds: tp.Optional[float] = None,
                 max_file_seconds: tp.Optional[float] = None) -> AudioSlice:
    """Decodes only [start, end) of a file (or of a file's bytes), streaming through it: seeks to `start`, stops
    at `end` or after `max_seconds` of slice, so memory follows the slice, not the file. A file longer than
    `max_file_seconds` (by its header) is refused before anything is decoded."""
    import av

    name = "the audio" if isinstance(path, bytes) else Path(path).name
    try:
        with av.open(io.BytesIO(path) if isinstance(path, bytes) else str(path)) as container:
            if not container.streams.audio:
                raise AudioInputError(f"{name} has no audio stream")
            stream = container.streams.audio[0]
            file_seconds = _container_seconds(container, stream)
            if max_file_seconds is not None and file_seconds is not None and file_seconds > max_file_seconds:
                raise AudioInputError(f"{name} is {file_seconds / 60:.1f} minutes long; input audio may be at "
                                      f"most {max_file_seconds / 60:.0f} minutes")
            rate = stream.codec_context.sample_rate
            stop = end if max_seconds is None else min(end if end is not None else math.inf, start + max_seconds)
            chunks, truncated = _decode_span(container, stream, start, stop)
    except AudioInputError:
        raise
    except (av.FFmpegError, ValueError, OSError) as exc:
        raise AudioInputError(f"Could not read {name} as audio: {exc}") from None
    if not chunks and start == 0:
        raise AudioInputError(f"{name} contains no audio samples")
    channels = chunks[0].shape[0] if chunks else 1
    samples = np.concatenate(chunks, axis=1) if chunks else np.zeros((channels, 0), dtype=np.float32)
    return AudioSlice(torch.from_numpy(np.ascontiguousarray(samples)), int(rate), file_seconds, truncated)


def _container_seconds(container, stream) -> tp.Optional[float]:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / 1_000_000  # AV_TIME_BASE
    return None


def _decode_span(container, stream, start: float, stop: tp.Optional[float]) -> tuple[list[np.ndarray], bool]:
    """Float32 [channels, n] pieces covering [start, stop) (stop None: to the end); True if audio goes on."""
    import av

    rate = stream.codec_context.sample_rate
    channels = stream.codec_context.channels or 1
    layout = "mono" if channels == 1 else "stereo"
    if start > 0 and stream.time_base is not None:
        container.seek(int(start / stream.time_base), stream=stream, backward=True, any_frame=False)
    first, last = int(round(start * rate)), (None if stop is None or math.isinf(stop) else int(round(stop * rate)))
    chunks: list[np.ndarray] = []
    position = None  # sample index of the next decoded sample
    for frame in container.decode(stream):
        if frame.pts is not None and frame.time_base is not None:
            position = int(round(float(frame.pts * frame.time_base) * rate))
        elif position is None:
            position = 0
        resampler = av.AudioResampler(format="flt", layout=layout)  # format and layout only: no delay
        pcm = np.concatenate([out.to_ndarray().reshape(-1, out.layout.nb_channels) for out in
                              resampler.resample(frame)], axis=0).T
        begin = max(0, first - position)
        end = pcm.shape[1] if last is None else min(pcm.shape[1], last - position)
        if end > begin:
            chunks.append(pcm[:, begin:end])
        position += pcm.shape[1]
        if last is not None and position >= last:
            return chunks, True
    return chunks, False

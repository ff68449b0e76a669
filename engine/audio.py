"""The one place that decodes, normalises and encodes audio.

Decoding goes through PyAV (ffmpeg's libraries), so any format ffmpeg reads is accepted, and only the part of a
file that is used is decoded; WAV is written in-process as 16-bit PCM; MP3 is encoded by the ffmpeg binary
(Debian's, or the one imageio-ffmpeg ships) through pydub.
"""

import io
import math
import shutil
import typing as tp
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

NORMALIZATION_STRATEGIES = ("loudness", "clip", "peak", "rms")
OUTPUT_FORMATS = ("wav", "mp3")
MP3_BITRATE_KBPS = 320
# audiocraft's defaults for its writer, which the Replicate MusicGen models use through audio_write.
LOUDNESS_HEADROOM_DB = 14.0
PEAK_CLIP_HEADROOM_DB = 1.0
RMS_HEADROOM_DB = 18.0


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


def normalize(wav: torch.Tensor, sample_rate: int, strategy: str) -> torch.Tensor:
    """audiocraft's normalisation, as the anchor model applies it (loudness with the tanh compressor)."""
    from audiocraft.data.audio_utils import normalize_audio

    if strategy not in NORMALIZATION_STRATEGIES:
        raise ValueError(f"normalization_strategy must be one of {', '.join(NORMALIZATION_STRATEGIES)}")
    wav = normalize_audio(wav.float(), normalize=True, strategy=strategy,
                          peak_clip_headroom_db=PEAK_CLIP_HEADROOM_DB, rms_headroom_db=RMS_HEADROOM_DB,
                          loudness_headroom_db=LOUDNESS_HEADROOM_DB, loudness_compressor=True,
                          log_clipping=False, sample_rate=sample_rate)
    return wav.clamp(-1.0, 1.0)


def wav_bytes(wav: torch.Tensor, sample_rate: int, subtype: str = "PCM_16") -> bytes:
    """A complete WAV file (16-bit PCM, or "FLOAT" where samples must pass through unchanged); `wav` is float
    [channels, samples] in [-1, 1]."""
    buffer = io.BytesIO()
    sf.write(buffer, wav.detach().cpu().float().clamp(-1, 1).numpy().T, sample_rate, format="WAV",
             subtype=subtype)
    return buffer.getvalue()


def resample(wav: torch.Tensor, from_rate: int, to_rate: int) -> torch.Tensor:
    """Float [channels, samples] at `from_rate` -> `to_rate` (julius' windowed sinc, as audiocraft resamples)."""
    import julius

    if from_rate == to_rate:
        return wav
    return julius.resample_frac(wav.float().contiguous(), from_rate, to_rate)


def pcm16_array(wav: torch.Tensor) -> np.ndarray:
    """16-bit samples [samples, channels] (interleaved when flattened) from float [channels, samples]."""
    return (wav.detach().cpu().float().clamp(-1, 1).numpy().T * 32767.0).round().astype("<i2")


def pcm16_bytes(wav: torch.Tensor) -> bytes:
    """Raw interleaved 16-bit little-endian PCM, for protocols that stream bare samples."""
    return pcm16_array(wav).tobytes()


def ffmpeg_executable() -> str:
    found = shutil.which("ffmpeg")
    if found:
        return found
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def encode_file(wav: torch.Tensor, sample_rate: int, out_path: Path, fmt: str) -> Path:
    """Writes `wav` as `fmt` to `out_path` (suffix added); MP3 at MP3_BITRATE_KBPS constant bitrate, encoded by
    ffmpeg through pydub."""
    if fmt not in OUTPUT_FORMATS:
        raise ValueError(f"output_format must be one of {', '.join(OUTPUT_FORMATS)}")
    out_path = Path(out_path).with_suffix("." + fmt)
    if fmt == "wav":
        out_path.write_bytes(wav_bytes(wav, sample_rate))
        return out_path
    with warnings.catch_warnings():  # pydub warns at import when ffmpeg is not on PATH; its path is set below
        warnings.simplefilter("ignore", RuntimeWarning)
        from pydub import AudioSegment
        from pydub.exceptions import CouldntEncodeError

    AudioSegment.converter = ffmpeg_executable()
    segment = AudioSegment(data=pcm16_bytes(wav), sample_width=2, frame_rate=sample_rate, channels=wav.shape[0])
    try:
        segment.export(out_path, format="mp3", codec="libmp3lame", bitrate=f"{MP3_BITRATE_KBPS}k")
    except CouldntEncodeError as exc:
        raise RuntimeError(f"ffmpeg could not encode mp3: {exc}") from None
    return out_path


def write_output(wav: torch.Tensor, sample_rate: int, strategy: str, fmt: str, out_path: Path) -> Path:
    """A generation's final file: normalised with `strategy`, encoded as `fmt`."""
    return encode_file(normalize(wav, sample_rate, strategy), sample_rate, out_path, fmt)


class StreamingResampler:
    """Resamples a chunked stream without seams: each chunk is filtered with the tail of the previous one as left
    context and a little of the next (the jam chunks' overlap) as right context, then cut to its own span."""

    def __init__(self, from_rate: int, to_rate: int, channels: int, context: int = 512) -> None:
        self.from_rate, self.to_rate, self.channels, self.context = from_rate, to_rate, channels, context
        self._history: torch.Tensor | None = None  # the last input samples, in the input's channels
        self._consumed = 0  # input samples emitted so far
        self._produced = 0  # output samples emitted so far

    def _convert(self, wav: torch.Tensor) -> torch.Tensor:
        if wav.shape[0] != self.channels:  # mono <-> stereo
            wav = wav.mean(0, keepdim=True).expand(self.channels, -1)
        return resample(wav, self.from_rate, self.to_rate)

    def process(self, wav: torch.Tensor, lookahead: torch.Tensor) -> torch.Tensor:
        """`wav` [C, n] is the new audio; `lookahead` is audio that follows it (context only, not emitted)."""
        if self._history is None:
            self._history = wav[:, :0]
        left = self._history.shape[-1]
        window = torch.cat([self._history, wav, lookahead], dim=-1).float()
        converted = self._convert(window)
        end_in = self._consumed + wav.shape[-1]
        out_start = self._produced
        out_end = int(round(end_in * self.to_rate / self.from_rate))
        offset = int(round((self._consumed - left) * self.to_rate / self.from_rate))
        out = converted[:, out_start - offset: out_end - offset]
        self._history = torch.cat([self._history, wav], dim=-1)[:, -self.context:]
        self._consumed, self._produced = end_in, out_end
        return out


OPUS_SAMPLE_RATE = 48000  # Opus always runs at 48 kHz on the wire (RTP clock rate of WebRTC's opus/48000/2)
OPUS_FRAME_SAMPLES = 960  # 20 ms: WebRTC's usual packet time
OPUS_BITRATE = 128_000  # target bits per second for stereo music (VBR around it)
OPUS_APPLICATION = "audio"  # libopus's music mode; aiortc's own encoder is fixed to "voip" at 96 kbps


class OpusEncoder:
    """Live music as Opus: one 20 ms frame of 16-bit PCM in, one packet out, stateful across frames.

    libopus through PyAV with the "audio" application (tuned for music, not speech) at OPUS_BITRATE. Frames must
    be fed in playing order (silence included): the encoder predicts from the previous frame.
    """

    def __init__(self, bitrate: int = OPUS_BITRATE, channels: int = 2) -> None:
        import fractions

        import av

        self.channels = channels
        self.bitrate = bitrate
        self.codec = av.CodecContext.create("libopus", "w")
        self.codec.bit_rate = bitrate
        self.codec.sample_rate = OPUS_SAMPLE_RATE
        self.codec.layout = "stereo" if channels == 2 else "mono"
        self.codec.format = "s16"
        self.codec.time_base = fractions.Fraction(1, OPUS_SAMPLE_RATE)
        self.codec.options = {"application": OPUS_APPLICATION, "frame_duration": "20", "vbr": "on"}
        self._pts = 0

    def encode(self, pcm: np.ndarray) -> bytes:
        """`pcm` is int16 [OPUS_FRAME_SAMPLES, channels]; returns the Opus packet for it."""
        import av

        if pcm.shape != (OPUS_FRAME_SAMPLES, self.channels):
            raise ValueError(f"an Opus frame is {OPUS_FRAME_SAMPLES} x {self.channels} samples, got {pcm.shape}")
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(pcm, dtype="<i2").reshape(1, -1), format="s16",
                                           layout=self.codec.layout.name)
        frame.sample_rate = OPUS_SAMPLE_RATE
        frame.pts = self._pts
        self._pts += OPUS_FRAME_SAMPLES
        packets = self.codec.encode(frame)
        if len(packets) != 1:  # libopus emits exactly one packet per 20 ms frame, with no lookahead queue
            raise RuntimeError(f"Opus encoder returned {len(packets)} packets for one frame")
        return bytes(packets[0])

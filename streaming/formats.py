"""Output audio, for every transport (predict.py's files, the sidecar's chunks, recordings, DAW replies): the one
place that normalises, encodes and resamples what the engine generated.

WAV is written in-process as 16-bit PCM (or float); MP3 is encoded by the ffmpeg binary (Debian's, or the one
imageio-ffmpeg ships) through pydub; Opus by libopus for WebRTC; resampling as audiocraft does (julius), with a
streaming resampler for chunked streams. Reading input audio is the engine's (engine/codec/input_audio.py).
"""

import io
import math
import shutil
import warnings
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

# reading input audio is the engine's; re-exported so that a transport needs this one audio module
from engine.api import OUTPUT_FORMATS, normalize
from engine.api import AudioInputError as AudioInputError
from engine.api import AudioSlice as AudioSlice
from engine.api import decode as decode
from engine.api import decode_slice as decode_slice

MP3_BITRATE_KBPS = 320
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


LOUDNESS_MODES = ("none", "auto", "lufs", "rms")


def to_channels(wav: torch.Tensor, channels: int) -> torch.Tensor:
    """Float [channels, samples]: mono <-> stereo (a mono mix, or mono repeated)."""
    wav = wav.float()
    return wav if wav.shape[0] == channels else wav.mean(0, keepdim=True).expand(channels, -1)


def _lufs(wav: torch.Tensor, sample_rate: int) -> float:
    import pyloudnorm

    return float(pyloudnorm.Meter(sample_rate).integrated_loudness(wav.double().numpy().T))


def match_loudness(reference: torch.Tensor, target: torch.Tensor, sample_rate: int, mode: str,
                   headroom_db: float) -> tuple[torch.Tensor, dict]:
    """`target` [C, n] at `reference`'s loudness, then its peaks limited to -headroom_db dBFS (magenta-retry's
    rule). `mode`: "lufs" (ITU-R BS.1770 integrated loudness, pyloudnorm), "rms", "auto" (LUFS, or RMS where
    LUFS is undefined: audio under 0.4 s or silent), "none" (unchanged). Returns the audio and what was done."""
    if mode not in LOUDNESS_MODES:
        raise ValueError(f"loudness_mode must be one of {', '.join(LOUDNESS_MODES)}, got {mode!r}")
    stats: dict = {"method": mode, "applied_gain_db": 0.0}
    if mode == "none" or target.numel() == 0:
        return target, stats
    gain_db = None
    if mode in ("auto", "lufs"):
        try:
            ref_lufs, target_lufs = _lufs(reference, sample_rate), _lufs(target, sample_rate)
        except ValueError:  # shorter than one 400 ms gating block
            ref_lufs = target_lufs = -math.inf
        if math.isfinite(ref_lufs) and math.isfinite(target_lufs):
            gain_db = ref_lufs - target_lufs
            stats.update(method="lufs", ref_lufs=ref_lufs, tgt_lufs_before=target_lufs)
    if gain_db is None:
        ref_rms, target_rms = float(reference.pow(2).mean().sqrt()), float(target.pow(2).mean().sqrt())
        if target_rms <= 1e-12:
            return target, stats
        gain_db = 20 * math.log10(max(ref_rms, 1e-12) / target_rms)
        stats.update(method="rms", ref_rms=ref_rms, tgt_rms_before=target_rms)
    out = target.float() * 10 ** (gain_db / 20)
    limit = 10 ** (-headroom_db / 20)
    peak = float(out.abs().max())
    stats.update(applied_gain_db=gain_db, post_peak_limited=peak > limit)
    if peak > limit:
        out = out * (limit / peak)
    return out, stats


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


# G.711 mu-law, as FastRTC's WebSocket transport sends it (audioop.lin2ulaw / ulaw2lin, width 2: 16-bit samples
# companded to 8 bits), written with numpy because audioop leaves Python in 3.13.
_MULAW_BIAS = 0x84
_MULAW_CLIP = 8159  # in the 14-bit range audioop's encoder works in
_MULAW_SEGMENT_ENDS = np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF])


def mulaw_encode(pcm: np.ndarray) -> bytes:
    """16-bit samples (any shape, int16) -> one mu-law byte each, bit for bit as audioop.lin2ulaw(pcm, 2)."""
    value = pcm.astype(np.int32).ravel() >> 2  # to 14 bits (an arithmetic shift, as audioop's)
    negative = value < 0
    magnitude = np.minimum(np.where(negative, -value, value), _MULAW_CLIP) + (_MULAW_BIAS >> 2)
    segment = np.searchsorted(_MULAW_SEGMENT_ENDS, magnitude, side="left")
    code = (segment << 4) | ((magnitude >> (np.minimum(segment, 7) + 1)) & 0xF)
    code = np.where(segment >= 8, 0x7F, code)
    return (code ^ np.where(negative, 0x7F, 0xFF)).astype(np.uint8).tobytes()


def mulaw_decode(data: bytes) -> np.ndarray:
    """Mu-law bytes -> 16-bit samples (int16), as audioop.ulaw2lin(data, 2)."""
    code = ~np.frombuffer(data, dtype=np.uint8).astype(np.int32) & 0xFF
    magnitude = (((code & 0xF) << 3) + _MULAW_BIAS) << ((code & 0x70) >> 4)
    return np.where(code & 0x80, _MULAW_BIAS - magnitude, magnitude - _MULAW_BIAS).astype(np.int16)

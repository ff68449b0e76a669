"""Shared test helpers: free ports, audio fixtures made with ffmpeg, WAV decoding, waiting on servers, an
out-of-memory injected into tensor copies."""

import base64
import io
import math
import socket
import subprocess
import time
import typing as tp
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from streaming.formats import ffmpeg_executable


def offline_decode(engine, tokens: torch.Tensor) -> torch.Tensor:
    """Tokens [K, frames] -> audio [C, samples] in one offline codec decode on the codec thread: the yardstick of
    the engine's streaming decode (the engine itself never decodes a whole stream at once)."""
    codec, device = engine.model.musicgen.compression_model, engine.model.device
    return engine.codec_worker.call(lambda: codec.decode(tokens[None].to(device), None)[0].cpu()).result()


def snr_db(reference: torch.Tensor, test: torch.Tensor) -> float:
    """Signal-to-noise ratio of `test` against `reference`, in dB."""
    noise = (test - reference).pow(2).mean()
    return 10 * torch.log10(reference.pow(2).mean() / noise.clamp(min=1e-20)).item()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def sine_wav(path: Path, seconds: float, rate: int = 32000, freq: float = 440.0, channels: int = 1) -> Path:
    t = np.arange(int(seconds * rate)) / rate
    tone = 0.4 * np.sin(2 * math.pi * freq * t)
    sf.write(path, np.stack([tone] * channels, axis=1), rate, subtype="PCM_16")
    return path


def convert(src: Path, dst: Path) -> Path:
    """Encodes `src` to `dst`'s format with ffmpeg (format chosen by suffix)."""
    subprocess.run([ffmpeg_executable(), "-hide_banner", "-loglevel", "error", "-y", "-i", str(src), str(dst)],
                   check=True)
    return dst


def decode_wav(data: bytes) -> tuple[np.ndarray, int, str]:
    """Returns samples [frames, channels], rate and subtype of WAV bytes."""
    info = sf.info(io.BytesIO(data))
    samples, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    return samples, rate, info.subtype


def data_uri_bytes(uri: str) -> tuple[str, bytes]:
    header, payload = uri.split(",", 1)
    assert header.startswith("data:") and header.endswith(";base64"), header
    return header[5:-7], base64.b64decode(payload)


def wait_until(predicate: tp.Callable[[], bool], timeout: float, interval: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


class FailingGather(TorchDispatchMode):
    """Inside the block, the `nth` gather of tensor rows (aten.index) raises torch.OutOfMemoryError, as a copy of
    KV cache rows does on a GPU without room for them; `calls` counts the gathers seen."""

    def __init__(self, nth: int) -> None:
        super().__init__()
        self.nth = nth
        self.calls = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten.index.Tensor:
            self.calls += 1
            if self.calls == self.nth:
                raise torch.OutOfMemoryError(f"injected: out of memory at gather {self.nth}")
        return func(*args, **(kwargs or {}))

"""Shared test helpers: free ports, audio fixtures made with ffmpeg, WAV decoding, waiting on servers."""

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

from engine.audio import ffmpeg_executable


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

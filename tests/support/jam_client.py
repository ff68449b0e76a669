"""A /ws/jam client in a few functions (over websockets' sync client), and the seed's own Python client.

START is the session most tests play: two styles, sampling away from the defaults, asap pace, 0.8 s chunks."""

import base64
import io
import json
import subprocess
import sys
import time
import typing as tp
from pathlib import Path

import numpy as np
import soundfile as sf

from tests.support import DATA

START = {"type": "start", "mode": "rt", "binary_audio": False,
         "params": {"styles": "jazz, hiphop", "style_weights": "1.0,0.8", "temperature": 1.1, "topk": 40,
                    "guidance_weight": 1.1, "pace": "asap", "max_decode_frames": 20}}


def asap_start(styles: str) -> dict:
    """A start message for `styles` at pace asap with 0.4 s chunks (10 frames)."""
    return {"type": "start", "params": {"styles": styles, "pace": "asap", "max_decode_frames": 10}}


def receive_json(ws, timeout: float = 60) -> dict:
    return json.loads(ws.recv(timeout=timeout))


def next_of(ws, kind: str, timeout: float = 60) -> dict:
    """The next JSON message of type `kind`, skipping others (and binary frames); TimeoutError names `kind`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        message = ws.recv(timeout=deadline - time.monotonic())
        if isinstance(message, str) and json.loads(message)["type"] == kind:
            return json.loads(message)
    raise TimeoutError(kind)


def messages_until(ws, predicate: tp.Callable[[dict], bool], timeout: float = 60) -> list[dict]:
    """Every JSON message up to and including the first that matches `predicate`."""
    deadline = time.monotonic() + timeout
    seen = []
    while True:
        message = ws.recv(timeout=max(0.01, deadline - time.monotonic()))
        if isinstance(message, bytes):
            continue
        seen.append(json.loads(message))
        if predicate(seen[-1]):
            return seen


def is_status(status: str) -> tp.Callable[[dict], bool]:
    return lambda m: m.get("type") == "status" and m.get("status") == status


def decode_chunk(message: dict) -> tuple[np.ndarray, int]:
    """A chunk message's audio: its first channel and its rate."""
    samples, rate = sf.read(io.BytesIO(base64.b64decode(message["audio_base64"])), dtype="float32", always_2d=True)
    return samples[:, 0], rate


def seed_client_script(ws_url: str, directory: Path) -> Path:
    """The seed's Python client (tests/data) with only its URL changed, written into `directory`."""
    script = directory / "seed_client.py"
    script.write_text((DATA / "seed_jam_client.py").read_text().replace("wss://YOUR_SPACE/ws/jam", ws_url))
    return script


def run_seed_client(ws_url: str, tmp_path: Path, chunks: int = 2) -> list[str]:
    """Runs the seed's Python client with only its URL changed; returns its first `chunks` output lines."""
    script = seed_client_script(ws_url, tmp_path)
    process = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 60
        while len(lines) < chunks and time.monotonic() < deadline:
            line = process.stdout.readline()
            if line.startswith("chunk"):
                lines.append(line.strip())
    finally:
        process.kill()
        process.wait()
    return lines


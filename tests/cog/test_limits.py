"""Bounded inputs and isolation against Cog's real server on predict.py, with the jam sidecar beside it."""

import json
import os
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest
from websockets.sync.client import connect

from streaming.formats import ffmpeg_executable
from tests.support.cog_server import predict
from tests.support.helpers import data_uri_bytes, decode_wav
from tests.support.jam_client import START, next_of


def test_a_too_long_prompt_fails_alone_while_a_jam_plays(cog):
    outcome = {}
    with connect(cog.jam_url) as ws:
        ws.send(json.dumps(START))
        next_of(ws, "chunk")
        thread = threading.Thread(target=lambda: outcome.update(
            body=predict(cog, prompt=" ".join(["jazz"] * 600), duration=1, seed=1).json()))
        thread.start()
        chunks = 0
        while thread.is_alive() or chunks < 3:
            next_of(ws, "chunk", timeout=30)
            chunks += 1
        thread.join()
    body = outcome["body"]
    assert body["status"] == "failed"
    assert "prompt: 601 text tokens; the text encoder takes at most 512" in body["error"]


def test_a_prompt_of_500_tokens_is_accepted(cog):
    body = predict(cog, prompt=" ".join(["jazz"] * 499), duration=1, seed=1).json()
    assert body["status"] == "succeeded", body.get("error")


def test_temperature_zero_decodes_greedily(cog):
    outputs = [predict(cog, prompt="ambient", duration=1, seed=seed, temperature=0).json() for seed in (1, 2)]
    for body in outputs:
        assert body["status"] == "succeeded", body.get("error")
    samples, _, _ = decode_wav(data_uri_bytes(outputs[0]["output"])[1])
    assert np.isfinite(samples).all()
    assert outputs[0]["output"] == outputs[1]["output"]  # greedy: the seed does not matter


@pytest.mark.parametrize(("inputs", "field"), [
    ({"temperature": 10.5}, "temperature"),
    ({"top_k": 5000}, "top_k"),
    ({"classifier_free_guidance": 21}, "classifier_free_guidance"),
    ({"classifier_free_guidance": -1}, "classifier_free_guidance"),
    ({"seed": 2**40}, "seed"),
    ({"seed": -2}, "seed"),
    ({"prompt": "x" * 4001}, "prompt"),
])
def test_out_of_range_inputs_get_422_naming_the_field(cog, inputs, field):
    response = predict(cog, **{"prompt": "x", **inputs})
    assert response.status_code == 422, response.text
    assert field in response.text


def test_each_prediction_removes_its_files_when_the_next_starts(cog):
    def outputs() -> set[Path]:
        return set(Path("/tmp").glob("musicgen-output-*"))

    earlier = outputs()  # left by servers of earlier runs
    assert predict(cog, prompt="one", duration=1, seed=1).json()["status"] == "succeeded"
    first = outputs() - earlier
    assert predict(cog, prompt="two", duration=1, seed=2).json()["status"] == "succeeded"
    second = outputs() - earlier
    assert len(first) == 1 and len(second) == 1 and not (first & second)


def _worker_pid(cog) -> int:
    """The Python worker coglet spawned (the process that loads the model)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == cog.process.pid:
            continue
        try:
            if os.getpgid(int(entry.name)) == cog.process.pid and b"python" in (entry / "cmdline").read_bytes():
                return int(entry.name)
        except (ProcessLookupError, FileNotFoundError, PermissionError):
            continue
    raise RuntimeError("no worker process found")


def _memory_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _tone_flac(path: Path, seconds: int) -> Path:
    subprocess.run([ffmpeg_executable(), "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
                    f"sine=frequency=440:sample_rate=48000:duration={seconds}", "-ac", "2", str(path)], check=True)
    return path


@pytest.mark.slow
def test_an_hour_of_flac_costs_little_memory_and_longer_files_are_refused(cog, file_server):
    base, directory = file_server
    _tone_flac(directory / "hour.flac", 3600)
    worker = _worker_pid(cog)
    Path(f"/proc/{worker}/clear_refs").write_text("5")  # restart the peak (VmHWM) from the current RSS
    before = _memory_kb(worker, "VmRSS")
    body = predict(cog, input_audio=f"{base}/hour.flac", continuation=True, continuation_start=3000,
                   continuation_end=3005, duration=1, seed=1).json()
    assert body["status"] == "succeeded", body.get("error")
    samples, rate, _ = decode_wav(data_uri_bytes(body["output"])[1])
    assert samples.shape[0] == 6 * rate
    growth_mb = (_memory_kb(worker, "VmHWM") - before) / 1024
    assert growth_mb < 300, f"peak worker memory grew by {growth_mb:.0f} MB"
    _tone_flac(directory / "long.flac", int(2.5 * 3600))
    body = predict(cog, input_audio=f"{base}/long.flac", continuation=True, duration=1).json()
    assert body["status"] == "failed"
    assert "long.flac is 150.0 minutes long; input audio may be at most 120 minutes" in body["error"]

"""WebRTC playback through a real sidecar and an aiortc client on loopback: time to first audio, Opus encode CPU
per stream, and underruns over a long play.

    .venv/bin/python -m benchmarks.webrtc_stream [--weights PATH] [--connections 5] [--play-seconds 60]

Uses the default checkpoint (the demo when nothing was fetched: its audio is noise). Prints one JSON object.
"""

import argparse
import asyncio
import json
import logging
import statistics
import time

import numpy as np
import pytest

from benchmarks.engine_bench import cpu_description
from engine.config import EngineConfig
from engine.core import Engine
from streaming.app.config import ServerConfig
from streaming.app.server import RunningServer
from tests.support.webrtc_client import JamClient, event, loopback_only

PARAMS = {"styles": "jazz, hiphop", "style_weights": "1,0.8"}  # the default 2 s chunks


class EndedRecords(logging.Handler):
    """The server logs each peer's encode CPU and underruns when it ends."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[tuple] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.msg.startswith("webrtc %s ended"):
            self.records.append(record.args)


async def first_audio(base: str) -> float:
    client = JamClient(base)
    track = await client.connect(PARAMS)
    while True:
        frame = await track.recv()
        if np.abs(frame.to_ndarray()).max() > 0:
            await client.close()
            return time.monotonic() - client.offered_at


async def long_play(base: str, seconds: float) -> dict:
    client = JamClient(base)
    track = await client.connect(PARAMS)
    frames = silent = 0
    cpu, wall = time.process_time(), time.monotonic()
    while frames * 0.02 < seconds:
        frame = await track.recv()
        frames += 1
        silent += int(np.abs(frame.to_ndarray()).max() < 4)  # within Opus's noise floor of digital silence
    cpu, wall = time.process_time() - cpu, time.monotonic() - wall
    messages = []
    while not client.messages.empty():
        messages.append(client.messages.get_nowait())
    client.send({"type": "stop"})
    await client.message(lambda m: m["data"] == "stopped")
    await client.close()
    chunks = [m["data"] for m in messages if event("chunk")(m)]
    return {"played_seconds": frames * 0.02, "wall_seconds": round(wall, 2),
            "underrun_warnings": sum(m["type"] == "warning" for m in messages),
            "client_silent_frames": silent, "chunks": len(chunks),
            "chunk_real_time_factor_median": statistics.median(c["real_time_factor"] for c in chunks),
            "server_buffer_seconds_min": min(c["buffer_seconds"] for c in chunks),
            "process_cpu_percent_of_one_core": round(100 * cpu / wall, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default=None)
    parser.add_argument("--connections", type=int, default=5, help="connections timed one after another")
    parser.add_argument("--play-seconds", type=float, default=60.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    ended = EndedRecords()
    logging.getLogger("streaming.webrtc.peer").addHandler(ended)
    logging.getLogger("streaming.webrtc.peer").setLevel(logging.INFO)
    patch = pytest.MonkeyPatch()
    loopback_only(patch)
    config = ServerConfig(host="127.0.0.1", port=0)
    engine = Engine.load(args.weights, config=EngineConfig(max_sessions=1))
    server = RunningServer(engine, config).start()
    base = f"http://127.0.0.1:{server.port}"
    try:
        firsts = []
        for _ in range(args.connections):
            firsts.append(asyncio.run(first_audio(base)))
            time.sleep(0.5)  # the previous peer gives its slot back
        play = asyncio.run(long_play(base, args.play_seconds))
        time.sleep(1)
    finally:
        server.stop()
        engine.close()
        patch.undo()
    _, _, underruns, encode_cpu, encoded, _ = ended.records[-1]
    print(json.dumps({
        "machine": cpu_description(), "model": engine.describe(),
        "time_to_first_audio_seconds": {"median": round(statistics.median(firsts), 3),
                                        "all": [round(f, 3) for f in firsts],
                                        "meaning": "POST /webrtc/offer sent -> first non-silent decoded frame"},
        "opus_encode_cpu_ms_per_audio_second": round(1000 * encode_cpu / (encoded * 0.02), 2),
        "opus": {"bitrate": 128000, "application": "audio", "frame_ms": 20, "channels": 2},
        "server_underruns": underruns, "long_play": play,
    }, indent=1))


if __name__ == "__main__":
    main()

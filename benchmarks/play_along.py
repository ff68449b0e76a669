"""Play along: how soon the player's audio is heard in a session, and what live input costs the engine.

- `/ws/jam`: a reference session plays (seed, pace realtime, 0.48 s chunks) and never hears input; then sessions
  with the same seed hear a player: chunks heard back to back from the first one's arrival + 0.12 s (the seed's
  browser client), a tone played from a phase of chunk `WARM` on, sent in 0.1 s `input` messages as each piece ends,
  each stamped with its start on that listener's clock. The first sample where a session's audio parts from the
  reference is where the input took effect: latency = that place on the output timeline - the first piece's `time`
  (target: within 2 chunks, 0.96 s).
- WebRTC: a send-receive offer whose microphone (tests.support.webrtc_client.ToneTrack) is silent for a while, then
  plays a tone; the data channel's `input` event says where the microphone's first piece landed, so the tone starts
  at that place + the silence. Both sessions' recordings (their tokens decoded afresh) are compared as above (target:
  within 1 s).
- Engine: 8 sessions at musicgen-small dimensions (random weights, benchmarks.engine_bench.build_model), 0.48 s
  chunks, with a 0.48 s piece of input per session and chunk (over the chunk before: what its player heard) vs the
  same 8 without: the aggregate realtime factor ratio (target >= 0.8).

    .venv/bin/python -m benchmarks.play_along [--runs 3] [--rounds 3] [--only jam,webrtc,engine] [--device cpu]

Prints one JSON object with the machine. The demo checkpoint (noise) serves the two transports.
"""

import argparse
import asyncio
import base64
import json
import logging
import math
import statistics
import threading
import time

import numpy as np
import pytest
from websockets.sync.client import connect

from benchmarks.engine_bench import SMALL, build_model, cpu_description
from benchmarks.jam_latency import first_difference, wav_samples
from engine.config import EngineConfig
from engine.core import Engine
from streaming.app.config import ServerConfig
from streaming.app.server import RunningServer
from tests.support.webrtc_client import ToneTrack, loopback_only, recorded_session

SEED = 31
FRAMES = 12  # 0.48 s chunks
CHUNK = FRAMES / 25
WARM = 3  # the input comes when this chunk arrives
PHASES = (0.0, 0.5, 0.9)
PIECE_SECONDS = 0.1  # a streaming player's pieces (as the page and WebRTC's listener send them)
PLAYED_SECONDS = 1.0


def tone(seconds: float, rate: int, freq: float = 330.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.5 * np.sin(2 * math.pi * freq * t)).astype(np.float32)


def summary(latencies: list[float]) -> dict:
    return {"runs": len(latencies), "median_seconds": round(statistics.median(latencies), 3),
            "worst_seconds": round(max(latencies), 3), "latencies_seconds": [round(x, 3) for x in latencies]}


# -- /ws/jam ------------------------------------------------------------------------------------------------------
def jam_play(port: int, chunks: int, at: float | None, ahead: list | None = None) -> np.ndarray:
    """The session's audio (int16 [n, channels]). With `at`, a player who hears the chunks back to back from the
    first one's arrival + 0.12 s (the seed's browser client) plays a tone from listener time `at` for
    `PLAYED_SECONDS`, sending each `PIECE_SECONDS` as it ends, stamped with its start; `ahead` gets the audio the
    listener had received but not heard yet when the first piece went out (the stream's lead as the client sees it)."""
    start = {"type": "start", "params": {"styles": "jazz", "seed": SEED, "pace": "realtime",
                                         "max_decode_frames": FRAMES}}
    audio: list[np.ndarray] = []
    with connect(f"ws://127.0.0.1:{port}/ws/jam", max_size=None) as ws:
        ws.send(json.dumps(start))
        player, received = None, [0.0]
        while len(audio) < chunks:
            message = json.loads(ws.recv(timeout=120))
            if message["type"] != "chunk":
                continue
            if not audio and at is not None:
                player = threading.Thread(target=play_tone, args=(ws, time.monotonic() + 0.12, at, received,
                                                                  ahead if ahead is not None else []), daemon=True)
                player.start()
            audio.append(wav_samples(message)[0])
            received[0] += message["metadata"]["chunk_seconds"]
        if player is not None:
            player.join()
        ws.send(json.dumps({"type": "stop"}))
    return np.concatenate(audio)


def play_tone(ws, heard_from: float, at: float, received: list, ahead: list) -> None:
    """The player's side of `jam_play`: pieces of a tone, each sent when the listener's clock passes its end."""
    wave = (tone(PLAYED_SECONDS, 48000) * 32767).astype("<i2")
    piece = int(PIECE_SECONDS * 48000)
    for offset in range(0, len(wave), piece):
        stamp = at + offset / 48000
        time.sleep(max(0.0, heard_from + stamp + PIECE_SECONDS - time.monotonic()))
        if offset == 0:
            ahead.append(received[0] - (time.monotonic() - heard_from))
        ws.send(json.dumps({"type": "input", "sample_rate": 48000, "channels": 1, "time": stamp,
                            "audio": base64.b64encode(wave[offset: offset + piece].tobytes()).decode()}))


def jam_latency(port: int, runs: int) -> dict:
    chunks = WARM + 8
    reference = jam_play(port, chunks, None)
    latencies, ahead = [], []
    for phase in PHASES[:runs]:
        at = (WARM + phase) * CHUNK
        first = first_difference(reference, jam_play(port, chunks, at, ahead))
        if first < 0:
            raise RuntimeError("the input was never heard")
        latencies.append(first / 32000 - at)
    return {"chunk_seconds": CHUNK, "target_seconds": 2 * CHUNK, "piece_seconds": PIECE_SECONDS, **summary(latencies),
            "received_ahead_of_the_listener_seconds": [round(x, 3) for x in ahead]}


# -- WebRTC -------------------------------------------------------------------------------------------------------
async def webrtc_play(base: str, seconds: float, silent: float | None) -> tuple[np.ndarray, float | None]:
    """A session's recording after `seconds` of play; with `silent`, a microphone silent that long, then a tone:
    the tone's place on the output timeline comes back too."""
    microphone = None if silent is None else ToneTrack(silent_seconds=silent)
    audio, placed = await recorded_session(base, {"styles": "jazz", "seed": SEED, "max_decode_frames": 16}, seconds,
                                           microphone)
    return audio, None if placed is None else placed["start_seconds"] + silent


def webrtc_latency(base: str, runs: int) -> dict:
    seconds = 6.0
    reference, _ = asyncio.run(webrtc_play(base, seconds, None))
    latencies = []
    for run in range(runs):
        played, tone_at = asyncio.run(webrtc_play(base, seconds, 1.0 + 0.37 * run))
        first = first_difference(reference, played)
        if first < 0:
            raise RuntimeError("the microphone was never heard")
        latencies.append(first / 32000 - tone_at)
    return {"target_seconds": 1.0, **summary(latencies)}


# -- the engine: 8 sessions with and without input -------------------------------------------------------------------
def engine_cost(device: str, rounds: int, sessions: int = 8) -> dict:
    from engine.lm.precision import choose_weight_format
    from engine.work.settings import SessionSettings

    model = build_model(SMALL, device=device)
    weight_format = choose_weight_format("auto", device)[0]
    engine = Engine(model, EngineConfig(max_sessions=sessions, max_styles=1, weight_format=weight_format))
    settings = SessionSettings(styles=("jam",), weights=(1.0,), chunk_seconds=CHUNK)
    figures = {}
    try:
        for label, with_input in (("without_input", False), ("with_input", True), ("without_input_again", False)):
            opened = [engine.open_session(settings, seed=i) for i in range(sessions)]
            try:
                last = [f.result() for f in [s.next_chunk() for s in opened]]  # warm: prefill out of the timing
                started = time.perf_counter()
                for _ in range(rounds):
                    if with_input:
                        for session, chunk in zip(opened, last, strict=True):
                            receipt = session.play_input(tone(CHUNK, 48000), 48000, at=chunk.start_seconds)
                            assert receipt.dropped is None, receipt
                    last = [f.result() for f in [s.next_chunk() for s in opened]]
                wall = time.perf_counter() - started
            finally:
                for session in opened:
                    session.close()
            figures[label] = {"wall_seconds": round(wall, 3),
                              "audio_seconds_per_wall_second": round(sessions * rounds * CHUNK / wall, 4)}
    finally:
        engine.close()
    baseline = (figures["without_input"]["audio_seconds_per_wall_second"] +
                figures["without_input_again"]["audio_seconds_per_wall_second"]) / 2
    return {"model": "musicgen-small dims, random weights", "device": device, "weight_format": weight_format,
            "sessions": sessions, "chunk_seconds": CHUNK, "rounds": rounds, **figures,
            "ratio_with_vs_without": round(figures["with_input"]["audio_seconds_per_wall_second"] / baseline, 3),
            "target_ratio": 0.8}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="inputs measured per transport (at most 3)")
    parser.add_argument("--rounds", type=int, default=3, help="chunks timed per engine variant")
    parser.add_argument("--only", default="jam,webrtc,engine")
    parser.add_argument("--device", default="cpu", help="the engine part's device")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    results: dict = {"machine": cpu_description(), "command": "python -m benchmarks.play_along " + " ".join(
        f"--{k} {v}" for k, v in vars(args).items())}
    if "jam" in args.only or "webrtc" in args.only:
        patch = pytest.MonkeyPatch()
        loopback_only(patch)
        engine = Engine.load(None, config=EngineConfig(max_sessions=2))
        server = RunningServer(engine, ServerConfig(host="127.0.0.1", port=0)).start()
        try:
            if "jam" in args.only:
                results["ws_jam_realtime_0.48s_chunks"] = jam_latency(server.port, args.runs)
            if "webrtc" in args.only:
                results["webrtc"] = webrtc_latency(f"http://127.0.0.1:{server.port}", args.runs)
        finally:
            server.stop()
            engine.close()
            patch.undo()
    if "engine" in args.only:
        results["eight_sessions"] = engine_cost(args.device, args.rounds)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

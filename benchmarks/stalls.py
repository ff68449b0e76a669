"""Do predictions stall live sessions? Measured on the demo checkpoints (noise), printed as one JSON object with
the CPU it ran on.

    .venv/bin/python -m benchmarks.stalls [--weights PATH] [--seconds 20]
    .venv/bin/python -m benchmarks.stalls --heavy-through-cog

Through the engine's public API:
1. Two `asap` sessions take chunks back to back while a prediction of `--seconds` runs: each session's worst
   chunk interval during the prediction over its median interval (goal: at most 1.5).
2. A `realtime` listener (2 s chunks, the pump's one-chunk prefetch) while predictions run back to back: chunks
   that arrive after the previous one finished playing (goal: none).
With --heavy-through-cog, the heavy predictions through Cog's own HTTP server on predict.py (the melody demo,
which has MultiBand Diffusion weights too) while one `/ws/jam` session in `asap` pace (2 s chunks) runs on its
sidecar: a 30 s prediction with multi_band_diffusion, a 40 s and a 120 s melody prediction, one after the other.
For each: the session's worst chunk gap during it over its median gap then (goal: at most 1.5), and over the
session's median gap alone before the predictions; whether the sidecar's /health answered 200 throughout (polled
every 0.25 s); afterwards, whether every decoder row and slot came back.
"""

import argparse
import base64
import io
import json
import logging
import math
import os
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np
import requests
import soundfile as sf

from benchmarks.engine_bench import cpu_description
from engine.config import EngineConfig
from engine.core import Engine
from engine.work.batch import BatchRequest
from engine.work.session import SessionSettings

SETTINGS = SessionSettings(styles=("jazz", "hiphop"), weights=(1.0, 0.8), chunk_seconds=2.0)


def asap_intervals(engine: Engine, seconds: int) -> dict:
    stamps: dict[int, list[float]] = {0: [], 1: []}
    done = threading.Event()

    def listen(index: int) -> None:
        session = engine.open_session(SETTINGS, seed=index)
        try:
            session.next_chunk().result()
            while not done.is_set():
                session.next_chunk().result()
                stamps[index].append(time.monotonic())
        finally:
            session.close()

    threads = [threading.Thread(target=listen, args=(i,)) for i in stamps]
    for thread in threads:
        thread.start()
    time.sleep(3)
    started = time.monotonic()
    engine.generate(BatchRequest(prompt="long take", duration=seconds, seed=1)).wait()
    ended = time.monotonic()
    done.set()
    for thread in threads:
        thread.join()
    result = {"prediction_seconds": ended - started}
    for index, times in stamps.items():
        during = [b - a for a, b in zip(times, times[1:], strict=False) if a >= started and b <= ended]
        result[f"session_{index}"] = {"chunks_during": len(during), "median_interval": statistics.median(during),
                                      "worst_interval": max(during),
                                      "worst_over_median": max(during) / statistics.median(during)}
    return result


def realtime_late_chunks(engine: Engine, predictions: int, seconds: int) -> dict:
    """A listener that plays each chunk as it arrives, asking for the next one as the pump does."""
    session = engine.open_session(SETTINGS, seed=7)
    late, played_until, chunks, stop = 0, None, 0, threading.Event()

    def predict() -> None:
        for i in range(predictions):
            engine.generate(BatchRequest(prompt="back to back", duration=seconds, seed=i)).wait()
        stop.set()

    worker = threading.Thread(target=predict)
    try:
        pending = session.next_chunk()
        worker.start()
        while not stop.is_set():
            chunk = pending.result()
            now = time.monotonic()
            if played_until is not None and now > played_until:
                late += 1
            played_until = max(played_until or now, now) + chunk.seconds
            chunks += 1
            pending = session.next_chunk(deadline=played_until)
            time.sleep(max(0.0, played_until - chunk.seconds - time.monotonic()))  # the pacer keeps ~1 ahead
    finally:
        worker.join()
        session.close()
    return {"predictions": predictions, "prediction_seconds": seconds, "chunks": chunks, "late_chunks": late}


HEAVY = {"mbd_30s": {"prompt": "techno", "duration": 30, "multi_band_diffusion": True, "seed": 1},
         "melody_40s": {"prompt": "organ", "duration": 40, "seed": 2},
         "melody_120s": {"prompt": "organ", "duration": 120, "seed": 3}}
JAM_START = {"type": "start", "mode": "rt", "binary_audio": False,
             "params": {"styles": "jazz", "pace": "asap", "max_decode_frames": 50}}


def melody_uri(seconds: float = 20.0, rate: int = 32000) -> str:
    """A melody (one note per 2 s) as a data URI, which Cog's server takes for a file input."""
    t = np.arange(int(seconds * rate)) / rate
    notes = np.array([440.0, 660.0, 550.0, 330.0, 494.0])[(t // 2).astype(int) % 5]
    buffer = io.BytesIO()
    sf.write(buffer, 0.5 * np.sin(2 * math.pi * notes * t), rate, format="WAV", subtype="PCM_16")
    return "data:audio/wav;base64," + base64.b64encode(buffer.getvalue()).decode()


def heavy_through_cog(work: Path) -> dict:
    """The heavy predictions as a user sends them (Cog's server, predict.py, the sidecar in the same process), each
    measured against the session's chunk gaps and the sidecar's /health: what issue 15's targets are stated in."""
    from websockets.sync.client import connect

    from tests.support.cog_server import CogServer
    from tests.support.helpers import free_port
    from tests.support.jam_client import next_of
    from weights.demo import build

    weights = build(work / "melody", kind="melody")
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
               PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    jam_port = free_port()
    health_url = f"http://127.0.0.1:{jam_port}/health"
    server = CogServer(env, {"COG_WEIGHTS": str(weights), "JAM_PORT": str(jam_port), "JAM_HOST": "127.0.0.1",
                             "JAM_MAX_SESSIONS": "2"}).start()
    chunks: list[float] = []
    health: list[int] = []
    stop = threading.Event()

    def jam() -> None:
        with connect(f"ws://127.0.0.1:{jam_port}/ws/jam", max_size=None) as ws:
            ws.send(json.dumps(JAM_START))
            while not stop.is_set():
                next_of(ws, "chunk", timeout=120)
                chunks.append(time.monotonic())
            ws.send(json.dumps({"type": "stop"}))
            next_of(ws, "stopped")

    def poll_health() -> None:
        while not stop.is_set():
            health.append(requests.get(health_url, timeout=10).status_code)
            time.sleep(0.25)

    def gaps(start: float, end: float) -> list[float]:
        return [b - a for a, b in zip(chunks, chunks[1:], strict=False) if a >= start and b <= end]

    def worst_at(start: float, end: float) -> float:
        """Seconds into the prediction at which its worst gap began (where in the work the stall is)."""
        pairs = [(b - a, a) for a, b in zip(chunks, chunks[1:], strict=False) if a >= start and b <= end]
        return max(pairs)[1] - start

    threads = [threading.Thread(target=jam), threading.Thread(target=poll_health)]
    result: dict = {}
    try:
        for thread in threads:
            thread.start()
        time.sleep(20)
        alone = statistics.median(gaps(0, time.monotonic()))
        result["session_median_gap_alone"] = alone
        melody = melody_uri()
        for name, inputs in HEAVY.items():
            inputs = dict(inputs, input_audio=melody) if name.startswith("melody") else inputs
            polled, started = len(health), time.monotonic()
            body = requests.post(f"{server.url}/predictions", json={"input": inputs}, timeout=1800).json()
            ended = time.monotonic()
            during = gaps(started, ended)
            result[name] = {"status": body["status"], "error": body.get("error"), "seconds": ended - started,
                            "metrics": body.get("metrics"), "chunks_during": len(during),
                            "median_gap": statistics.median(during), "worst_gap": max(during),
                            "worst_over_median": max(during) / statistics.median(during),
                            "worst_over_median_alone": max(during) / alone,
                            "worst_gap_began_after": worst_at(started, ended),
                            "health_200_throughout": all(code == 200 for code in health[polled:])}
            logging.info("%s: %s", name, result[name])
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=180)
    time.sleep(2)  # the session's close reaches the engine
    after = requests.get(health_url, timeout=10).json()
    result["after"] = {"sessions": after["sessions"], "rows_in_use": after["model"]["rows_in_use"],
                       "status": after["status"]}
    server.stop()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default=None)
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--heavy-through-cog", action="store_true",
                        help="the 30 s MBD, 40 s and 120 s melody predictions through Cog's server beside a jam")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO if args.heavy_through_cog else logging.WARNING)
    if args.heavy_through_cog:
        work = Path(__file__).resolve().parent / ".work"
        print(json.dumps({"machine": cpu_description(), **heavy_through_cog(work)}, indent=1))
        return
    engine = Engine.load(args.weights, config=EngineConfig(max_sessions=3))
    try:
        result = {"machine": cpu_description(), "model": engine.describe(),
                  "asap_sessions_during_a_prediction": asap_intervals(engine, args.seconds),
                  "realtime_session_with_back_to_back_predictions": realtime_late_chunks(engine, 6, args.seconds)}
    finally:
        engine.close()
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

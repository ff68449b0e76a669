"""Time to first chunk, real-time factor and control latency of /ws/jam sessions, through a real sidecar and
WebSocket client. Control latency: from sending an `update` to receiving the first chunk generated with it
(asap), and to the moment a realtime listener starts hearing it (the chunk's place in the listener's timeline).

    .venv/bin/python -m benchmarks.jam_latency [--weights PATH] [--sessions 3] [--chunks 5]

Uses the default checkpoint (the demo when nothing was fetched). Prints one JSON object.
"""

import argparse
import json
import logging
import statistics
import time

from websockets.sync.client import connect

from engine.config import EngineConfig
from engine.core import Engine
from streaming.config import ServerConfig
from streaming.server import RunningServer

START = {"type": "start", "mode": "rt", "params": {"styles": "jazz, hiphop", "style_weights": "1,0.8",
                                                   "pace": "asap", "max_decode_frames": 50}}


def control_latency(port: int, pace: str) -> dict:
    """Sends an update after two chunks; measures when the first chunk made with it arrives and, at realtime
    pace, when the listener (playing chunks back to back from the first arrival) starts hearing it."""
    start = {**START, "params": {**START["params"], "pace": pace}}
    with connect(f"ws://127.0.0.1:{port}/ws/jam", max_size=None) as ws:
        ws.send(json.dumps(start))
        first_arrival, index, sent = None, 0, None
        while True:
            message = json.loads(ws.recv(timeout=120))
            if message["type"] == "status" and message.get("status") == "updated":
                applies_from = message["applies_from_chunk"]
            if message["type"] != "chunk":
                continue
            now = time.monotonic()
            first_arrival = first_arrival or now
            index = message["metadata"]["chunk_index"]
            if index == 1 and sent is None:
                sent = time.monotonic()
                ws.send(json.dumps({"type": "update", "styles": "ambient"}))
            elif sent is not None and message["metadata"]["styles"] == "ambient":
                heard = first_arrival + index * message["metadata"]["chunk_seconds"]
                return {"pace": pace, "applies_from_chunk": applies_from, "arrived_in_chunk": index,
                        "generated_seconds": round(now - sent, 3),
                        "heard_after_seconds": round(max(heard, now) - sent, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default=None)
    parser.add_argument("--sessions", type=int, default=3, help="sessions measured one after another")
    parser.add_argument("--chunks", type=int, default=5)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    engine = Engine.load(args.weights, config=EngineConfig(max_sessions=1))
    server = RunningServer(engine, ServerConfig(host="127.0.0.1", port=0)).start()
    first_chunk, factors = [], []
    try:
        for _ in range(args.sessions):
            with connect(f"ws://127.0.0.1:{server.port}/ws/jam") as ws:
                started = time.monotonic()
                ws.send(json.dumps(START))
                received = 0
                while received < args.chunks:
                    message = json.loads(ws.recv(timeout=120))
                    if message["type"] != "chunk":
                        continue
                    if received == 0:
                        first_chunk.append(time.monotonic() - started)
                    factors.append(message["metadata"]["real_time_factor"])
                    received += 1
        control = [control_latency(server.port, pace) for pace in ("asap", "realtime") for _ in range(2)]
    finally:
        server.stop()
        engine.close()
    print(json.dumps({"model": engine.describe(), "chunk_seconds": 2.0, "control_latency": control,
                      "time_to_first_chunk_seconds_median": statistics.median(first_chunk),
                      "real_time_factor_median": statistics.median(factors),
                      "real_time_factor_meaning": "wall seconds per second of audio; below 1 is faster than real time"},
                     indent=1))


if __name__ == "__main__":
    main()

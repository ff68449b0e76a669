"""Do predictions stall live sessions? Measured through the engine's public API on the demo checkpoint.

    .venv/bin/python -m benchmarks.stalls [--weights PATH] [--seconds 20]

1. Two `asap` sessions take chunks back to back while a prediction of `--seconds` runs: each session's worst
   chunk interval during the prediction over its median interval (goal: at most 1.5).
2. A `realtime` listener (2 s chunks, the pump's one-chunk prefetch) while predictions run back to back: chunks
   that arrive after the previous one finished playing (goal: none).
Prints one JSON object with the CPU it ran on.
"""

import argparse
import json
import logging
import statistics
import threading
import time

from benchmarks.engine_bench import cpu_description
from engine.batch import BatchRequest
from engine.config import EngineConfig
from engine.core import Engine
from engine.jam import JamSettings

SETTINGS = JamSettings(styles=("jazz", "hiphop"), weights=(1.0, 0.8), chunk_seconds=2.0)


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default=None)
    parser.add_argument("--seconds", type=int, default=20)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
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

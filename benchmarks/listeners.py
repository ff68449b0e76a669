"""Do realtime listeners hear gaps beside heavy work? Measured through Cog's own server on predict.py (the melody
demo: noise, with MultiBand Diffusion weights and a stem separator), printed as one JSON object with the CPU.

    .venv/bin/python -m benchmarks.listeners [--passes batch,listeners,asap] [--cases alone,mbd_30s,...] [--out FILE]

Pass `listeners`: two `/ws/jam` sessions in `pace: realtime`, 2 s chunks and 0.48 s chunks (`max_decode_frames`
12), each played as the seed's browser quick-start (seed 000) schedules it: the first chunk at its arrival + 0.12 s,
each next one at the previous start + its duration - the 25 ms crossfade; a chunk that arrives later than 50 ms
before its slot resets the clock (arrival + 0.12 s), which a person hears as a gap. Pass `asap`: one `/ws/jam`
session in `pace: asap` (2 s chunks), its gaps the intervals between chunk arrivals. Pass `batch`: no session, the
work's own time (batch throughput with no session live). In each pass the work below runs one case after the other
(each case's gaps are those from its start to 1 s after its end):
- `alone`: nothing for 15 s;
- `mbd_30s`: a 30 s prediction with `multi_band_diffusion`;
- `four_15s`: four 15 s predictions at once (the server runs with COG_MAX_CONCURRENCY=4);
- `melody_60s`, `melody_120s`: melody predictions of a 20 s melody (a chroma per 30 s window, stem separator);
- `recording_90s_wav`: the WAV download of a 90 s recording (a session played 90 s in asap pace before the cases);
- `gary_continuation`: a gary4juce continuation (`/api/juce/continue_music` of 12 s with a 6 s prompt, polled).
"""

import argparse
import base64
import io
import json
import logging
import os
import statistics
import sys
import threading
import time
import typing as tp
from pathlib import Path

import numpy as np
import requests
import soundfile as sf

from benchmarks.engine_bench import cpu_description
from benchmarks.stalls import melody_uri
from tests.support.seed_browser import BrowserSchedule

CASES = ("alone", "mbd_30s", "four_15s", "melody_60s", "melody_120s", "recording_90s_wav", "gary_continuation")
TAIL_SECONDS = 1.0  # a case's gaps are counted until this long after its work ended
RECORDING_SECONDS = 90


def start_message(frames: int, pace: str, styles: str) -> dict:
    return {"type": "start", "mode": "rt", "binary_audio": False,
            "params": {"styles": styles, "pace": pace, "max_decode_frames": frames}}


class Listener:
    """One /ws/jam session on its own thread. `browser`: the seed's quick-start schedule, a gap being a reset of its
    clock; else (asap) every chunk's arrival, a gap being the interval since the previous one."""

    def __init__(self, url: str, name: str, frames: int, pace: str) -> None:
        self.url, self.name, self.frames, self.pace = url, name, frames, pace
        self.arrivals: list[float] = []
        self.generation: list[float] = []  # each chunk's generation_seconds (the engine's: request to decoded)
        self.schedule = BrowserSchedule()  # realtime: how the seed's browser client plays them
        self.error: tp.Optional[str] = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> "Listener":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    def _run(self) -> None:
        from websockets.sync.client import connect

        try:
            with connect(self.url, max_size=None) as ws:
                ws.send(json.dumps(start_message(self.frames, self.pace, f"jazz {self.name}")))
                while not self._stop.is_set():
                    message = json.loads(ws.recv(timeout=120))
                    if message["type"] == "error":
                        raise RuntimeError(message.get("error"))
                    if message["type"] != "chunk":
                        continue
                    now = time.monotonic()
                    self.schedule.arrive(now, message["metadata"]["total_seconds"])
                    self.arrivals.append(now)
                    self.generation.append(message["metadata"]["generation_seconds"])
                ws.send(json.dumps({"type": "stop"}))
        except Exception as exc:  # reported in the results, never silently
            self.error = f"{type(exc).__name__}: {exc}"

    def during(self, start: float, end: float) -> dict:
        """What this listener heard between `start` and `end` (monotonic)."""
        if self.pace == "realtime":
            early = [e for a, e in zip(self.arrivals[1:], self.schedule.early, strict=True) if start <= a <= end]
            made = [g for a, g in zip(self.arrivals, self.generation, strict=True) if start <= a <= end]
            return {"chunks": len(made), "gaps": [round(t - start, 2) for t in self.schedule.gaps_between(start, end)],
                    "least_early_seconds": round(min(early), 3) if early else None,
                    "generation_seconds": {"median": round(statistics.median(made), 3),
                                           "worst": round(max(made), 3)} if made else None}
        intervals = [b - a for a, b in zip(self.arrivals, self.arrivals[1:], strict=False) if start <= a and b <= end]
        if not intervals:
            return {"chunks": 0}
        return {"chunks": len(intervals), "median_gap": round(statistics.median(intervals), 3),
                "worst_gap": round(max(intervals), 3)}


def record_session(url: str, seconds: int) -> str:
    """An asap session played for `seconds` of audio (2 s chunks), then stopped: its id, for the recording."""
    from websockets.sync.client import connect

    from tests.support.jam_client import next_of

    with connect(url, max_size=None) as ws:
        ws.send(json.dumps(start_message(50, "asap", "recorded")))
        session_id = next_of(ws, "started", timeout=120)["session_id"]
        for _ in range(seconds // 2):
            next_of(ws, "chunk", timeout=120)
        ws.send(json.dumps({"type": "stop"}))
        next_of(ws, "stopped", timeout=120)
    return session_id


def predict(cog_url: str, **inputs: tp.Any) -> dict:
    started = time.monotonic()
    body = requests.post(f"{cog_url}/predictions", json={"input": inputs}, timeout=1800).json()
    return {"status": body["status"], "error": body.get("error"), "seconds": round(time.monotonic() - started, 1)}


def at_once(calls: list[tp.Callable[[], dict]]) -> list[dict]:
    results: list[dict] = [{}] * len(calls)
    threads = [threading.Thread(target=lambda i=i, call=call: results.__setitem__(i, call()))
               for i, call in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def gary_continuation(jam_http: str) -> dict:
    from tests.support.gary_clients import JuceClient, wav_b64

    rate = 32000
    t = np.arange(12 * rate) / rate
    audio = wav_b64((0.3 * np.sin(2 * np.pi * 220.0 * t)).astype(np.float32), rate)
    juce = JuceClient(jam_http)
    started = time.monotonic()
    submitted = juce.continue_music(audio, juce.model_paths()[0], prompt_duration=6, seed=5)
    if not submitted.get("success"):
        raise RuntimeError(f"the continuation was refused: {submitted}")
    data, _ = juce.poll_until_done(submitted["session_id"], timeout=600)
    samples, _ = sf.read(io.BytesIO(base64.b64decode(data)))
    return {"status": "succeeded", "audio_seconds": round(len(samples) / rate, 2),
            "seconds": round(time.monotonic() - started, 1)}


def download(url: str) -> dict:
    started = time.monotonic()
    with requests.get(url, stream=True, timeout=600) as response:
        response.raise_for_status()
        size = sum(len(part) for part in response.iter_content(1 << 16))
    return {"status": "succeeded", "bytes": size, "seconds": round(time.monotonic() - started, 1)}


def case_work(name: str, cog_url: str, jam_http: str, recorded: str) -> tp.Callable[[], tp.Any]:
    melody = melody_uri()
    works: dict[str, tp.Callable[[], tp.Any]] = {
        "alone": lambda: time.sleep(15) or {"status": "succeeded"},
        "mbd_30s": lambda: predict(cog_url, prompt="techno", duration=30, multi_band_diffusion=True, seed=1),
        "four_15s": lambda: at_once([lambda i=i: predict(cog_url, prompt=f"take {i}", duration=15, seed=10 + i)
                                     for i in range(4)]),
        "melody_60s": lambda: predict(cog_url, prompt="organ", duration=60, seed=2, input_audio=melody),
        "melody_120s": lambda: predict(cog_url, prompt="organ", duration=120, seed=3, input_audio=melody),
        "recording_90s_wav": lambda: download(f"{jam_http}/sessions/{recorded}/recording?format=wav"),
        "gary_continuation": lambda: gary_continuation(jam_http),
    }
    return works[name]


def run_pass(kind: str, cases: list[str], cog_url: str, jam_port: int, recorded: str) -> dict:
    ws_url, jam_http = f"ws://127.0.0.1:{jam_port}/ws/jam", f"http://127.0.0.1:{jam_port}"
    listeners = {"listeners": [Listener(ws_url, "2s", 50, "realtime"), Listener(ws_url, "0.48s", 12, "realtime")],
                 "asap": [Listener(ws_url, "asap", 50, "asap")], "batch": []}[kind]
    for listener in listeners:
        listener.start()
    if listeners:
        time.sleep(8)  # the sessions' first chunks, their leads measured
    results: dict = {}
    try:
        for name in cases:
            if name == "alone" and not listeners:
                continue
            started = time.monotonic()
            outcome = case_work(name, cog_url, jam_http, recorded)()
            ended = time.monotonic()
            time.sleep(TAIL_SECONDS)
            results[name] = {"work": outcome, "seconds": round(ended - started, 1),
                             **{listener.name: listener.during(started, ended + TAIL_SECONDS)
                                for listener in listeners}}
            logging.info("%s %s: %s", kind, name, results[name])
    finally:
        for listener in listeners:
            listener.stop()
    errors = {listener.name: listener.error for listener in listeners if listener.error}
    if errors:
        results["errors"] = errors
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--passes", default="batch,listeners,asap")
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--out", default=None, help="also write the JSON here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    cases = [case for case in args.cases.split(",") if case]
    unknown = set(cases) - set(CASES) | set(args.passes.split(",")) - {"batch", "listeners", "asap"}
    if unknown:
        parser.error(f"unknown cases or passes: {', '.join(sorted(unknown))}")

    from tests.support.cog_server import CogServer
    from tests.support.helpers import free_port
    from weights.demo import build

    root = Path(__file__).resolve().parent.parent
    weights = build(root / "benchmarks" / ".work" / "melody", kind="melody")
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
               PYTHONPATH=str(root))
    jam_port = free_port()
    server = CogServer(env, {"COG_WEIGHTS": str(weights), "JAM_PORT": str(jam_port), "JAM_HOST": "127.0.0.1",
                             "JAM_MAX_SESSIONS": "4", "COG_MAX_CONCURRENCY": "4"}, root=root).start()
    results: dict = {"machine": cpu_description(), "load_before": os.getloadavg(),
                     "command": "python -m benchmarks.listeners " + " ".join(sys.argv[1:])}
    try:
        recorded = record_session(f"ws://127.0.0.1:{jam_port}/ws/jam", RECORDING_SECONDS)
        for kind in args.passes.split(","):
            results[kind] = run_pass(kind, cases, server.url, jam_port, recorded)
    finally:
        server.stop()
    results["load_after"] = os.getloadavg()
    text = json.dumps(results, indent=1)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()

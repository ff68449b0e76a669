"""Soak: Cog's real server on predict.py with the jam sidecar, under the mix a shared deployment meets.

    .venv/bin/python -m benchmarks.soak --minutes 30

For the given time: two listeners at realtime pace (1 s chunks, each played with the seed's browser quick-start
schedule, which counts what a person hears as a gap), two clients churning sessions (half of them drop the socket
without a close; others freeze under SIGSTOP, read slowly, connect and never start, or stop cleanly), garbage on the
Lyria path, predictions from two clients at once (COG_MAX_CONCURRENCY=2; a third of them bad: too-long prompts,
out-of-range values, undecodable audio) and a gary4juce job every 30 s (process, then continue the result). Reports
the worker's resident memory every minute and its growth from minute 2 (once every path has run) to the end,
sessions and decoder rows still held once every client is gone, answers that were not the expected one, and the
listeners' gaps. `--trim-seconds 0` turns off handing freed memory back (engine.runtime.host_memory), to compare.
"""

import argparse
import base64
import itertools
import json
import logging
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import requests
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests.support.cog_server import CogServer
from tests.support.gary_clients import JuceClient, wav_b64
from tests.support.helpers import free_port, wait_until
from tests.support.seed_browser import BrowserSchedule

logger = logging.getLogger("soak")
LYRIA_PATH = "/ws/google.ai.generativelanguage.v1alpha.GenerativeService.BidiGenerateMusic"
JAM_START = {"type": "start", "params": {"styles": "dub, techno", "pace": "realtime", "max_decode_frames": 50}}
GARY_EVERY_SECONDS = 30.0
WARM_UP_MINUTES = 2  # growth is counted from this minute: every path has run, the allocators have settled
SAMPLE_SECONDS = 5.0
FROZEN = textwrap.dedent("""
    import json, sys
    from websockets.sync.client import connect
    with connect(sys.argv[1], max_size=None) as ws:
        ws.send(json.dumps({"type": "start", "params": {"styles": "frozen", "pace": "asap"}}))
        while True:
            if json.loads(ws.recv())["type"] == "chunk":
                print("chunk", flush=True)
""")
LYRIA_GARBAGE = [b"\x00\xff not json", "{not json", json.dumps({"setup": {"model": 7}}),
                 json.dumps({"clientContent": {"weightedPrompts": "jazz"}}), json.dumps([1, 2, 3])]


class Soak:
    def __init__(self, minutes: float, trim_seconds: float = 10.0, warm_up: int = WARM_UP_MINUTES) -> None:
        """`warm_up`: the minute growth is counted from."""
        self.minutes, self.warm_up = minutes, warm_up
        self.deadline = 0.0  # set once the server is up
        self.jam_port = free_port()
        env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
                   PYTHONPATH=str(Path(__file__).resolve().parent.parent))
        # vanishing and frozen clients leave their sessions held for a resume (streaming.sessions.registry): a short
        # window keeps the churn from filling every slot, and has the soak exercise holds that expire
        self.cog = CogServer(env, {"JAM_PORT": str(self.jam_port), "JAM_HOST": "127.0.0.1", "JAM_MAX_SESSIONS": "4",
                                   "COG_MAX_CONCURRENCY": "2", "JAM_IDLE_SECONDS": "10", "JAM_PING_INTERVAL": "5",
                                   "JAM_PING_TIMEOUT": "5", "JAM_RESUME_SECONDS": "3",
                                   "MUSICGEN_TRIM_SECONDS": str(trim_seconds)})
        self.schedules: dict[str, BrowserSchedule] = {}
        self.worst_gap = 0.0  # the longest wait between two chunks of a listener
        self.unexpected: list[str] = []
        self.counts: dict[str, int] = {}
        self.lock = threading.Lock()

    def running(self) -> bool:
        return time.monotonic() < self.deadline

    def count(self, name: str) -> None:
        with self.lock:
            self.counts[name] = self.counts.get(name, 0) + 1

    def ws_url(self, path: str = "/ws/jam") -> str:
        return f"ws://127.0.0.1:{self.jam_port}{path}"

    def health(self) -> dict:
        return requests.get(f"http://127.0.0.1:{self.jam_port}/health", timeout=10).json()

    def guarded(self, name: str, work) -> None:
        """Runs `work` until the soak ends; a failure is recorded, never lost in a thread."""
        try:
            work()
        except Exception as exc:
            self.unexpected.append(f"{name}: {type(exc).__name__}: {exc}")

    # -- steady listeners ---------------------------------------------------------------------------------------
    def listener(self, name: str) -> None:
        schedule = self.schedules.setdefault(name, BrowserSchedule())
        last = None
        with connect(self.ws_url(), max_size=None) as ws:
            ws.send(json.dumps(JAM_START))
            while self.running():
                message = json.loads(ws.recv(timeout=60))
                if message.get("type") == "chunk":
                    now = time.monotonic()
                    schedule.arrive(now, message["metadata"]["total_seconds"])
                    if last is not None:
                        self.worst_gap = max(self.worst_gap, now - last)
                    last = now
            ws.send(json.dumps({"type": "stop"}))

    # -- churn --------------------------------------------------------------------------------------------------
    def churn(self, kinds: list[str]) -> None:
        for kind in itertools.cycle(kinds):
            if not self.running():
                return
            try:
                getattr(self, f"_{kind}")()
                self.count(f"churn_{kind}")
            except ConnectionClosed as exc:
                if exc.rcvd is None or exc.rcvd.code != 1013:  # 1013: every slot is taken (held ones too)
                    self.unexpected.append(f"churn {kind}: {exc}")
                self.count("churn_refused_full")
            except Exception as exc:  # a churn client failing is part of the weather, but say so
                self.unexpected.append(f"churn {kind}: {type(exc).__name__}: {exc}")
            time.sleep(2)

    def _first_chunk(self, ws) -> None:
        ws.send(json.dumps({**JAM_START, "params": {**JAM_START["params"], "pace": "asap"}}))
        while True:
            message = json.loads(ws.recv(timeout=60))
            if message["type"] == "chunk":
                return

    def _vanish(self) -> None:
        with connect(self.ws_url(), max_size=None) as ws:
            self._first_chunk(ws)
            ws.socket.shutdown(socket.SHUT_RDWR)  # the network drops: no closing handshake

    def _clean(self) -> None:
        with connect(self.ws_url(), max_size=None) as ws:
            self._first_chunk(ws)
            ws.send(json.dumps({"type": "stop"}))

    def _freeze(self) -> None:
        with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as script:
            script.write(FROZEN)
        process = subprocess.Popen([sys.executable, script.name, self.ws_url()], stdout=subprocess.PIPE, text=True)
        try:
            process.stdout.readline()
            os.kill(process.pid, signal.SIGSTOP)
            time.sleep(12)  # ping interval + timeout: the server must have dropped it by then
        finally:
            process.kill()
            process.wait()
            os.unlink(script.name)

    def _slow(self) -> None:
        sock = socket.create_connection(("127.0.0.1", self.jam_port))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
        with connect(self.ws_url(), sock=sock, max_size=None, max_queue=1) as ws:
            ws.send(json.dumps({**JAM_START, "params": {**JAM_START["params"], "pace": "asap"}}))
            for _ in range(4):
                time.sleep(3)
                ws.recv(timeout=60)

    def _idle(self) -> None:
        with connect(self.ws_url()) as ws:
            try:
                ws.recv(timeout=20)
            except Exception:  # the server closes idle sockets: that is the point
                return
            raise RuntimeError("an idle socket was not closed")

    def lyria_garbage(self) -> None:
        """Garbage on the Lyria path: every message must end its socket with a close, never a session."""
        for garbage in itertools.cycle(LYRIA_GARBAGE):
            if not self.running():
                return
            with connect(self.ws_url(LYRIA_PATH), max_size=None) as ws:
                ws.send(garbage)
                try:
                    while True:
                        ws.recv(timeout=30)
                except Exception:  # closed by the server, as it must be
                    pass
                if ws.close_code is None or ws.close_code == 1000:
                    self.unexpected.append(f"lyria garbage {garbage[:20]!r}: closed with {ws.close_code}")
            self.count("lyria_garbage")
            time.sleep(1)

    # -- predictions --------------------------------------------------------------------------------------------
    def predictions(self) -> None:
        garbage = "data:audio/wav;base64," + base64.b64encode(b"not audio at all" * 100).decode()
        cases = [
            ("good", {"prompt": "lo-fi", "duration": 4}, "succeeded"),
            ("good", {"prompt": "house", "duration": 2, "output_format": "mp3"}, "succeeded"),
            ("too_long_prompt", {"prompt": " ".join(["jazz"] * 700), "duration": 1}, "failed"),
            ("good", {"prompt": "drums", "duration": 6, "temperature": 0}, "succeeded"),
            ("out_of_range", {"prompt": "x", "temperature": 50}, 422),
            ("bad_audio", {"prompt": "x", "input_audio": garbage, "continuation": True, "duration": 1}, "failed"),
        ]
        random.shuffle(cases)
        for name, inputs, expected in itertools.cycle(cases):
            if not self.running():
                return
            response = requests.post(f"{self.cog.url}/predictions", json={"input": {**inputs, "seed": 1}},
                                     timeout=300)
            if response.status_code == 409:  # coglet's slot is freed a moment after the answer: try again
                self.count("prediction_409")
                time.sleep(0.2)
                continue
            outcome = response.status_code if response.status_code != 200 else response.json()["status"]
            self.count(f"prediction_{name}")
            if outcome != expected:
                self.unexpected.append(f"prediction {name}: {outcome} (expected {expected}): {response.text[:200]}")
            time.sleep(random.uniform(1, 4))

    def gary(self) -> None:
        """A gary4juce job every GARY_EVERY_SECONDS: process a recording, then continue what came back."""
        juce = JuceClient(f"http://127.0.0.1:{self.jam_port}", poll_seconds=1.0)
        rate = 44100
        t = np.arange(8 * rate) / rate
        source = wav_b64(np.stack([0.3 * np.sin(2 * np.pi * 220 * t)] * 2, axis=1), rate)
        previous = None
        while self.running():
            began = time.monotonic()
            started = (juce.process_audio(source, "demo", 4) if previous is None
                       else juce.continue_music(previous, "demo", 4))
            if not started.get("success"):
                self.unexpected.append(f"gary job refused: {str(started)[:200]}")
            else:
                result, _ = juce.poll_until_done(started["session_id"])
                previous = None if previous is not None else result  # continue once, then start afresh
                self.count("gary_job")
            time.sleep(max(0.0, GARY_EVERY_SECONDS - (time.monotonic() - began)))

    def sample_memory(self, worker: int, minutes: list) -> None:
        """The worker's resident memory every SAMPLE_SECONDS, as each minute's (floor, peak): the floor is what
        stays when no job is in flight (a gary continuation holds ~100 MB while it runs), so growth is read from
        floors."""
        started = time.monotonic()
        while self.running():
            minute, rss = int((time.monotonic() - started) // 60), _rss_mb(worker)
            if minute == len(minutes):
                minutes.append([rss, rss])
            minutes[minute] = [min(minutes[minute][0], rss), max(minutes[minute][1], rss)]
            time.sleep(SAMPLE_SECONDS)

    # -- the run ------------------------------------------------------------------------------------------------
    def run(self) -> dict:
        self.cog.start()
        self.deadline = time.monotonic() + self.minutes * 60
        try:
            worker = _worker_pid(self.cog.process.pid)
            minutes: list[list[float]] = []  # [floor, peak] of each minute
            work = [(f"listener{i}", lambda i=i: self.listener(f"listener{i}")) for i in range(2)]
            work += [("churn_a", lambda: self.churn(["vanish", "clean", "freeze"])),
                     ("churn_b", lambda: self.churn(["vanish", "slow", "vanish", "idle"])),
                     ("lyria_garbage", self.lyria_garbage), ("gary", self.gary),
                     ("memory", lambda: self.sample_memory(worker, minutes))]
            work += [(f"predictions{i}", self.predictions) for i in range(2)]
            threads = [threading.Thread(target=self.guarded, args=item) for item in work]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            # a closed session gives its slot back at once and its rows when the engine thread has removed its
            # stream: both must be back within 30 s, or they leaked
            wait_until(lambda: (lambda h: h["sessions"] == 0 and h["model"]["rows_in_use"] == 0)(self.health()), 30)
            health = self.health()
            end = _rss_mb(worker)
            # growth: the last whole minute's floor against the warm-up minute's
            last = min(len(minutes), int(self.minutes)) - 1
            growth = minutes[last][0] - minutes[self.warm_up][0] if last > self.warm_up else None
            return {"worker_rss_mb_start": minutes[0][0] if minutes else None, "worker_rss_mb_end": end,
                    "rss_growth_after_warm_up_mb": growth,
                    "rss_mb_floor_every_minute": [round(floor) for floor, _ in minutes],
                    "rss_mb_peak_every_minute": [round(peak) for _, peak in minutes],
                    "sessions_leaked": health["sessions"], "rows_leaked": health["model"]["rows_in_use"],
                    "health": health["status"], "unexpected": self.unexpected, "counts": self.counts,
                    "listener_chunks": {name: s.chunks for name, s in self.schedules.items()},
                    "listener_gaps": {name: len(s.gaps) for name, s in self.schedules.items()},
                    "worst_chunk_gap_seconds": self.worst_gap}
        finally:
            self.cog.stop()


def _worker_pid(server_pid: int) -> int:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != server_pid:
            try:
                if os.getpgid(int(entry.name)) == server_pid and b"python" in (entry / "cmdline").read_bytes():
                    return int(entry.name)
            except (ProcessLookupError, FileNotFoundError):
                continue
    raise RuntimeError("no Cog worker process found")


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--trim-seconds", type=float, default=10.0,
                        help="MUSICGEN_TRIM_SECONDS for the server (0: freed memory stays with the allocator)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "unknown")
    report = Soak(args.minutes, args.trim_seconds).run()
    print(json.dumps({"cpu": cpu, "cores": os.cpu_count(), "minutes": args.minutes,
                      "trim_seconds": args.trim_seconds, **report}, indent=1))
    sys.exit(1 if report["unexpected"] or report["sessions_leaked"] or report["rows_leaked"] else 0)


if __name__ == "__main__":
    main()

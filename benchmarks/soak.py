"""Soak: Cog's real server on predict.py with the jam sidecar, under everything a shared deployment meets.

    .venv/bin/python -m benchmarks.soak --minutes 30

For the given time: four steady listeners (two /ws/jam at realtime pace, two Lyria), a prediction every few
seconds (a third of them bad: too-long prompts, out-of-range values, undecodable audio), and a stream of clients
that vanish mid-session, freeze (SIGSTOP), read slowly, or connect and never start. Reports the worker's resident
memory at the start, after the first minute (once every code path has run and the allocators have settled) and at
the end, sessions and decoder rows still held once every client is gone, predictions whose outcome was not the
expected one, and the worst gap between two chunks of a steady listener.
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
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import requests
from websockets.sync.client import connect

from tests.support.cog_server import CogServer
from tests.support.helpers import free_port, wait_until

logger = logging.getLogger("soak")
LYRIA_PATH = "/ws/google.ai.generativelanguage.v1alpha.GenerativeService.BidiGenerateMusic"
JAM_START = {"type": "start", "params": {"styles": "dub, techno", "pace": "realtime", "max_decode_frames": 50}}
FROZEN = textwrap.dedent("""
    import json, sys
    from websockets.sync.client import connect
    with connect(sys.argv[1], max_size=None) as ws:
        ws.send(json.dumps({"type": "start", "params": {"styles": "frozen", "pace": "asap"}}))
        while True:
            if json.loads(ws.recv())["type"] == "chunk":
                print("chunk", flush=True)
""")


class Soak:
    def __init__(self, minutes: float) -> None:
        self.deadline = time.monotonic() + minutes * 60
        self.jam_port = free_port()
        env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
                   PYTHONPATH=str(Path(__file__).resolve().parent.parent))
        # vanishing and frozen clients leave their sessions held for a resume (streaming.sessions.registry): a short
        # window keeps the churn from filling every slot, and has the soak exercise holds that expire
        self.cog = CogServer(env, {"JAM_PORT": str(self.jam_port), "JAM_HOST": "127.0.0.1", "JAM_MAX_SESSIONS": "6",
                                   "JAM_IDLE_SECONDS": "10", "JAM_PING_INTERVAL": "5", "JAM_PING_TIMEOUT": "5",
                                   "JAM_RESUME_SECONDS": "3"})
        self.gaps: dict[str, list[float]] = {}
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

    # -- steady listeners ---------------------------------------------------------------------------------------
    def jam_listener(self, name: str) -> None:
        with connect(self.ws_url(), max_size=None) as ws:
            ws.send(json.dumps(JAM_START))
            self._listen(name, lambda: json.loads(ws.recv(timeout=60)).get("type") == "chunk")
            ws.send(json.dumps({"type": "stop"}))

    def lyria_listener(self, name: str) -> None:
        with connect(self.ws_url(LYRIA_PATH), max_size=None) as ws:
            ws.send(json.dumps({"setup": {"model": "models/lyria-realtime-exp"}}))
            ws.send(json.dumps({"clientContent": {"weightedPrompts": [{"text": "ambient piano", "weight": 1}]}}))
            ws.send(json.dumps({"playbackControl": "PLAY"}))
            self._listen(name, lambda: "serverContent" in json.loads(ws.recv(timeout=60)))

    def _listen(self, name: str, is_chunk) -> None:
        last, gaps = None, self.gaps.setdefault(name, [])
        while self.running():
            if is_chunk():
                now = time.monotonic()
                if last is not None:
                    gaps.append(now - last)
                last = now

    # -- churn --------------------------------------------------------------------------------------------------
    def churn(self) -> None:
        kinds = itertools.cycle(["vanish", "freeze", "slow", "idle"])
        while self.running():
            kind = next(kinds)
            try:
                getattr(self, f"_{kind}")()
                self.count(f"churn_{kind}")
            except Exception as exc:  # a churn client failing is part of the weather, but say so
                self.unexpected.append(f"churn {kind}: {type(exc).__name__}: {exc}")
            time.sleep(2)

    def _vanish(self) -> None:
        with connect(self.ws_url(), max_size=None) as ws:
            ws.send(json.dumps({**JAM_START, "params": {**JAM_START["params"], "pace": "asap"}}))
            while json.loads(ws.recv(timeout=60))["type"] != "chunk":
                pass
            ws.socket.shutdown(socket.SHUT_RDWR)  # the network drops: no closing handshake

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
        for name, inputs, expected in itertools.cycle(cases):
            if not self.running():
                return
            wait_until(lambda: requests.get(f"{self.cog.url}/health-check", timeout=5).json()["status"] == "READY",
                       60, interval=0.1)
            response = requests.post(f"{self.cog.url}/predictions", json={"input": {**inputs, "seed": 1}},
                                     timeout=300)
            outcome = response.status_code if response.status_code != 200 else response.json()["status"]
            self.count(f"prediction_{name}")
            if outcome != expected:
                self.unexpected.append(f"prediction {name}: {outcome} (expected {expected}): {response.text[:200]}")
            time.sleep(random.uniform(1, 4))

    def sample_memory(self, worker: int, samples: list) -> None:
        started = time.monotonic()
        while self.running():
            samples.append((time.monotonic() - started, _rss_mb(worker)))
            time.sleep(min(60.0, max(0.0, self.deadline - time.monotonic())))

    # -- the run ------------------------------------------------------------------------------------------------
    def run(self) -> dict:
        self.cog.start()
        try:
            worker = _worker_pid(self.cog.process.pid)
            rss_start = _rss_mb(worker)
            threads = [threading.Thread(target=self.jam_listener, args=(f"jam{i}",)) for i in range(2)]
            threads += [threading.Thread(target=self.lyria_listener, args=(f"lyria{i}",)) for i in range(2)]
            threads += [threading.Thread(target=self.churn), threading.Thread(target=self.predictions)]
            samples: list[tuple[float, float]] = []
            threads.append(threading.Thread(target=self.sample_memory, args=(worker, samples)))
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            # a closed session gives its slot back at once and its rows when the engine thread has removed its
            # stream: both must be back within 30 s, or they leaked
            wait_until(lambda: (lambda h: h["sessions"] == 0 and h["model"]["rows_in_use"] == 0)(self.health()), 30)
            health = self.health()
            gaps = [g for name_gaps in self.gaps.values() for g in name_gaps]
            return {"worker_rss_mb_start": rss_start, "worker_rss_mb_end": _rss_mb(worker),
                    "rss_growth_mb": _rss_mb(worker) - rss_start,
                    "rss_growth_after_first_minute_mb": _rss_mb(worker) - samples[1][1] if len(samples) > 1 else None,
                    "rss_mb_every_minute": [round(rss) for t, rss in samples],
                    "sessions_leaked": health["sessions"], "rows_leaked": health["model"]["rows_in_use"],
                    "health": health["status"], "unexpected": self.unexpected, "counts": self.counts,
                    "steady_chunks": len(gaps), "median_chunk_gap_seconds": statistics.median(gaps) if gaps else None,
                    "worst_chunk_gap_seconds": max(gaps) if gaps else None}
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
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    report = Soak(args.minutes).run()
    print(json.dumps({"minutes": args.minutes, **report}, indent=1))
    sys.exit(1 if report["unexpected"] or report["sessions_leaked"] or report["rows_leaked"] else 0)


if __name__ == "__main__":
    main()

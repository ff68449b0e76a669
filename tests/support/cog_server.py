"""Starts Cog's own HTTP server (coglet) on predict.py, bound to 127.0.0.1 on a free port, and stops it; and a
client's synchronous prediction against it."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

from tests.support import ROOT
from tests.support.helpers import free_port, wait_until


class CogServer:
    def __init__(self, env: dict, extra_env: dict | None = None, log_path: Path | None = None,
                 root: Path = ROOT, python: str = sys.executable, args: tuple[str, ...] = ()) -> None:
        """`python` is the interpreter whose Cog SDK serves (the rehearsed image's, in scripts/rehearse_image.py);
        `args` go to `cog.server.http` (e.g. `--await-explicit-shutdown true`, as deploy/kubernetes.yaml runs it)."""
        self.root = root
        self.python = python
        self.args = tuple(args)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path or Path(f"/tmp/cog-server-{self.port}.log")
        self.env = dict(env, PORT=str(self.port), COG_PREDICT_TYPE_STUB="predict.py:Predictor", **(extra_env or {}))
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 180) -> "CogServer":
        log = open(self.log_path, "wb")
        self.process = subprocess.Popen([self.python, "-m", "cog.server.http", "--host", "127.0.0.1", *self.args],
                                        cwd=self.root, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"cog server exited early:\n{self.log_path.read_text()[-4000:]}")
            try:
                status = requests.get(f"{self.url}/health-check", timeout=2).json()
                if status.get("status") == "READY":
                    return self
                if status.get("status") in ("SETUP_FAILED", "DEFUNCT"):
                    raise RuntimeError(f"cog setup failed: {status}")
            except requests.RequestException:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"cog server not READY in {timeout} s:\n{self.log_path.read_text()[-4000:]}")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def wait_ready(cog: CogServer, timeout: float = 10) -> None:
    """coglet frees its single slot a moment after answering; a request sent in that moment is refused with
    "At capacity", so each test waits for READY as a client of a one-slot server should."""
    assert wait_until(lambda: requests.get(f"{cog.url}/health-check", timeout=5).json()["status"] == "READY",
                      timeout, interval=0.05)


def predict(cog: CogServer, timeout: float = 300, **inputs) -> requests.Response:
    """A synchronous prediction of `inputs`, once the server is READY."""
    wait_ready(cog)
    return requests.post(f"{cog.url}/predictions", json={"input": inputs}, timeout=timeout)

"""The sidecar under test: one factory for a running server on 127.0.0.1 (a free port), and its addresses.

Every test that needs a sidecar gets it here (conftest's module-scoped `server` fixture, `running_server` for a
server of its own, `start_server` where the test stops it itself), so that how a test server is made is written
once."""

import contextlib
import typing as tp

import requests

from streaming.app.config import ServerConfig
from streaming.app.server import RunningServer


def start_server(engine, **config: tp.Any) -> RunningServer:
    """A started sidecar on `engine` at 127.0.0.1 on a free port; `config` sets other ServerConfig fields
    (resume_seconds, idle_seconds, token...). The caller stops it."""
    return RunningServer(engine, ServerConfig(host="127.0.0.1", port=0, **config)).start()


@contextlib.contextmanager
def running_server(engine, **config: tp.Any) -> tp.Iterator[RunningServer]:
    """`start_server`'s sidecar, stopped when the block ends, however it ends."""
    running = start_server(engine, **config)
    try:
        yield running
    finally:
        running.stop()


def ws_url(server: RunningServer, path: str = "/ws/jam") -> str:
    return f"ws://127.0.0.1:{server.port}{path}"


def http_url(server: RunningServer, path: str = "") -> str:
    return f"http://127.0.0.1:{server.port}{path}"


def sessions(server: RunningServer) -> int:
    """The sessions the server's /health counts (open and held ones)."""
    return requests.get(http_url(server, "/health"), timeout=5).json()["sessions"]

"""Fixtures shared across the tree: the demo checkpoint and its engine, the demo families (each built once per
session), a sidecar per module, Cog's own server, and the injected failures. Helpers and clients are in
tests/support; the imports that need the project's heavier dependencies stay inside the fixtures, so that a
subset of the tests (benchmarks/gpu/check.py runs tests/engine/test_cuda.py in a bare image) collects without
them."""

import functools
import http.server
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from weights import DEMO_DIR

# tests/support holds assertion helpers too: their failures explain themselves as a test's own asserts do
pytest.register_assert_rewrite("tests.support")


def ensure_demo() -> Path:
    """The demo checkpoint is built by setup; build it here too so a bare `pytest` works."""
    if not (DEMO_DIR / "state_dict.bin").is_file():
        from tests.support import ROOT

        subprocess.run([sys.executable, "-m", "weights.demo"], cwd=ROOT, check=True)
    return DEMO_DIR


@pytest.fixture(scope="session")
def demo_dir() -> Path:
    return ensure_demo()


@pytest.fixture(scope="session")
def engine(demo_dir):
    """The demo model with two session slots (the limit the server tests exercise), in float32: the tests compare
    it with audiocraft's own float32 LM."""
    from engine.config import EngineConfig
    from engine.core import Engine

    eng = Engine.load(demo_dir, device="cpu", config=EngineConfig(max_sessions=2, weight_format="float32"))
    yield eng
    eng.close()


@pytest.fixture(scope="session")
def venv_env() -> dict:
    """Environment for subprocesses: the interpreter's bin first on PATH (Cog spawns its worker as `python`)."""
    from tests.support import ROOT

    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(ROOT)
    return env


@pytest.fixture(scope="session")
def cog(venv_env, demo_dir):
    """Cog's own HTTP server on predict.py with the demo checkpoint, its jam sidecar on a free port."""
    from tests.support.cog_server import CogServer
    from tests.support.helpers import free_port

    jam_port = free_port()
    server = CogServer(venv_env, {"JAM_PORT": str(jam_port), "JAM_HOST": "127.0.0.1", "JAM_MAX_SESSIONS": "2"})
    server.jam_url = f"ws://127.0.0.1:{jam_port}/ws/jam"
    server.start()
    yield server
    server.stop()


@pytest.fixture
def file_server(tmp_path):
    """A local HTTP server for input files: yields (base URL, the directory it serves)."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", tmp_path
    server.shutdown()


@pytest.fixture
def word(request) -> str:
    """A style word of this test's own (a session of an earlier test, still closing, never carries it)."""
    return f"word{abs(hash(request.node.name)) % 10**6}"


@pytest.fixture
def marker(monkeypatch, word) -> str:
    """`word`, and the first decode step of a stream styled with it fails once (a transient failure)."""
    from engine.runtime.streams import Stream

    real = Stream.accept_tokens
    state = {"failed": False}

    def accept(self, tokens):
        if not state["failed"] and any(word in text for text in self.conditioning.texts):
            state["failed"] = True
            raise RuntimeError("injected transient failure")
        return real(self, tokens)

    monkeypatch.setattr(Stream, "accept_tokens", accept)
    return word


@pytest.fixture(scope="module")
def loopback():
    """WebRTC on 127.0.0.1 (tests.support.webrtc_client.loopback_only) from the first test of a module that asks
    for it to the module's end (a module-scoped server's peers need it too)."""
    from tests.support.webrtc_client import loopback_only

    with pytest.MonkeyPatch.context() as patch:
        loopback_only(patch)
        yield


@pytest.fixture(scope="module")
def server_config() -> dict:
    """ServerConfig fields of the module's `server` beyond its address (127.0.0.1, a free port): a module that
    needs others (resume_seconds, idle_seconds...) overrides this fixture."""
    return {}


@pytest.fixture(scope="module")
def server(engine, server_config):
    """A sidecar on the session's engine, one per module (tests.support.servers.running_server)."""
    from tests.support.servers import running_server

    with running_server(engine, **server_config) as running:
        yield running


@pytest.fixture(scope="session")
def demo_family(tmp_path_factory):
    """kind -> the checkpoint directory of that demo family (weights.demo.KINDS: melody, stereo...), each built on
    first use and once per session (with one MBD band, where the main demo has four)."""
    from weights.demo import build

    built: dict[str, Path] = {}

    def get(kind: str) -> Path:
        if kind not in built:
            built[kind] = build(tmp_path_factory.mktemp(kind), n_bands=1, kind=kind)
        return built[kind]

    return get

"""How the sidecar runs: on its own thread and event loop inside Cog's worker (or a test), or standalone.

    python -m streaming.app.server [--weights PATH]     # standalone: loads the engine itself; SIGTERM drains

Inside Cog (`serve_inside_cog`, from the predictor's setup) a SIGTERM drains too, as far as coglet 0.23.1 allows.
Its server is two processes in one process group: the parent (Rust: HTTP, the prediction slots) and the worker
(Python: setup(), predictions, this sidecar). On SIGTERM the parent stops accepting, waits for the HTTP requests in
flight, sends the worker `Shutdown` and exits without waiting for it; in a container tini then exits and the
worker is killed. The worker itself hears nothing unless the signal goes to the whole group (tini `-g`, or
`TINI_KILL_PROCESS_GROUP=1`), and its main thread sits in Rust, so a Python signal handler never runs there. With
`python -m cog.server.http --await-explicit-shutdown true` the parent ignores SIGTERM (the worker inherits that)
and ends on `POST /shutdown`. So the worker's setup() installs a SIGTERM handler whose C part writes to a
`signal.set_wakeup_fd` socket that a thread of ours reads: the drain starts at once, and when it is over the sidecar
posts Cog's `/shutdown`, after which the parent lets running predictions finish and ends the worker. Without the
flag Cog's own SIGTERM path still ends the worker at once; deploy/kubernetes.yaml sets both.

Everything it serves is in streaming.app.routes; the protocols are in streaming/<protocol>/protocol.py, their
socket shells in streaming/<protocol>/ws.py, pacing in streaming.sessions.pump.
"""

import argparse
import asyncio
import logging
import os
import signal
import socket
import threading
import time
import typing as tp
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import uvicorn

from streaming.app.capacity import Drain, serve_agent
from streaming.app.config import ServerConfig
from streaming.app.guard import exposure_warning
from streaming.app.routes import build_app
from streaming.gary.protocol import MAX_BODY_BYTES
from streaming.jobs.table import JobTable
from streaming.sessions.registry import SessionRegistry

logger = logging.getLogger(__name__)

# larger frames are closed by the server (1009); each protocol refuses its oversized messages with an error below
# this. gary4live's Socket.IO events carry whole audio files (streaming.gary.protocol.MAX_BODY_BYTES).
WS_MAX_BYTES = MAX_BODY_BYTES + 1024 * 1024


class RunningServer:
    """A uvicorn server (and the agent-check port, when configured) on its own thread and event loop, with its
    pool for blocking engine calls."""

    def __init__(self, engine, config: ServerConfig) -> None:
        self.config = config
        self.engine = engine
        self.loop: tp.Optional[asyncio.AbstractEventLoop] = None
        self.agent: tp.Optional[asyncio.AbstractServer] = None
        self.blocking = ThreadPoolExecutor(config.blocking_threads, thread_name_prefix="jam-blocking")
        self.jobs = JobTable(engine, max_bytes=config.job_bytes)
        self.registry = SessionRegistry.from_config(config)
        self.drain = Drain(engine, config.drain_seconds, self.jobs, self.registry)
        self.server = uvicorn.Server(uvicorn.Config(
            build_app(engine, config, self.blocking, self.drain, self.jobs, self.registry), host=config.host,
            port=config.port,            log_level="warning",
            lifespan="off", ws_max_size=WS_MAX_BYTES, ssl_certfile=config.ssl_certfile, ssl_keyfile=config.ssl_keyfile,
            ws_ping_interval=config.ping_interval or None, ws_ping_timeout=config.ping_timeout or None))
        self.thread = threading.Thread(target=lambda: asyncio.run(self._serve()), name="jam-sidecar", daemon=True)

    async def _serve(self) -> None:
        self.loop = asyncio.get_running_loop()
        if self.config.agent_port is not None:
            self.agent = await serve_agent(self.config.host, self.config.agent_port, self.drain.capacity)
        try:
            await self.server.serve()
        finally:
            self.registry.close()  # held sessions give their slots back
            if self.agent is not None:
                self.agent.close()

    def start(self, timeout: float = 30) -> "RunningServer":
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"jam sidecar failed to start on {self.config.host}:{self.config.port}")
            time.sleep(0.05)
        scheme = "wss" if self.config.ssl_certfile else "ws"
        logger.info("jam sidecar listening on %s://%s:%d/ws/jam", scheme, self.config.host, self.port)
        warning = exposure_warning(self.config)
        if warning:
            logger.warning("%s\n!!! %s\n%s", "!" * 100, warning, "!" * 100)
        return self

    @property
    def port(self) -> int:
        return self.server.servers[0].sockets[0].getsockname()[1]

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.blocking.shutdown(wait=False, cancel_futures=True)  # a call still running ends with its engine job
        self.jobs.close()  # cancels the DAW clients' jobs still queued or running

    def drain_then(self, finish: tp.Callable[[], None]) -> None:
        """From any thread (a SIGTERM handler): drain, then run `finish` (off the loop) once the drain is done."""
        async def drain_and_finish() -> None:
            self.drain.start()
            await self.drain.done.wait()
            await asyncio.get_running_loop().run_in_executor(None, finish)

        if self.loop is None:  # not serving yet: there is nothing to drain
            self.server.should_exit = True
            return
        asyncio.run_coroutine_threadsafe(drain_and_finish(), self.loop)

    def drain_then_stop(self) -> None:
        """From any thread: drain, then stop serving once the drain is done (the standalone sidecar's SIGTERM)."""
        self.drain_then(lambda: setattr(self.server, "should_exit", True))


def serve_inside_cog(engine, config: ServerConfig) -> tp.Optional[RunningServer]:
    """From the predictor's setup() in Cog's worker: starts the sidecar on `engine` (unless JAM_PORT is 0; it runs
    for the worker's life, on a daemon thread) and makes a SIGTERM to the worker drain it, then ask Cog's server to
    shut down (module docstring). Returns the running sidecar, or None when it is off."""
    server = RunningServer(engine, config).start() if config.port != 0 else None
    cog_url = f"http://127.0.0.1:{os.environ.get('PORT', '5000')}/shutdown"

    def terminated() -> None:
        logger.info("SIGTERM: %s, then Cog's server is asked to shut down",
                    "draining the jam sidecar" if server else "no jam sidecar to drain")
        if server is None:
            shut_down_cog(cog_url)
        else:
            server.drain_then(lambda: shut_down_cog(cog_url))

    if threading.current_thread() is not threading.main_thread():
        logger.warning("setup() does not run on the main thread: a SIGTERM will not drain the jam sidecar (use the "
                       "preStop hook's POST /admin/drain?wait=true)")
    else:
        on_sigterm(terminated)
    return server


def on_sigterm(callback: tp.Callable[[], None]) -> None:
    """Calls `callback` (on a thread of its own, once per signal) when the process gets SIGTERM, also while the main
    thread runs native code and never returns to Python: the C handler Python installs writes the signal's number
    to the wakeup socket. Call from the main thread."""
    reader, writer = socket.socketpair()
    writer.setblocking(False)
    signal.signal(signal.SIGTERM, lambda signum, frame: None)  # the wakeup socket does the work
    previous = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
    if previous != -1:
        logger.warning("replaced the process's signal wakeup fd %d: SIGTERM now drains the jam sidecar", previous)

    def watch(ends: tuple[socket.socket, socket.socket]) -> None:
        """Reads the wakeup socket; the thread holds both ends open for the process's life."""
        while data := ends[0].recv(64):
            if signal.SIGTERM in data:
                callback()

    threading.Thread(target=watch, args=((reader, writer),), name="sigterm-watch", daemon=True).start()


def shut_down_cog(url: str) -> None:
    """Asks Cog's server (coglet, started with --await-explicit-shutdown) to shut down: it lets the predictions in
    flight finish, then ends the worker. Without that flag it is already shutting down and refuses the
    connection."""
    try:
        urllib.request.urlopen(urllib.request.Request(url, method="POST"), timeout=10).close()
        logger.info("asked Cog's server to shut down (%s)", url)
    except (urllib.error.URLError, OSError) as exc:
        logger.info("Cog's server did not take the shutdown request (%s): it is shutting down on its own", exc)


def main() -> None:
    from engine.api import Engine, EngineConfig

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default=os.environ.get("COG_WEIGHTS"), help="checkpoint (default: weights/)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    engine = Engine.load(args.weights, config=EngineConfig.from_env())
    server = RunningServer(engine, ServerConfig.from_env())
    # SIGTERM (a rolling update, `docker stop`): live jams get JAM_DRAIN_SECONDS to end, then the process exits.
    # Installed before the server starts: a client can open a session within the 50 ms start() takes to see the
    # server up, and a SIGTERM then must drain it, not end the process.
    signal.signal(signal.SIGTERM, lambda signum, frame: server.drain_then_stop())
    server.start()
    try:
        server.thread.join()
    except KeyboardInterrupt:
        server.stop()
    engine.close()


if __name__ == "__main__":
    main()

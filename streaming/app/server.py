"""How the sidecar runs: on its own thread and event loop inside Cog's worker (or a test), or standalone.

    python -m streaming.app.server [--weights PATH]     # standalone: loads the engine itself; SIGTERM drains

Everything it serves is in streaming.app.routes; the protocols are in streaming/<protocol>/protocol.py, their
socket shells in streaming/<protocol>/ws.py, pacing in streaming.sessions.pump.
"""

import argparse
import asyncio
import logging
import os
import signal
import threading
import time
import typing as tp
from concurrent.futures import ThreadPoolExecutor

import uvicorn

from streaming.app.capacity import Drain, serve_agent
from streaming.app.config import ServerConfig
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
        self.jobs = JobTable(engine)
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
        return self

    @property
    def port(self) -> int:
        return self.server.servers[0].sockets[0].getsockname()[1]

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.blocking.shutdown(wait=False, cancel_futures=True)  # a call still running ends with its engine job
        self.jobs.close()  # cancels the DAW clients' jobs still queued or running

    def drain_then_stop(self) -> None:
        """From any thread (a SIGTERM handler): drain, then stop serving once the drain is done."""
        async def drain_and_exit() -> None:
            self.drain.start()
            await self.drain.done.wait()
            self.server.should_exit = True

        asyncio.run_coroutine_threadsafe(drain_and_exit(), self.loop)


def main() -> None:
    from engine.api import Engine, EngineConfig

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default=os.environ.get("COG_WEIGHTS"), help="checkpoint (default: weights/)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    engine = Engine.load(args.weights, config=EngineConfig.from_env())
    server = RunningServer(engine, ServerConfig.from_env()).start()
    # SIGTERM (a rolling update, `docker stop`): live jams get JAM_DRAIN_SECONDS to end, then the process exits.
    signal.signal(signal.SIGTERM, lambda signum, frame: server.drain_then_stop())
    try:
        server.thread.join()
    except KeyboardInterrupt:
        server.stop()
    engine.close()


if __name__ == "__main__":
    main()

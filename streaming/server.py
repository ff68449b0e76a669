"""The sidecar's ASGI app and how it runs: on its own thread inside Cog's worker, or standalone.

    python -m streaming.server [--weights PATH]     # standalone: loads the engine itself

Protocol logic lives in the protocol modules; this module only moves messages between sockets and the engine,
paces chunks, enforces auth and the session limit, and frees sessions when clients leave.
"""

import argparse
import asyncio
import logging
import os
import threading
import time
import typing as tp

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from engine.audio import StreamingResampler, pcm16_bytes
from engine.batch import random_seed
from engine.jam import JamSession
from streaming import jam_protocol as jp
from streaming import lyria_protocol as lp
from streaming.config import ServerConfig

logger = logging.getLogger(__name__)

WS_MAX_BYTES = 1024 * 1024  # larger frames are closed by the server (1009); smaller oversized ones get an error
NOISE_NOTICE = "demo checkpoint with random weights: this audio is noise, not music"


class SessionLimit:
    """Counts live sessions on the event loop thread (no locking needed there)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.active = 0

    def try_acquire(self) -> bool:
        if self.active >= self.limit:
            return False
        self.active += 1
        return True

    def release(self) -> None:
        self.active -= 1


def authorized(headers: tp.Mapping[str, str], query: tp.Mapping[str, str], token: tp.Optional[str],
               extra_header: tp.Optional[str] = None, extra_query: tp.Optional[str] = None) -> bool:
    """JAM_TOKEN as a `token` query parameter or bearer header (plus a protocol's own key field, if any)."""
    if token is None:
        return True
    offered = [query.get("token"), headers.get("authorization", "").removeprefix("Bearer ").strip() or None]
    if extra_header:
        offered.append(headers.get(extra_header))
    if extra_query:
        offered.append(query.get(extra_query))
    return any(candidate == token for candidate in offered if candidate)


class Pacer:
    """Keeps a realtime stream at most `ahead_chunks` chunks ahead of the listener's clock (which starts at the
    first send); "asap" sends as fast as chunks are generated."""

    def __init__(self, pace: str, ahead_chunks: float = 1.0) -> None:
        self.pace = pace
        self.ahead_chunks = ahead_chunks
        self.started: tp.Optional[float] = None
        self.sent_seconds = 0.0

    async def before_send(self, chunk_seconds: float) -> None:
        if self.pace != "realtime" or self.started is None:
            return
        ahead = self.sent_seconds - (time.monotonic() - self.started)
        allowed = self.ahead_chunks * chunk_seconds
        if ahead > allowed:
            await asyncio.sleep(ahead - allowed)

    def sent(self, seconds: float) -> None:
        if self.started is None:
            self.started = time.monotonic()
        self.sent_seconds += seconds


class ChunkPump:
    """Requests a session's chunks one after another, paces them and hands them to `send_chunk`.

    Stopping keeps the chunk in flight (the engine finishes it anyway) so that a resumed pump plays it next:
    pausing never skips audio.
    """

    def __init__(self, session: JamSession, pacer: Pacer,
                 send_chunk: tp.Callable[[tp.Any], tp.Awaitable[None]],
                 on_error: tp.Callable[[Exception], tp.Awaitable[None]]) -> None:
        self.session = session
        self.pacer = pacer
        self.send_chunk = send_chunk
        self.on_error = on_error
        self._inflight: tp.Optional[asyncio.Future] = None
        self._task: tp.Optional[asyncio.Task] = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
            self._task = None

    async def _run(self) -> None:
        try:
            while True:
                if self._inflight is None:
                    self._inflight = asyncio.wrap_future(self.session.next_chunk())
                chunk = await asyncio.shield(self._inflight)
                self._inflight = None
                await self.pacer.before_send(chunk.seconds)
                await self.send_chunk(chunk)
                self.pacer.sent(chunk.seconds)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # generation failed: tell the client, keep the connection
            logger.exception("jam session failed")
            try:
                await self.on_error(exc)
            except Exception:  # the client is gone as well
                pass


class Connection:
    """The I/O shell of one WebSocket client: a reader loop handing frames to the protocol subclass, sends
    serialised by a lock, and the session and chunk pump it owns, freed however the connection ends."""

    def __init__(self, websocket: WebSocket, engine) -> None:
        self.ws = websocket
        self.engine = engine
        self.session: tp.Optional[JamSession] = None
        self.pump: tp.Optional[ChunkPump] = None
        self.send_lock = asyncio.Lock()

    async def send(self, *messages: tp.Union[str, bytes]) -> None:
        async with self.send_lock:  # messages of one call stay adjacent (a binary chunk and its chunk_meta)
            for message in messages:
                if isinstance(message, bytes):
                    await self.ws.send_bytes(message)
                else:
                    await self.ws.send_text(message)

    async def run(self) -> None:
        try:
            while True:
                message = await self.ws.receive()
                if message["type"] == "websocket.disconnect":
                    return
                frame = message["bytes"] if message.get("bytes") is not None else message.get("text") or ""
                if not await self.on_frame(frame):
                    return
        except WebSocketDisconnect:
            return
        finally:
            await self.end_session()

    async def on_frame(self, frame: tp.Union[str, bytes]) -> bool:
        """Handles one client frame; False ends the connection."""
        raise NotImplementedError

    def parse(self, frame: tp.Union[str, bytes]):
        """The protocol's reading of one frame (both protocols take text and bytes frames apart)."""
        if isinstance(frame, bytes):
            return self.protocol.receive_bytes(frame)
        return self.protocol.receive_text(frame)

    async def send_chunk(self, chunk) -> None:
        raise NotImplementedError

    async def report_failure(self, exc: Exception) -> None:
        raise NotImplementedError

    async def start_session(self, settings, seed: int, pacer: Pacer) -> None:
        """Opens a jam session on the engine (off the event loop) and starts pumping its chunks."""
        loop = asyncio.get_running_loop()
        self.session = await loop.run_in_executor(None, self.engine.open_session, settings, seed)
        self.pump = ChunkPump(self.session, pacer, self.send_chunk, self.report_failure)
        self.pump.start()

    async def end_session(self) -> None:
        if self.pump is not None:
            await self.pump.stop()
            self.pump = None
        if self.session is not None:
            self.session.close()
            self.session = None


class JamConnection(Connection):
    """/ws/jam: JSON control messages in; base64 WAV chunks (or binary WAV + chunk_meta) out."""

    def __init__(self, websocket: WebSocket, engine, noise_notice: tp.Optional[str]) -> None:
        super().__init__(websocket, engine)
        self.noise_notice = noise_notice
        self.protocol = jp.JamProtocol()
        self.pacer = Pacer("asap")
        self.binary = False

    async def on_frame(self, frame: tp.Union[str, bytes]) -> bool:
        try:
            command = self.parse(frame)
        except jp.ProtocolError as exc:
            await self.send(jp.error_event(str(exc)))
            return True
        return await self.handle(command)

    async def handle(self, command: jp.Command) -> bool:
        if isinstance(command, jp.Ping):
            await self.send(jp.pong_event())
        elif isinstance(command, jp.Start):
            seed = random_seed()
            self.binary = command.binary_audio
            self.pacer.pace = command.pace
            await self.send(jp.started_event())
            try:
                await self.start_session(command.settings, seed, self.pacer)
            except RuntimeError as exc:
                await self.send(jp.error_event(f"could not start a session: {exc}"))
                return False
            await self.send(jp.status_event("playing", seed=seed, pace=command.pace,
                                            model=self.engine.model.describe()))
        elif isinstance(command, jp.Update):
            self.session.update(command.settings)
            self.pacer.pace = command.pace
            await self.send(jp.status_event("updated", applies_from_chunk="next", **jp.describe_update(command)))
        elif isinstance(command, jp.Stop):
            await self.end_session()
            await self.send(jp.stopped_event())
            await self.ws.close(1000, "stopped")
            return False
        return True

    async def send_chunk(self, chunk) -> None:
        await self.send(*jp.chunk_events(chunk, self.binary, self.noise_notice))

    async def report_failure(self, exc: Exception) -> None:
        await self.send(jp.error_event(f"generation failed: {exc}"))


class LyriaConnection(Connection):
    """BidiGenerateMusic: setup, prompts, config and playback in; 48 kHz stereo PCM chunks out."""

    def __init__(self, websocket: WebSocket, engine) -> None:
        super().__init__(websocket, engine)
        self.protocol = lp.LyriaProtocol()
        self.resampler: tp.Optional[StreamingResampler] = None
        self.playing = False

    async def on_frame(self, frame: tp.Union[str, bytes]) -> bool:
        try:
            await self.handle(self.parse(frame))
        except lp.LyriaFatal as exc:
            await self.ws.close(exc.code, exc.reason)
            return False
        return True

    async def handle(self, action: lp.Action) -> None:
        if not isinstance(action, lp.Playback):
            await self.send(*action.messages)
        if isinstance(action, lp.Steer) and self.protocol.prompts is not None:
            if self.session is not None:
                self.session.update(self.protocol.settings())
            elif self.playing:
                await self.start()
        elif isinstance(action, lp.Playback):
            await self.playback(action.control)

    async def playback(self, control: str) -> None:
        if control == "PLAY":
            self.playing = True
            if self.protocol.prompts is None:
                await self.send(lp.warning("PLAY before weightedPrompts: playback starts when prompts arrive"))
            elif self.session is None:
                await self.start()
            else:
                self.pump.start()
        elif control == "PAUSE":
            self.playing = False
            if self.pump is not None:
                await self.pump.stop()
        elif control == "STOP":  # resets the context, keeps prompts and config
            self.playing = False
            await self.end_session()
        elif control == "RESET_CONTEXT":  # resets without stopping
            await self.end_session()
            if self.playing and self.protocol.prompts is not None:
                await self.start()

    async def start(self) -> None:
        config = self.protocol.config
        seed = config.seed if config.seed is not None else random_seed()
        try:
            # Lyria buffers a little ahead of the listener: two chunks
            await self.start_session(self.protocol.settings(), seed, Pacer("realtime", ahead_chunks=2))
        except RuntimeError as exc:
            raise lp.LyriaFatal(f"could not start generation: {exc}", code=1011) from None
        self.resampler = StreamingResampler(self.session.sample_rate, lp.OUTPUT_RATE, lp.OUTPUT_CHANNELS)

    async def send_chunk(self, chunk) -> None:
        new = int(round(chunk.seconds * chunk.sample_rate))
        audio = self.resampler.process(chunk.audio[:, :new], chunk.audio[:, new:])
        await self.send(lp.audio_chunk_message(pcm16_bytes(audio), self.protocol.prompts, self.protocol.config))

    async def report_failure(self, exc: Exception) -> None:
        await self.send(lp.warning(f"generation failed: {exc}"))


def build_app(engine, config: ServerConfig) -> Starlette:
    from streaming.page import page_routes
    from streaming.webrtc import webrtc_routes  # imported here: it builds on SessionLimit and authorized above

    limit = SessionLimit(config.max_sessions)
    notice = NOISE_NOTICE if engine.model.is_demo else None

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "sessions": limit.active, "max_sessions": limit.limit,
                             "model": engine.model.describe()})

    async def jam(websocket: WebSocket) -> None:
        if not authorized(websocket.headers, websocket.query_params, config.token):
            await websocket.accept()
            await websocket.close(1008, "missing or wrong token")
            return
        await websocket.accept()
        if not limit.try_acquire():
            await websocket.send_text(jp.error_event("concurrency_limit_reached", limit=limit.limit))
            await websocket.close(1013, "concurrency limit reached")
            return
        try:
            await JamConnection(websocket, engine, notice).run()
        finally:
            limit.release()

    async def lyria(websocket: WebSocket) -> None:
        await websocket.accept()
        if not authorized(websocket.headers, websocket.query_params, config.token, extra_header="x-goog-api-key",
                          extra_query="key"):
            await websocket.close(1008, "API key not valid: send JAM_TOKEN as the API key")
            return
        if not limit.try_acquire():
            await websocket.close(1013, f"concurrency_limit_reached (limit {limit.limit})")
            return
        try:
            await LyriaConnection(websocket, engine).run()
        finally:
            limit.release()

    return Starlette(routes=[Route("/health", health), WebSocketRoute("/ws/jam", jam),
                             WebSocketRoute(lp.PATH, lyria), *webrtc_routes(engine, config, limit, notice),
                             *page_routes()])


class RunningServer:
    """A uvicorn server on its own thread and event loop (inside Cog's worker, or in tests)."""

    def __init__(self, engine, config: ServerConfig) -> None:
        self.config = config
        self.server = uvicorn.Server(uvicorn.Config(
            build_app(engine, config), host=config.host, port=config.port, log_level="warning", lifespan="off",
            ws_max_size=WS_MAX_BYTES, ssl_certfile=config.ssl_certfile, ssl_keyfile=config.ssl_keyfile,
            ws_ping_interval=None))
        self.thread = threading.Thread(target=self.server.run, name="jam-sidecar", daemon=True)

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


def main() -> None:
    from engine.core import Engine, EngineConfig

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default=os.environ.get("COG_WEIGHTS"), help="checkpoint (default: weights/)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    config = ServerConfig.from_env()
    engine = Engine.load(args.weights, config=EngineConfig(max_rows=config.engine_rows))
    server = RunningServer(engine, config).start()
    try:
        server.thread.join()
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()

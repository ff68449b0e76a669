"""The I/O shell shared by the WebSocket transports: a reader loop with an idle timeout, serialised sends, and
the one session a connection owns, freed however the connection ends."""

import asyncio
import logging
import time
import typing as tp

from starlette.websockets import WebSocket, WebSocketDisconnect

from streaming.config import ServerConfig
from streaming.pump import ChunkPump, Pacer

logger = logging.getLogger(__name__)

CLOSE_IDLE = 1008
CLOSE_GOING_AWAY = 1001


class Connection:
    """Subclasses parse frames with their protocol module and act on the result; this class owns the socket,
    the session and its pump."""

    def __init__(self, websocket: WebSocket, engine, config: ServerConfig) -> None:
        self.ws = websocket
        self.engine = engine
        self.config = config
        self.session = None
        self.pump: tp.Optional[ChunkPump] = None
        self.closed = False
        self._send_lock = asyncio.Lock()
        self._idle_since = time.monotonic()
        self._tasks: set[asyncio.Task] = set()

    async def send(self, *messages: tp.Union[str, bytes]) -> None:
        async with self._send_lock:  # messages of one call stay adjacent (a binary chunk and its chunk_meta)
            for message in messages:
                if isinstance(message, bytes):
                    await self.ws.send_bytes(message)
                else:
                    await self.ws.send_text(message)

    async def run(self) -> None:
        try:
            while True:
                message = await self._receive()
                if message is None or message["type"] == "websocket.disconnect":
                    return
                frame = message["bytes"] if message.get("bytes") is not None else message.get("text") or ""
                if not await self.on_frame(frame):
                    return
        except WebSocketDisconnect:
            return
        finally:
            self.closed = True
            for task in list(self._tasks):
                task.cancel()
            await self.end_session()

    async def _receive(self) -> tp.Optional[dict]:
        """The next client message; None after closing an idle socket (no session for `idle_seconds`)."""
        if self.session is not None:
            return await self.ws.receive()
        remaining = self.config.idle_seconds - (time.monotonic() - self._idle_since)
        try:
            return await asyncio.wait_for(self.ws.receive(), timeout=max(remaining, 0.0))
        except TimeoutError:
            await self.close(CLOSE_IDLE, f"idle: no session started within {self.config.idle_seconds:g} s")
            return None

    async def close(self, code: int, reason: str) -> None:
        try:
            await self.ws.close(code, reason)
        except Exception:  # already closed by the client
            logger.debug("close after the client left")

    def spawn(self, coroutine: tp.Coroutine) -> None:
        """Runs work that must not block the reader loop; cancelled when the connection ends."""
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def on_drain(self, seconds_left: float) -> None:
        """The replica drains: a client with a session hears once, in its protocol's words, how long it has."""
        if self.session is not None and not self.closed:
            await self.send(self.drain_notice(seconds_left))

    async def drain_close(self, reason: str) -> None:
        await self.close(CLOSE_GOING_AWAY, reason)

    # -- for subclasses -----------------------------------------------------------------------------------------
    def drain_notice(self, seconds_left: float) -> str:
        raise NotImplementedError

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

    async def on_generation_error(self, exc: Exception) -> None:
        raise NotImplementedError

    async def start_session(self, settings, seed: int, pacer: Pacer) -> None:
        """Opens a session on the engine (off the event loop: it waits for the engine thread) and pumps it.
        Raises what Engine.open_session raises (CapacityError, ValueError, EngineUnavailable)."""
        loop = asyncio.get_running_loop()
        session = await loop.run_in_executor(None, self.engine.open_session, settings, seed)
        if self.closed:  # the client left while the engine was opening it
            session.close()
            return
        self.session = session
        self.pump = ChunkPump(session, pacer, self.send_chunk, self._generation_failed)
        self.pump.start()

    async def _generation_failed(self, exc: Exception) -> None:
        if not self.closed:
            await self.on_generation_error(exc)

    async def end_session(self) -> None:
        """Ends the current session. The connection lets go of it before the first await, so a session started
        meanwhile (a client's PLAY racing a failure report) is never the one closed here."""
        pump, session = self.pump, self.session
        self.pump = self.session = None
        if session is not None:
            self._idle_since = time.monotonic()
        if pump is not None:
            await pump.stop()
        if session is not None:
            session.close()

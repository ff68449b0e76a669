"""The I/O shell shared by the WebSocket transports: a reader loop with an idle timeout and serialised sends.

The session a connection plays is its supervisor's (streaming.sessions.supervisor: start, restart on the slot, hold,
attach, end); however the connection ends, the supervisor either ends the session (its slot freed) or, for
transports that resume, holds it for the next connection."""

import asyncio
import logging
import time
import typing as tp
from concurrent.futures import Executor

from starlette.websockets import WebSocket, WebSocketDisconnect

from engine.api import LiveSession
from streaming.app.config import ServerConfig
from streaming.sessions.pump import ChunkPump
from streaming.sessions.registry import RegisteredSession, SessionRegistry
from streaming.sessions.supervisor import Supervisor
from streaming.sessions.tasks import Tasks

logger = logging.getLogger(__name__)

CLOSE_NORMAL = 1000
CLOSE_IDLE = 1008
CLOSE_GOING_AWAY = 1001


class Connection:
    """Subclasses parse frames with their protocol module and act on the result through `supervisor`; this
    class owns the socket. `kind` names the sessions it plays in the registry; `resumable` ones are held when
    the connection drops without the client ending them (`ended` set)."""

    kind = "rt"
    resumable = False

    def __init__(self, websocket: WebSocket, engine, config: ServerConfig, blocking: Executor,
                 registry: SessionRegistry) -> None:
        self.ws = websocket
        self.engine = engine
        self.config = config
        self.registry = registry
        self.tasks = Tasks()
        self.supervisor = Supervisor(engine, blocking, registry, self.kind, owner=self, tasks=self.tasks,
                                     on_lost=self.session_lost)
        self.supervisor.pumped(self.send_chunk, self.on_generation_error)
        self.ended = False  # the client ended its session (stop, a close 1000) or the drain did: nothing to hold
        self._send_lock = asyncio.Lock()
        self._idle_since = time.monotonic()

    @property
    def session(self) -> tp.Optional[LiveSession]:
        """The live session, if one is open (it stays the same object through restarts)."""
        return self.supervisor.session

    @property
    def jam(self) -> tp.Optional[RegisteredSession]:
        return self.supervisor.jam

    @property
    def pump(self) -> tp.Optional[ChunkPump]:
        return self.supervisor.pump

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
                if message is None:
                    return
                if message["type"] == "websocket.disconnect":
                    self._client_closed(message.get("code"))
                    return
                frame = message["bytes"] if message.get("bytes") is not None else message.get("text") or ""
                if not await self.on_frame(frame):
                    return
        except WebSocketDisconnect as exc:
            self._client_closed(exc.code)
            return
        finally:
            self.supervisor.closed = True
            await self.tasks.close()  # a restart under way, the pump, a failure report: none outlives the socket
            await self.supervisor.finish(keep=self.resumable and not self.ended)

    def _client_closed(self, code: tp.Optional[int]) -> None:
        """A client that closes with 1000 (normal closure: its purpose fulfilled) ends its session; any other end
        (no close frame, 1001 going away as on a page reload, a ping timeout) is a drop, held for a resume."""
        if code == CLOSE_NORMAL:
            self.ended = True

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

    async def on_drain(self, seconds_left: float) -> None:
        """The replica drains: a client with a session hears once, in its protocol's words, how long it has."""
        if self.session is not None and not self.supervisor.closed:
            await self.send(self.drain_notice(seconds_left))

    async def drain_close(self, reason: str) -> None:
        self.ended = True  # the drain's end: the session is not held
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

    def session_lost(self) -> None:
        """The session ended on the server's side (a refused start, a failure given up): the protocol hears."""

    async def end_session(self) -> None:
        """Ends the current session (streaming.sessions.supervisor); the idle clock starts again."""
        if await self.supervisor.end():
            self._idle_since = time.monotonic()

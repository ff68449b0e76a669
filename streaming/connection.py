"""The I/O shell shared by the WebSocket transports: a reader loop with an idle timeout, serialised sends, and
the one live session a connection plays (streaming.lifecycle), registered by id (streaming.sessions) and, however
the connection ends, either ended (its slot freed) or, for transports that resume, held for the next connection."""

import asyncio
import logging
import time
import typing as tp
from concurrent.futures import Executor

from starlette.websockets import WebSocket, WebSocketDisconnect

from engine.api import JamSession, JamSettings, SessionClosed
from streaming.config import ServerConfig
from streaming.lifecycle import LiveSession, Tasks
from streaming.pump import ChunkPump, Pacer
from streaming.sessions import Jam, SessionRegistry

logger = logging.getLogger(__name__)

CLOSE_NORMAL = 1000
CLOSE_IDLE = 1008
CLOSE_GOING_AWAY = 1001


class Connection:
    """Subclasses parse frames with their protocol module and act on the result; this class owns the socket,
    the session and its pump. `kind` names the sessions it plays in the registry; `resumable` ones are held when
    the connection drops without the client ending them (`ended` set)."""

    kind = "rt"
    resumable = False

    def __init__(self, websocket: WebSocket, engine, config: ServerConfig, blocking: Executor,
                 registry: SessionRegistry) -> None:
        self.ws = websocket
        self.engine = engine
        self.config = config
        self.registry = registry
        self.live = LiveSession(engine, blocking)
        self.tasks = Tasks()
        self.pump: tp.Optional[ChunkPump] = None
        self.jam: tp.Optional[Jam] = None
        self.reserved_id: tp.Optional[str] = None  # the id a transport told its client before a session opened
        self.ended = False  # the client ended its session (stop) or the server gave it up: nothing to hold
        self._send_lock = asyncio.Lock()
        self._idle_since = time.monotonic()

    @property
    def session(self) -> tp.Optional[JamSession]:
        """The live session, if one is open (it stays the same object through restarts)."""
        return self.live.session

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
            self.live.closed = True
            await self.tasks.close()  # a restart under way, the pump, a failure report: none outlives the socket
            if not (self.resumable and not self.ended and await self.hold_session()):
                await self.end_session()

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
        if self.session is not None and not self.live.closed:
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

    async def start_session(self, settings: JamSettings, seed: int, pacer: Pacer) -> Jam:
        """Opens a session on the engine (taking a slot), registers it and pumps it. Raises what LiveSession.open
        raises (CapacityError, ValueError, EngineUnavailable, SessionClosed)."""
        session = await self.live.open(settings, seed)
        self.ended = False
        self.jam = self.registry.open(self.kind, session, seed, self.engine.describe(), owner=self,
                                      session_id=self.reserved_id)
        self.pump = self._pump(session, pacer)
        self.jam.pump = self.pump
        self.pump.start()
        return self.jam

    def attach_session(self, session_id: tp.Any, pacer: Pacer) -> Jam:
        """Takes over a held session (SessionError when it cannot be: the text says why); the caller replays
        what its client lacks (Jam.replay_from, `send_replayed`), then starts the pump."""
        jam = self.registry.attach(session_id, self.kind, owner=self)
        self.ended = False
        self.jam = jam
        self.live.adopt(jam.session)
        self.pump = jam.pump
        self.pump.rebind(pacer, self._deliver, self._generation_failed, self.tasks)
        return jam

    async def send_replayed(self, chunks: list) -> None:
        for chunk in chunks:
            await self.send_chunk(chunk)
            self.jam.sent(chunk)
            self.pump.pacer.sent(chunk.seconds)

    def _pump(self, session, pacer: Pacer) -> ChunkPump:
        return ChunkPump(session, pacer, self._deliver, self._generation_failed, self.tasks,
                         on_chunk=self.jam.generated)

    async def _deliver(self, chunk) -> None:
        await self.send_chunk(chunk)
        if self.jam is not None:
            self.jam.sent(chunk)

    async def restart_session(self, seed: int, play: bool) -> None:
        """A fresh context on the slot the session holds (LiveSession.restart), pumped by a new pump on the same
        pacer (the listener's clock goes on); `play` False leaves it paused. Updates and melodies that arrive
        meanwhile go to the session, which applies them to the restarted stream. Raises SessionClosed when the
        session ended meanwhile, EngineUnavailable or RuntimeError when the engine could not restart it."""
        pump, jam = self.pump, self.jam
        if pump is None or jam is None:
            raise SessionClosed("no session to restart")
        await pump.stop()
        await self.live.restart(seed)
        jam.restarted(seed)
        self.pump = jam.pump = self._pump(self.live.session, pump.pacer)
        if play:
            self.pump.start()

    async def _generation_failed(self, exc: Exception) -> None:
        if not self.live.closed:
            await self.on_generation_error(exc)

    async def hold_session(self) -> bool:
        """The connection dropped: keeps its session for the next connection (streaming.sessions); False when
        there is none to keep or the registry does not hold sessions now."""
        jam, pump = self.jam, self.pump
        if jam is None or pump is None:
            return False
        await pump.stop()
        if not self.registry.hold(jam):
            return False
        self.jam, self.pump = None, None
        self.live.detach()
        return True

    async def end_session(self) -> None:
        """Ends the current session. The connection lets go of it before the first await, so a session started
        meanwhile (a client's PLAY racing a failure report) is never the one closed here."""
        pump, jam, session = self.pump, self.jam, self.live.detach()
        self.pump, self.jam = None, None
        if session is not None:
            self._idle_since = time.monotonic()
        if pump is not None:
            await pump.stop()
        if jam is not None:
            self.registry.end(jam)
        elif session is not None:
            session.close()

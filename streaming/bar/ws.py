"""/ws/jam `mode: "bar"`: the socket shell of a bar session (streaming.bar.session), on the session registry.

A `/ws/jam` connection whose first `start` asks for `mode: "bar"` is handed to `BarSocket`, which reads the rest of
its frames. The session belongs to the registry, not to the socket: a socket that drops (no `stop`, no close
1000) leaves it held for the registry's resume time, and `start` with its `session_id` on a new socket (or the
HTTP routes) goes on with it from the first chunk not yet delivered. The socket's supervisor
(streaming.sessions.supervisor) opens, attaches, holds and ends it; `protocol.SocketProtocol` says which commands
may come now. The session's pump runs whoever listens; this socket pulls from it (a failure restarts the source
inside the BarSession, streaming.bar.session).
"""

import asyncio
import logging
import typing as tp

from starlette.websockets import WebSocketDisconnect

from engine.api import CapacityError, EngineUnavailable, SessionClosed, random_seed
from streaming.bar import events as be
from streaming.bar import protocol as bp
from streaming.bar.generate import decode_loop
from streaming.bar.session import BarSession, open_source, serve
from streaming.jam.events import error_event, pong_event, stopped_event
from streaming.jam.protocol import ProtocolError
from streaming.sessions.registry import RegisteredSession, SessionError
from streaming.sessions.supervisor import Supervisor

logger = logging.getLogger(__name__)

CLOSE_NORMAL = 1000
CLOSE_IDLE = 1008
CLOSE_TRY_AGAIN = 1013
SEND_FINISH_SECONDS = 5.0  # a chunk being written when the delivery stops may finish this long
NEXT_WAIT_SECONDS = 60.0  # how long the delivery waits for a chunk before looking again (magenta-retry's pump)


def wants_bar(frame: tp.Union[str, bytes]) -> tp.Optional[dict]:
    """The first message of a bar-mode socket, parsed (None for anything else, which the rt protocol reads)."""
    if not isinstance(frame, str) or '"bar"' not in frame:
        return None
    try:
        message = bp.load(frame)
    except ProtocolError:
        return None
    return message if bp.is_bar_start(message) else None


class BarSocket:
    """One socket's bar mode. `connection` is the /ws/jam connection it came on (its socket, send lock, engine,
    registry and blocking pool)."""

    def __init__(self, connection, notice: tp.Optional[str]) -> None:
        self.connection = connection
        self.ws = connection.ws
        self.notice = notice
        self.protocol = bp.SocketProtocol()
        self.supervisor = Supervisor(connection.engine, connection.supervisor.blocking, connection.registry, "bar",
                                     owner=self, tasks=connection.tasks, on_lost=self.protocol.session_ended)
        self.binary = False
        self.ended = False  # stop, or a close 1000: nothing to hold
        self._delivery: tp.Optional[asyncio.Task] = None
        self._sending = False  # the delivery is writing a chunk
        self._stopping = False

    @property
    def jam(self) -> tp.Optional[RegisteredSession]:
        return self.supervisor.jam

    @property
    def bar(self) -> tp.Optional[BarSession]:
        return self.jam.state(BarSession) if self.jam is not None else None

    async def send(self, *messages: tp.Union[str, bytes]) -> None:
        await self.connection.send(*messages)

    async def run(self, first: dict) -> None:
        """Handles the start, then every frame until the socket ends; the session is held or ended then."""
        try:
            if await self.handle_message(first):
                await self._read()
        except WebSocketDisconnect as exc:
            self.ended = self.ended or exc.code == CLOSE_NORMAL
        finally:
            self.supervisor.closed = True
            await self._stop_delivery()
            await self.supervisor.finish(keep=not self.ended)

    async def _read(self) -> None:
        idle = self.connection.config.idle_seconds
        while True:
            try:  # as every /ws/jam socket: one that has no session for `idle_seconds` is closed
                message = await (self.ws.receive() if self.jam is not None else
                                 asyncio.wait_for(self.ws.receive(), timeout=idle))
            except TimeoutError:
                await self.connection.close(CLOSE_IDLE, f"idle: no session started within {idle:g} s")
                return
            if message["type"] == "websocket.disconnect":
                self.ended = self.ended or message.get("code") == CLOSE_NORMAL
                return
            if message.get("bytes") is not None:
                await self.send(error_event("binary frames are not accepted from clients: send JSON text messages"))
                continue
            try:
                parsed = bp.load(message.get("text") or "")
            except ProtocolError as exc:
                await self.send(error_event(str(exc)))
                continue
            if not await self.handle_message(parsed):
                return

    async def handle_message(self, message: dict) -> bool:
        """Acts on one message; False ends the connection. Bad input gets an error and changes nothing."""
        try:
            return await self.handle(self.protocol.receive(bp.command(message)))
        except ProtocolError as exc:
            await self.send(error_event(str(exc)))
        except (SessionClosed, EngineUnavailable, RuntimeError) as exc:  # the session ended or failed meanwhile
            logger.info("bar session: %s failed: %s", message.get("type"), exc)
            await self.send(error_event(f"{message.get('type')} failed: {exc}"))
        return True

    async def handle(self, command: bp.Command) -> bool:
        if isinstance(command, bp.Ping):
            await self.send(pong_event())
            return True
        if isinstance(command, bp.Start):
            return await self.start(command)
        source = self.bar.source
        if isinstance(command, bp.Stop):
            self.ended = True
            await self._stop_delivery()
            await self.supervisor.end()
            await self.send(stopped_event())
            await self.connection.close(CLOSE_NORMAL, "stopped")
            return False
        if isinstance(command, bp.Consume):
            self.bar.consume(command.chunk_index)
        elif isinstance(command, bp.Update):
            params = bp.updated(source.params, command.changes)
            try:
                first = await asyncio.wrap_future(source.update(params))
            except ValueError as exc:
                raise ProtocolError(str(exc)) from None
            await self.send(be.status_event(ok=True, updated=sorted(command.changes), applies_from_chunk=first))
        elif isinstance(command, bp.Reseed):
            loop = await self._decode(command.loop)
            await asyncio.wrap_future(source.reseed(loop, seed=random_seed()))
            await self.send(be.status_event(reseeded=True))
        elif isinstance(command, bp.ReseedSplice):
            combined = None if command.combined is None else await self._decode(command.combined)
            source.reseed_splice(command.anchor_bars, combined)
            await self.send(be.status_event(splice=command.anchor_bars))
        return True

    async def start(self, command: bp.Start) -> bool:
        self.binary = command.binary_audio
        if command.session_id is not None:
            try:
                self.supervisor.attach(command.session_id)
            except SessionError as exc:
                raise ProtocolError(f"Session not found: {exc}") from None
        else:
            connection, seed = self.connection, random_seed() if command.seed is None else command.seed
            try:
                serve(await self.supervisor.open_with(
                    lambda: open_source(connection.engine, self.supervisor.blocking, command.loop,
                                        command.raw_params, seed, connection.registry.model), seed))
            except CapacityError as exc:
                await self.send(error_event("concurrency_limit_reached", limit=exc.limit))
                await connection.close(CLOSE_TRY_AGAIN, "concurrency limit reached")
                return False
            except (EngineUnavailable, ValueError, RuntimeError) as exc:
                if isinstance(exc, ProtocolError):
                    raise
                raise ProtocolError(f"could not start a session: {exc}") from None
        self.protocol.started(self.jam.session_id)
        await self.send(be.started_event(self.jam.session_id))
        self._delivery = asyncio.get_running_loop().create_task(self._deliver(), name="bar-delivery")
        return True

    async def _deliver(self) -> None:
        """Sends each chunk as it comes, in order; a send that fails gives the chunk back for the next socket."""
        bar, jam = self.bar, self.jam
        while not self._stopping:
            chunk = await bar.next(NEXT_WAIT_SECONDS)
            if chunk is None:
                if bar.running:
                    continue
                if self.jam is jam:  # it ended on the server's side: a new start may come
                    await self.supervisor.give_up()
                await self.send(error_event(bar.failure or "the session ended"), stopped_event())
                return
            self._sending = True
            try:
                await self.send(*be.chunk_events(chunk, self.binary, self.notice))
            except BaseException:
                bar.undeliver(chunk)
                raise
            finally:
                self._sending = False

    async def _stop_delivery(self) -> None:
        """Ends the delivery between sends: a send cancelled midway leaves the socket unusable (starlette marks it
        disconnected), so one under way may finish first (for SEND_FINISH_SECONDS at most)."""
        task, self._delivery = self._delivery, None
        if task is not None and task is not asyncio.current_task():
            self._stopping = True
            if self._sending:
                await asyncio.wait([task], timeout=SEND_FINISH_SECONDS)
            task.cancel()
            for outcome in await asyncio.gather(task, return_exceptions=True):
                if isinstance(outcome, Exception):
                    logger.info("bar delivery ended: %s: %s", type(outcome).__name__, outcome)

    async def _decode(self, data: bytes) -> tuple:
        return await asyncio.get_running_loop().run_in_executor(self.supervisor.blocking, decode_loop, data)


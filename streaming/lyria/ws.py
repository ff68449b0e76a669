"""Lyria RealTime (BidiGenerateMusic) over WebSocket: the protocol module decides, this shell carries it out.

How far ahead it generates: just in time (streaming.sessions.lead). A chunk is asked for when the listener has the
stream's lead left (its recent slowest generation time plus margins, at least 0.2 s; about 0.3 s for the demo
checkpoint) and sent the moment it is ready, and a change of prompts or config applies from the next decode step of the
chunk in the making. A client that plays everything it receives, in order, therefore hears a change at most the lead
plus one chunk (protocol.CHUNK_SECONDS) after sending it, and on average half a chunk plus the lead.

A generation failure goes on with a fresh context on the session's slot, as on every transport
(streaming.sessions.supervisor), told with the next chunk; when the failures repeat the socket closes with 1011 and
the reason, which the SDK raises as an APIError (a lone message without audio would break its readers: see
streaming.lyria.protocol).
"""

import logging
import typing as tp
from concurrent.futures import Executor

from engine.api import CapacityError, EngineUnavailable, SessionClosed, random_seed
from streaming.app.config import ServerConfig
from streaming.lyria import protocol as lp
from streaming.sessions.connection import Connection
from streaming.sessions.pump import Pacer
from streaming.sessions.supervisor import Recovery

logger = logging.getLogger(__name__)

CLOSE_FAILED = 1011  # generation failed for good: the reason says why


class LyriaConnection(Connection):
    """Lyria has no resumption for music: a dropped connection ends its session. Each session of the connection
    (a STOP then PLAY opens a new one) is recorded under the one id `setupComplete` told."""

    kind = "lyria"

    def __init__(self, websocket, engine, config: ServerConfig, blocking: Executor, registry) -> None:
        super().__init__(websocket, engine, config, blocking, registry)
        self.protocol = lp.LyriaProtocol(check_settings=engine.check_settings, session_id=registry.new_id(),
                                         served_models=engine.models)

    async def on_frame(self, frame: tp.Union[str, bytes]) -> bool:
        try:
            for action in self.parse(frame):
                await self.execute(action)
        except lp.LyriaFatal as exc:
            await self.close(exc.code, exc.reason)
            return False
        return True

    async def execute(self, action: lp.Action) -> None:
        if isinstance(action, lp.Send):
            await self.send(*action.messages)
        elif isinstance(action, lp.StartSession):
            seed = random_seed() if action.seed is None else action.seed
            try:
                await self.supervisor.start(action.settings, seed, Pacer("realtime"),
                                            session_id=self.protocol.session_id)
            except CapacityError as exc:
                raise lp.LyriaFatal(f"concurrency_limit_reached (limit {exc.limit})", code=lp.CLOSE_TRY_AGAIN) from None
            except (EngineUnavailable, ValueError, RuntimeError) as exc:
                raise lp.LyriaFatal(f"could not start generation: {exc}", code=1011) from None
        elif isinstance(action, lp.RestartSession):
            seed = random_seed() if action.seed is None else action.seed
            try:
                await self.supervisor.restart(seed, play=action.play)
            except SessionClosed:  # a generation failure ended it meanwhile
                return
            except (EngineUnavailable, RuntimeError) as exc:  # recovered as a generation failure
                await self.on_generation_error(exc)
        elif isinstance(action, lp.UpdateSession):
            self.session.update(action.settings).add_done_callback(_log_refused)
        elif isinstance(action, lp.PauseSession):
            await self.supervisor.pause()
        elif isinstance(action, lp.ResumeSession):
            self.supervisor.play()
        elif isinstance(action, lp.EndSession):
            await self.end_session()

    async def on_drain(self, seconds_left: float) -> None:
        """The replica drains: the next chunk's `warning` says how long the session has."""
        if self.session is not None:
            self.protocol.notify(f"this server is draining: the session ends within {seconds_left:.0f} s; connect "
                                 "again to continue on another replica")

    async def send_chunk(self, chunk) -> None:
        await self.send(self.protocol.chunk_message(chunk))

    def session_lost(self) -> None:
        self.protocol.session_ended()

    async def on_generation_error(self, exc: Exception) -> None:
        """A fresh context on the slot (paused until the client wants audio); given up, the socket closes."""

        async def tell(restarting: bool) -> None:
            self.protocol.generation_failed(str(exc), restarting)

        outcome = await self.supervisor.recover(tell)
        if outcome.recovery is Recovery.RESTARTED:
            if self.protocol.playing:
                self.supervisor.play()
        elif outcome.recovery is Recovery.GAVE_UP:
            await self.close(CLOSE_FAILED, lp.LyriaFatal(outcome.reason or f"generation failed: {exc}").reason)


def _log_refused(done) -> None:
    """Lyria has no acknowledgement to carry it: a change the engine refused (no rows for more prompts) is logged,
    and the prompts in force play on."""
    if done.exception() is not None:
        logger.warning("a Lyria update was not applied: %s", done.exception())

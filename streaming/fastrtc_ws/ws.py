"""FastRTC's WebSocket transport: the Starlette shell around `streaming.fastrtc_ws.protocol`.

A socket plays one session at a time on one of the engine's slots (shared with every transport), opened by its
`start` and ended by `stop`, a normal close or the drain's end; a socket that drops is held for a resume as /ws/jam's
and WebRTC's are (streaming.sessions.supervisor, streaming.sessions.registry), and every session is recorded. The
music is generated in the WebRTC track's decode units (streaming.webrtc.peer.UNIT_SECONDS) just in time for a
listener who plays what it receives (the session's pump at the realtime `Pacer`: each unit is asked for when the
listener has the stream's lead left), resampled to the socket's output rate, mono, and sent as one mu-law `media`
frame followed by the data channel's `chunk` log. The client's media frames are decoded and handed to the session
as live input."""

import asyncio
import logging
import time
import typing as tp
from concurrent.futures import Executor
from dataclasses import dataclass, replace

from engine.api import CapacityError, DropTally, EngineUnavailable, InputClock, SessionClosed, random_seed
from streaming.app.config import ServerConfig
from streaming.fastrtc_ws import protocol as fp
from streaming.formats import StreamingResampler, pcm16_array
from streaming.jam import protocol as jp
from streaming.sessions.connection import Connection
from streaming.sessions.pump import Pacer
from streaming.sessions.registry import SessionError
from streaming.sessions.supervisor import Recovery
from streaming.webrtc import protocol as wp
from streaming.webrtc.peer import UNIT_SECONDS

logger = logging.getLogger(__name__)

CLOSE_TRY_AGAIN = 1013


@dataclass(frozen=True)
class HeldSocket:
    """What a resuming socket takes over beside the session's pump (the registry keeps it as the session's
    state): the parameters in force and the seed."""

    controls: wp.Controls
    seed: int


class FastRTCConnection(Connection):
    kind = "fastrtc_ws"
    resumable = True

    def __init__(self, websocket, engine, config: ServerConfig, blocking: Executor, registry,
                 notice: tp.Optional[str], phone: bool = False) -> None:
        super().__init__(websocket, engine, config, blocking, registry)
        self.notice = notice
        self.protocol = fp.FastRTCSocket(phone)
        self.pacer = Pacer("realtime")
        self.resampler: tp.Optional[StreamingResampler] = None  # made at the first chunk of each stream here
        self.input_clock = InputClock()  # where media frames go: the engine's rule, as WebRTC's microphone
        self.drops = DropTally()

    async def on_frame(self, frame: tp.Union[str, bytes]) -> bool:
        if isinstance(frame, bytes):
            await self.send(wp.error("binary frames are not accepted: send FastRTC's JSON events as text"))
            return True
        try:
            command = self.protocol.receive_text(frame)
        except jp.ProtocolError as exc:
            await self.send(wp.error(str(exc)))
            return True
        return await self.handle(command)

    async def handle(self, command: fp.Command) -> bool:
        """Acts on one command; False when the connection ends (stop, a full server)."""
        if isinstance(command, fp.Ping):
            await self.send(fp.pong())
        elif isinstance(command, jp.Ping):
            await self.send(wp.log("pong"))
        elif isinstance(command, fp.Start):
            if command.session_id is not None:
                await self.attach(command)
                return True
            return await self.open(command)
        elif isinstance(command, fp.Media):
            await self.play_input(command)
        elif isinstance(command, jp.Update):
            await self.update(command)
        elif isinstance(command, jp.Stop):
            self.ended = True
            await self.end_session()
            await self.send(wp.log("stopped"))
            await self.close(1000, "stopped")
            return False
        return True

    async def open(self, start: fp.Start) -> bool:
        """Starts the session; False when the server is full (FastRTC's message, then the socket closes)."""
        seed = random_seed() if start.seed is None else start.seed
        self.pacer, self.resampler = Pacer("realtime"), None
        try:
            await self.supervisor.start(replace(start.settings, chunk_seconds=UNIT_SECONDS), seed, self.pacer)
        except CapacityError as exc:
            await self.send(fp.concurrency_limit_reached(exc.limit))
            await self.close(CLOSE_TRY_AGAIN, "concurrency limit reached")
            return False
        except (EngineUnavailable, ValueError, RuntimeError) as exc:  # the protocol heard (session_lost)
            await self.send(wp.error(f"could not start a session: {exc}"))
            return True
        self.jam.set_state(HeldSocket(self.protocol.controls, seed))
        await self.send(self.started(seed, resumed=False))
        return True

    async def attach(self, start: fp.Start) -> None:
        """Plays a held session here: the chunks the client lacks first (from `from_chunk`, by default the next
        one made), then the stream where it paused."""
        pacer = Pacer("realtime")
        try:
            jam = self.supervisor.attach(start.session_id, pacer)
            held = jam.state(HeldSocket)
            replay = self.pump.replay_from(start.from_chunk)
        except SessionError as exc:  # an attached session stays held for a try with another from_chunk
            if self.jam is not None:
                await self.supervisor.finish(keep=True)
            self.protocol.session_ended()
            await self.send(wp.error(str(exc)))
            return
        self.protocol.restore(held.controls)
        self.pacer, self.resampler = pacer, None
        first = replay[0].index if replay else self.pump.sent_until
        await self.send(self.started(held.seed, resumed=True, from_chunk=first))
        await self.pump.resend(replay)
        self.supervisor.play()

    def started(self, seed: int, resumed: bool, **fields: tp.Any) -> str:
        return wp.log({"event": "started", "websocket_id": self.protocol.stream_id, "session_id": self.jam.session_id,
                       "seed": seed, "resumed": resumed, "model": self.engine.describe(), "notice": self.notice,
                       "audio": self.protocol.audio_format(), **fields})

    async def update(self, command: jp.Update) -> None:
        try:
            placement = await asyncio.wrap_future(
                self.session.update(replace(command.settings, chunk_seconds=UNIT_SECONDS)))
        except (SessionClosed, RuntimeError) as exc:
            await self.send(wp.error(f"update: {exc}"))
            return
        await self.send(wp.log(wp.update_acknowledgement(command, placement, self.pacer.heard_in(placement))))

    async def play_input(self, media: fp.Media) -> None:
        """The client's audio into the session's live input (LiveSession.play_input only checks and keeps it: the
        engine resamples and mixes it in off this loop), placed by the socket's engine.api.InputClock. A malformed
        frame is an `error`, input the engine drops a `warning` now and then; the session plays on."""
        session = self.session
        if session is None:  # started, but the session is between a failure and its restart's end
            self.input_clock.landed(None)
            await self.send(wp.error("media: no session plays now"))
            return
        at = self.input_clock.place(self.pacer.playing_at(), media.seconds)
        try:
            receipt = session.play_input(media.float32(), media.sample_rate, at)
        except (ValueError, SessionClosed) as exc:
            self.input_clock.landed(None)
            await self.send(wp.error(f"media: {exc}"))
            return
        self.input_clock.landed(receipt)
        if receipt.dropped is not None:
            count = self.drops.dropped(time.monotonic())
            if count is not None:
                await self.send(fp.input_dropped(count, receipt.dropped))

    def drain_notice(self, seconds_left: float) -> str:
        return wp.drain_warning(seconds_left)

    async def send_chunk(self, chunk) -> None:
        """A unit from the session's pump: resampled (on the default executor) into one mu-law media frame, then
        the data channel's `chunk` log, with the audio the listener has ahead of it."""
        if self.resampler is None:
            self.resampler = StreamingResampler(chunk.sample_rate, self.protocol.output_sample_rate, 1)
        pcm = await asyncio.get_running_loop().run_in_executor(None, self._to_pcm, chunk)
        played = 0.0 if self.pacer.started is None else time.monotonic() - self.pacer.started
        ahead = self.pacer.sent_seconds + chunk.seconds - played  # the pacer counts this chunk once it is sent
        await self.send(self.protocol.media(pcm), wp.chunk_log(chunk, ahead, self.pacer.underruns, self.notice))

    def _to_pcm(self, chunk):
        new = int(round(chunk.seconds * chunk.sample_rate))
        return pcm16_array(self.resampler.process(chunk.audio[:, :new], chunk.audio[:, new:]))

    def session_lost(self) -> None:
        self.protocol.session_ended()

    async def on_generation_error(self, exc: Exception) -> None:
        """Told as an `error`; the session goes on with a fresh context (new seed) on its slot, unless the failures
        repeat (streaming.sessions.supervisor): then it ends, and a new `start` may come."""
        if isinstance(exc, SessionClosed):
            return

        async def tell(restarting: bool) -> None:
            await self.send(wp.error(f"generation failed: {exc}; " + (
                "restarting with a fresh context" if restarting else "the session ended")))

        try:
            outcome = await self.supervisor.recover(tell)
            if outcome.recovery is Recovery.RESTARTED:
                self.resampler = None  # a restarted stream starts afresh (chunks from 0, no left context)
                self.jam.set_state(HeldSocket(self.protocol.controls, outcome.seed))
                await self.send(wp.log({"event": "restarted", "seed": outcome.seed}))
                self.supervisor.play()
            elif outcome.reason is not None:
                await self.send(wp.error(outcome.reason))
        except Exception as send_failure:  # the client is gone too
            logger.debug("could not report a generation failure: %s", send_failure)

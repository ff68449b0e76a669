"""/ws/jam over WebSocket: JSON control messages in; base64 WAV chunks (or binary WAV + chunk_meta) out."""

import asyncio
import logging
import typing as tp
from concurrent.futures import Executor

from engine.api import (
    WINDOW_SECONDS,
    AudioInputError,
    CapacityError,
    EngineUnavailable,
    Landing,
    SessionClosed,
    SessionSettings,
    decode_slice,
    random_seed,
)
from streaming.app.config import ServerConfig
from streaming.bar.ws import BarSocket, wants_bar
from streaming.jam import events as je
from streaming.jam import protocol as jp
from streaming.sessions.connection import Connection
from streaming.sessions.pump import Pacer
from streaming.sessions.registry import SessionError
from streaming.sessions.supervisor import Recovery

logger = logging.getLogger(__name__)

CLOSE_TRY_AGAIN = 1013


class JamConnection(Connection):
    kind = "rt"
    resumable = True

    def __init__(self, websocket, engine, config: ServerConfig, blocking: Executor, registry,
                 noise_notice: tp.Optional[str]) -> None:
        super().__init__(websocket, engine, config, blocking, registry)
        self.noise_notice = noise_notice
        self.protocol = jp.JamProtocol(check_settings=engine.check_settings)
        self.pacer = Pacer("asap")
        self.binary = False

    async def on_frame(self, frame: tp.Union[str, bytes]) -> bool:
        bar_start = wants_bar(frame) if self.protocol.state is jp.State.IDLE else None
        if bar_start is not None:  # bar mode (streaming.bar.ws) reads the rest of this socket's frames
            await BarSocket(self, self.noise_notice).run(bar_start)
            self.ended = True  # the bar session is the registry's: held or ended by BarSocket
            return False
        try:
            command = self.parse(frame)
        except jp.ProtocolError as exc:
            await self.refuse(str(exc))
            return True
        return await self.handle(command)

    async def refuse(self, message: str) -> None:
        """A request that failed: `status` `refused` while the session plays on, `error` when none plays."""
        await self.send(je.refusal_event(message, playing=self.session is not None))

    async def handle(self, command: jp.Command) -> bool:
        """Acts on one command. Between `start` and the session's end the protocol is started and a session
        exists, through restarts too: an update or a melody always has a session to go to."""
        if isinstance(command, jp.Ping):
            await self.send(je.pong_event())
        elif isinstance(command, jp.Start):
            self.binary = command.binary_audio
            return await self.open(command.settings, command.pace, command.seed)
        elif isinstance(command, jp.Attach):
            self.binary = command.binary_audio
            await self.attach(command)
        elif isinstance(command, jp.RecordingRequest):
            await self.send(je.recording_event(self.jam.session_id))
        elif isinstance(command, jp.Update):
            try:
                placement = await asyncio.wrap_future(self.session.update(command.settings))
            except (SessionClosed, RuntimeError) as exc:
                await self.refuse(f"update: {exc}")
                return True
            self.pacer.pace = command.pace
            await self.send(je.status_event("updated", **je.placement_fields(placement, self.pacer.heard_in(placement)),
                                            **je.describe_update(command)))
        elif isinstance(command, jp.Melody):
            await self.set_melody(command.audio)
        elif isinstance(command, jp.Input):
            await self.play_input(command)
        elif isinstance(command, jp.Stop):
            self.ended = True
            await self.end_session()
            await self.send(je.stopped_event())
            await self.close(1000, "stopped")
            return False
        return True

    def drain_notice(self, seconds_left: float) -> str:
        return je.status_event("draining", draining=True, seconds_left=round(seconds_left))

    async def open(self, settings: SessionSettings, pace: str, seed: tp.Optional[int]) -> bool:
        """Starts the session; False when the connection must end (over the limit)."""
        seed = random_seed() if seed is None else seed
        self.pacer = Pacer(pace)
        try:
            await self.supervisor.start(settings, seed, self.pacer)
        except CapacityError as exc:
            await self.send(je.error_event("concurrency_limit_reached", limit=exc.limit))
            await self.close(CLOSE_TRY_AGAIN, "concurrency limit reached")
            return False
        except (EngineUnavailable, ValueError, RuntimeError) as exc:  # the protocol heard (session_lost)
            await self.send(je.error_event(f"could not start a session: {exc}"))
            return True
        self.jam.set_state(self.protocol)
        await self.send(je.started_event(self.jam.session_id))
        await self.send(je.status_event("playing", seed=seed, pace=pace, model=self.engine.describe()))
        return True

    async def attach(self, command: jp.Attach) -> None:
        """Plays a held session on this socket: the chunks its client lacks first (same indexes, the overlap
        going on), then the stream where it paused. The listener's clock starts afresh, at the held pace; the
        stream's lead goes on (it is the pump's)."""
        pacer = Pacer(self.pacer.pace)
        try:
            jam = self.supervisor.attach(command.session_id, pacer)
            held = jam.state(jp.JamProtocol)
            replay = self.pump.replay_from(command.from_chunk)
        except SessionError as exc:  # an attached session stays held for a try with another from_chunk
            if self.jam is not None:
                await self.supervisor.finish(keep=True)
            await self.send(je.error_event(str(exc), session_id=command.session_id))
            return
        pace = held.params.get("pace", "asap")
        self.protocol.attached(held)
        jam.set_state(self.protocol)
        self.pacer = pacer
        pacer.pace = pace
        first = replay[0].index if replay else self.pump.sent_until
        await self.send(je.started_event(jam.session_id, resumed=True, from_chunk=first))
        await self.send(je.status_event("resumed", from_chunk=first, pace=pace, model=self.engine.describe()))
        await self.pump.resend(replay)
        self.supervisor.play()

    async def set_melody(self, data: tp.Optional[bytes]) -> None:
        """Decodes the melody (at most one 30 s window of it) and hands it to the session, on the blocking
        pool (the analysis waits for the codec thread)."""
        session = self.session

        def follow() -> Landing:
            melody = None
            if data is not None:
                piece = decode_slice(data, max_seconds=WINDOW_SECONDS)
                melody = (piece.wav, piece.sample_rate)
            return session.set_melody(melody)

        try:
            first = await self.supervisor.run(follow)
        except (AudioInputError, ValueError) as exc:
            await self.refuse(f"melody: {exc}")
            return
        if self.jam is not None:
            self.jam.recording.note("melody", following=data is not None, chunk=first.chunk,
                                    offset_seconds=round(first.offset_seconds, 4))
        await self.send(je.status_event("melody", following=data is not None,
                                        **je.placement_fields(first, self.pacer.heard_in(first))))

    async def play_input(self, command: jp.Input) -> None:
        """Hands the player's audio to the session (resampled on the blocking pool; frames are read one at a time,
        so pieces keep their order). Silent when taken; a `status` `input_dropped` with the reason when the engine
        dropped it (faster than real time, too far from the session's audio, too much waiting)."""
        session = self.session
        try:
            receipt = await self.supervisor.run(session.play_input, command.samples, command.sample_rate,
                                                command.time)
        except (SessionClosed, ValueError) as exc:
            await self.refuse(f"input: {exc}")
            return
        if receipt.dropped is not None:
            await self.send(je.status_event("input_dropped", error=receipt.dropped,
                                            time=round(receipt.start_seconds, 4)))

    async def send_chunk(self, chunk) -> None:
        await self.send(*je.chunk_events(chunk, self.binary, self.noise_notice))

    def session_lost(self) -> None:
        self.protocol.session_ended()

    async def on_generation_error(self, exc: Exception) -> None:
        """Says what failed (a `status`: the session goes on), then goes on with a fresh context (new seed) on
        the same slot, from the settings and melody in force, those sent meanwhile included; unless the failures
        repeat without a chunk in between, and then the session ends (`error`, `stopped`) and a new `start` may
        come (streaming.sessions.supervisor)."""

        async def tell(restarting: bool) -> None:
            if restarting:
                await self.send(je.restarting_event(f"generation failed: {exc}"))
            else:
                await self.send(je.error_event(f"generation failed: {exc}; the session ended"))

        try:
            outcome = await self.supervisor.recover(tell)
            if outcome.recovery is Recovery.RESTARTED:
                await self.send(je.status_event("restarted", seed=outcome.seed, pace=self.pacer.pace,
                                                model=self.engine.describe()))
                self.supervisor.play()  # unless stopped while the status went out
            elif outcome.recovery is Recovery.GAVE_UP:
                if outcome.reason is not None:
                    await self.send(je.error_event(outcome.reason))
                await self.send(je.stopped_event())
        except Exception as send_failure:  # the client is gone too
            logger.debug("could not report a generation failure: %s", send_failure)

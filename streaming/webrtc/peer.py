"""WebRTC playback in FastRTC's wire format: the aiortc I/O shell around `streaming.webrtc.protocol`.

`POST /webrtc/offer` opens a peer (a jam session on the shared engine, an Opus track of it, the `"text"` data
channel for controls) or trickles an ICE candidate to one; `POST /webrtc/input` steers a peer by id. A peer takes
one of the engine's session slots (shared with /ws/jam and Lyria) at the offer and gives it back exactly once,
however it ends: the client stops or closes, ICE/DTLS fails, it never connects within the timeout, or the server
shuts down. Before it connects, the peer connection's and ICE's "failed"/"closed" end it at once (the peer
connection's state covers DTLS's), and a peer whose ICE connected must finish DTLS within DTLS_SECONDS: a client
that closes mid-handshake sends nothing, and aiortc would wait for ICE consent to expire (about 30 s). A
generation failure is told on the data channel and the session restarts with a fresh context, on the slot it holds.
A send-receive offer's audio (the player's microphone) goes into the session (streaming.webrtc.listen).
"""

import asyncio
import logging
import time
import typing as tp
from concurrent.futures import Executor
from dataclasses import dataclass, replace

from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.rtcdatachannel import RTCDataChannel
from aiortc.sdp import candidate_from_sdp

from engine.api import SessionClosed, SessionSettings, random_seed
from streaming.formats import OPUS_APPLICATION, OPUS_SAMPLE_RATE, OpusEncoder, StreamingResampler, pcm16_array
from streaming.jam import protocol as jp
from streaming.sessions.registry import RegisteredSession, SessionRegistry
from streaming.sessions.supervisor import Recovery, Supervisor
from streaming.sessions.tasks import Tasks
from streaming.webrtc import protocol as wp
from streaming.webrtc.listen import TrackListener
from streaming.webrtc.track import CHANNELS, SessionTrack, TrackPace

logger = logging.getLogger(__name__)

# generated in decode units of 16 MusicGen frames (50 Hz), whatever chunk length the client's params name; the
# session's pump (streaming.sessions.pump) asks for the next unit when the track holds the stream's lead
# (streaming.sessions.lead, TrackPace), and the track drains 20 ms at a time
UNIT_SECONDS = 0.32
FLUSH_SECONDS = 0.5  # how long a closing peer waits for its last data-channel messages to leave
PC_CLOSE_SECONDS = 2.0  # at server shutdown aiortc's own close task may be cancelled and never finish
TRICKLE_WAIT_SECONDS = 10.0  # a candidate that races its offer waits this long for the offer to be applied
NO_AUDIO_LINGER_SECONDS = 2.0  # how long a peer without audio stays after saying so, for the message to arrive
# DTLS takes two round trips after ICE connects (its first retransmission comes after 1 s): a peer still without
# DTLS this long after ICE connected has lost its client
DTLS_SECONDS = 5.0


@dataclass(frozen=True)
class HeldPeer:
    """What a resumed peer takes over from the one that dropped, beside the session's pump with its unit in the
    making (streaming.sessions.registry keeps it as the session's state)."""

    controls: wp.Controls
    settings: SessionSettings
    seed: int


class Peer:
    """One WebRTC client: its peer connection, jam session, track, controls and the tasks that feed them.

    Its session is registered by id (streaming.sessions.registry, kind "webrtc"): a peer whose connection fails or
    closes without the client's `stop` leaves the session held, and an offer with `params.session_id` plays it on a new
    peer, from the unit in the making on (the track's buffered audio went with the old connection). The session's
    pump delivers each unit here (`_deliver`: resampled to 48 kHz, into the track) at the track's pace."""

    def __init__(self, webrtc_id: str, offer: wp.Offer, engine, blocking: Executor, notice: tp.Optional[str],
                 on_closed: tp.Callable[["Peer"], None], registry: SessionRegistry) -> None:
        self.webrtc_id = webrtc_id
        self.offer = offer
        self.engine = engine
        self.notice = notice
        self.registry = registry
        self.controls = offer.controls
        self.settings = replace(offer.settings, chunk_seconds=UNIT_SECONDS) if offer.settings else None
        self.seed = offer.seed if offer.seed is not None else random_seed()
        self.on_closed = on_closed
        self.track = SessionTrack(OpusEncoder(), self._underrun, self._recovered)
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))  # host candidates only: no STUN lookups
        self.tasks = Tasks()
        self.supervisor = Supervisor(engine, blocking, registry, "webrtc", owner=self, tasks=self.tasks)
        self.supervisor.pumped(self._deliver, self._generation_failed)
        self.resampler: tp.Optional[StreamingResampler] = None  # made at the first unit of each stream
        self.channel: tp.Optional[RTCDataChannel] = None
        self.pushed_until = 0.0  # the stream's timeline up to which audio went into the track
        self.offered_at = time.monotonic()
        self.described = asyncio.Event()  # the offer is applied: trickled candidates can be added
        self.state = wp.PeerState.NEW
        self.connected = asyncio.Event()  # set at CONNECTED
        self.ended = asyncio.Event()
        self.ice_connected_at: tp.Optional[float] = None  # when ICE connected (DTLS starts then)
        self._changed = asyncio.Event()  # a connection or ICE state changed: the connect watch looks again
        self.end_reason = "closed"

    @property
    def closed(self) -> bool:
        """The peer ended (close() ran or runs): nothing new may start on it."""
        return self.supervisor.closed

    @property
    def jam(self) -> tp.Optional[RegisteredSession]:
        return self.supervisor.jam

    @property
    def resumed(self) -> bool:
        return self.offer.session_id is not None

    async def start_session(self) -> None:
        """Opens the jam session (taking an engine slot: CapacityError when none is free), or takes over the held
        one the offer names (SessionError); generation starts at once, while ICE connects. An offer without
        audio has no track to play a session on: it takes none."""
        if not self.offer.audio:
            return
        if self.resumed:
            playing = self.registry.get(self.offer.session_id)
            if playing is not None and isinstance(playing.owner, Peer):
                await playing.owner.close(wp.REPLACED)  # held by that close, attached just below
            jam = self.supervisor.attach(self.offer.session_id, TrackPace(self.track))
            held = jam.state(HeldPeer)
            self.controls, self.settings, self.seed = held.controls, held.settings, held.seed
            self.supervisor.play()
        else:
            await self.supervisor.start(self.settings, self.seed, TrackPace(self.track))

    async def answer(self, connect_timeout: float) -> str:
        """Answers the offer (the server's candidates are inside the SDP) and starts the connect timer."""
        if self.offer.audio:
            # sendrecv: a send-receive offer's microphone comes back on it (a recvonly offer is answered sendonly)
            transceiver = self.pc.addTransceiver(self.track, direction="sendrecv")
            transceiver.setCodecPreferences([codec for codec in RTCRtpSender.getCapabilities("audio").codecs
                                             if codec.mimeType.lower() == "audio/opus"])
        self.pc.on("connectionstatechange", self._state_changed)
        self.pc.on("iceconnectionstatechange", self._ice_state_changed)
        self.pc.on("datachannel", self._channel_opened)
        self.pc.on("track", self._track_received)
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=self.offer.sdp, type="offer"))
        self.described.set()
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        self.tasks.spawn(self._watch(connect_timeout), name=f"webrtc-{self.webrtc_id}")
        return self.pc.localDescription.sdp

    async def add_candidate(self, candidate: tp.Optional[dict]) -> None:
        """A trickled client candidate (None: end of candidates), once the offer is applied. Raises ValueError when
        it cannot be parsed, LookupError when the peer closed meanwhile."""
        await asyncio.wait_for(self.described.wait(), TRICKLE_WAIT_SECONDS)
        if self.closed:
            raise LookupError(self.webrtc_id)
        if candidate is None:
            await self.pc.addIceCandidate(None)
            return
        text = candidate["candidate"].removeprefix("candidate:")
        try:
            parsed = candidate_from_sdp(text)
        except (AssertionError, ValueError, IndexError) as exc:  # aiortc's parser asserts on too few fields
            raise ValueError(f"cannot parse candidate {candidate['candidate']!r}: {exc}") from None
        parsed.sdpMid = candidate.get("sdpMid")
        parsed.sdpMLineIndex = candidate.get("sdpMLineIndex")
        await self.pc.addIceCandidate(parsed)

    async def steer(self, update: jp.Update) -> dict:
        """Applies new settings from the next decode step; says where they start and when they are heard (after
        the track's audio and the unit's before them). Raises SessionClosed, or RuntimeError when refused."""
        session = self.supervisor.session
        if session is None:
            raise SessionClosed("the session ended")
        placement = await asyncio.wrap_future(session.update(replace(update.settings, chunk_seconds=UNIT_SECONDS)))
        heard_in = self.track.buffered_seconds + max(0.0, placement.stream_seconds - self.pushed_until)
        return wp.update_acknowledgement(update, placement, heard_in)

    def send(self, message: str) -> None:
        """Best effort: before the channel opens or after it closed there is nobody to tell."""
        if self.channel is not None and self.channel.readyState == "open":
            self.channel.send(message)

    # -- events -------------------------------------------------------------------------------------------------
    def _state_changed(self) -> None:
        """The peer connection's state (aiortc's: "failed" when ICE or DTLS failed, "closed" once closed)."""
        reported = self.pc.connectionState
        logger.info("webrtc %s: connection %s", self.webrtc_id, reported)
        after = wp.peer_state(self.state, reported)
        if after is wp.PeerState.ENDED:
            self._end(f"connection {reported}")
        else:
            self.state = after
            if after is wp.PeerState.CONNECTED:
                self.connected.set()
        self._changed.set()

    def _ice_state_changed(self) -> None:
        """ICE's state: "completed" starts the DTLS clock; "failed"/"closed" end the peer as the connection's do."""
        reported = self.pc.iceConnectionState
        logger.info("webrtc %s: ICE %s", self.webrtc_id, reported)
        if reported in ("completed", "connected") and self.ice_connected_at is None:
            self.ice_connected_at = time.monotonic()
        elif reported in ("failed", "closed"):
            self._end(f"connection {reported}")
        self._changed.set()

    def _end(self, reason: str) -> None:
        """The peer's connection is over (once): `_watch` closes the peer with `reason`."""
        if self.state is not wp.PeerState.ENDED:
            self.state, self.end_reason = wp.PeerState.ENDED, reason
            self.ended.set()

    def _track_received(self, track) -> None:
        """The client's microphone (a send-receive offer): read into the session while it plays."""
        if track.kind != "audio" or not self.offer.audio:
            return
        listener = TrackListener(track, lambda: self.supervisor.session,
                                 lambda: self.pushed_until - self.track.buffered_seconds,
                                 lambda data: self.send(wp.log(data)), lambda text: self.send(wp.warning(text)))
        self.tasks.spawn(listener.run(), name=f"webrtc-input-{self.webrtc_id}")

    def _channel_opened(self, channel: RTCDataChannel) -> None:
        if channel.label != "text":
            logger.info("webrtc %s: ignoring data channel %r (controls use \"text\")", self.webrtc_id, channel.label)
            return
        self.channel = channel
        channel.on("message", self._message)
        if not self.offer.audio:  # FastRTC's `error` on the channel says what the offer lacks; then the peer ends
            self.send(wp.error(wp.NO_AUDIO))
            self.tasks.spawn(self._end_after(NO_AUDIO_LINGER_SECONDS, "the offer had no audio section"),
                             name=f"webrtc-no-audio-{self.webrtc_id}")
            return
        self.send(wp.log({"event": "started", "webrtc_id": self.webrtc_id, "seed": self.seed,
                          "session_id": self.jam.session_id if self.jam else None, "resumed": self.resumed,
                          "model": self.engine.describe(), "notice": self.notice,
                          "audio": {"codec": "opus", "sample_rate": OPUS_SAMPLE_RATE, "channels": CHANNELS,
                                    "frame_ms": 20, "bitrate": self.track.encoder.bitrate,
                                    "application": OPUS_APPLICATION}}))

    def _message(self, message: tp.Union[str, bytes]) -> None:
        if isinstance(message, bytes):
            self.send(wp.error("binary messages are not accepted: send JSON text"))
            return
        try:
            command = self.controls.receive_text(message)
        except jp.ProtocolError as exc:
            self.send(wp.error(str(exc)))
            return
        if isinstance(command, wp.Handshake):
            self.send(wp.received(message))
        elif isinstance(command, jp.Ping):
            self.send(wp.log("pong"))
        elif isinstance(command, jp.Update):
            self.tasks.spawn(self._acknowledge(self.steer(command)), name=f"webrtc-update-{self.webrtc_id}")
        elif isinstance(command, jp.Stop):
            self.send(wp.log("stopped"))
            self.state, self.end_reason = wp.PeerState.ENDED, "stopped by the client"
            self.ended.set()

    async def _end_after(self, seconds: float, reason: str) -> None:
        await asyncio.sleep(seconds)
        if self.state is not wp.PeerState.ENDED:
            self.state, self.end_reason = wp.PeerState.ENDED, reason
            self.ended.set()

    async def _acknowledge(self, steering: tp.Awaitable[dict]) -> None:
        try:
            self.send(wp.log(await steering))
        except RuntimeError as exc:  # SessionClosed too
            self.send(wp.error(f"update: {exc}"))

    def _underrun(self, count: int) -> None:
        self.send(wp.warning(f"generation is behind real time: playing silence until the next chunk "
                             f"(underrun {count}, {self.track.buffered_seconds:.2f} s buffered)"))

    def _recovered(self, silence_seconds: float) -> None:
        self.send(wp.log({"event": "recovered", "silence_seconds": round(silence_seconds, 3)}))

    # -- the pump's delivery -----------------------------------------------------------------------------------
    async def _deliver(self, chunk) -> None:
        """A unit from the session's pump: resampled (on the default executor, beside the Opus frames) into the
        track, and told on the data channel."""
        if self.resampler is None:
            self.resampler = StreamingResampler(chunk.sample_rate, OPUS_SAMPLE_RATE, CHANNELS)
        pcm = await asyncio.get_running_loop().run_in_executor(None, self._to_pcm, chunk)
        self.pushed_until = chunk.start_seconds + chunk.seconds
        self.track.push(pcm)
        self.send(wp.chunk_log(chunk, self.track.buffered_seconds, self.track.underruns, self.notice))

    async def _generation_failed(self, exc: Exception) -> None:
        """A generation failure is told, and the session goes on with a fresh context (new seed) on its slot;
        after MAX_RESTARTS failures in a row the session ends and the track plays silence
        (streaming.sessions.supervisor). A session that closed (the peer ends) is no failure."""
        if isinstance(exc, SessionClosed):
            return
        logger.warning("webrtc %s: generation failed: %s", self.webrtc_id, exc)

        async def tell(restarting: bool) -> None:
            self.send(wp.error(f"generation failed: {exc}; " + (
                "restarting with a fresh context" if restarting else "the track plays silence")))

        outcome = await self.supervisor.recover(tell)
        if outcome.recovery is Recovery.RESTARTED:
            self.seed = outcome.seed
            self.resampler = None  # a restarted stream starts afresh (chunks from 0, no left context)
            self.supervisor.play()
        elif outcome.reason is not None:  # no engine: silence, and say why
            self.send(wp.error(f"{outcome.reason}; the track plays silence"))

    def _to_pcm(self, chunk):
        new = int(round(chunk.seconds * chunk.sample_rate))
        return pcm16_array(self.resampler.process(chunk.audio[:, :new], chunk.audio[:, new:]))

    async def _watch(self, connect_timeout: float) -> None:
        """Ends the peer when it is not connected in time, its connection ends (before it connected too), or the
        server shuts down (the task is cancelled and the cleanup below still runs)."""
        try:
            if await self._connects(connect_timeout):
                await self.ended.wait()
        except asyncio.CancelledError:
            self.end_reason = "server shutting down"
            raise
        finally:
            await self.close(self.end_reason)

    async def _connects(self, connect_timeout: float) -> bool:
        """True once ICE and DTLS are up; False as soon as the peer ended first, or when it did not connect within
        `connect_timeout` or finish DTLS within DTLS_SECONDS of ICE connecting (`end_reason` says which)."""
        started = time.monotonic()
        while not self.connected.is_set():
            if self.ended.is_set():
                return False
            deadline, why = started + connect_timeout, f"not connected within {connect_timeout:g} s"
            if self.ice_connected_at is not None and self.ice_connected_at + DTLS_SECONDS < deadline:
                deadline = self.ice_connected_at + DTLS_SECONDS
                why = f"DTLS not completed within {DTLS_SECONDS:g} s of ICE connecting: the client is gone"
            if time.monotonic() >= deadline:
                self.end_reason = why
                return False
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), deadline - time.monotonic())
            except TimeoutError:
                pass
        return True

    async def on_drain(self, seconds_left: float) -> None:
        """The replica drains: FastRTC's `warning` on the data channel says how long the session has."""
        self.send(wp.warning(f"this server is draining: the session ends within {seconds_left:.0f} s; connect "
                             "again to continue on another replica"))

    async def drain_close(self, reason: str) -> None:
        await self.close(reason)

    async def close(self, reason: str) -> None:
        """Frees everything the peer holds, once: tasks, session, track, connection, then its slot."""
        if self.closed:
            return
        self.supervisor.closed = True
        self.state = wp.PeerState.ENDED
        self.described.set()  # a trickle request waiting for the offer wakes and finds the peer gone
        first = f"{self.track.first_frame_at - self.offered_at:.2f} s" if self.track.first_frame_at else "never"
        logger.info("webrtc %s ended: %s (%d underruns, %.3f s encode CPU for %d frames, first audio after %s)",
                    self.webrtc_id, reason, self.track.underruns, self.track.encode_cpu_seconds, self.track.frames,
                    first)
        try:
            await self.tasks.close()  # the pump first: it leaves the unit in the making to the session
            await self.supervisor.finish(keep=self._held(reason))
            self.track.stop()
            deadline = time.monotonic() + FLUSH_SECONDS
            while self.channel is not None and self.channel.readyState == "open" and \
                    self.channel.bufferedAmount > 0 and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            try:
                await asyncio.wait_for(self.pc.close(), PC_CLOSE_SECONDS)
            except TimeoutError:
                logger.warning("webrtc %s: the peer connection did not close within %g s", self.webrtc_id,
                               PC_CLOSE_SECONDS)
        finally:
            self.on_closed(self)

    def _held(self, reason: str) -> bool:
        """Whether the session is held for a new offer (protocol.keeps_session says when), with what that
        offer's peer takes over; otherwise it ends, freeing the slot (the pending unit resolves SessionClosed)."""
        if self.jam is None or not wp.keeps_session(reason, self.connected.is_set(), self.resumed):
            return False
        self.jam.set_state(HeldPeer(self.controls, self.settings, self.seed))
        return True

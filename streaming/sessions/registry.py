"""Live sessions by id, independent of the connection that plays them: resume after a drop, and their recordings.

Every session gets an unguessable id, 128 random bits (`secrets.token_urlsafe(16)`) after the replica's prefix
(`JAM_REPLICA_ID` and a dot, when set, so that a balancer can send every request that names the id to the replica
that holds the session: deploy/haproxy.cfg). The id is the credential of its session (JAM_TOKEN still applies).

When a connection that can resume (/ws/jam `rt`, WebRTC) ends without `stop`, its session is held for
`resume_seconds`: its pump (streaming.sessions.pump) stops after the chunk in the making, which it keeps with the
last chunks the session generated, and the slot stays taken. A new connection that names the id within that time
attaches and goes on from the first chunk its client lacks, same indexes, same stream (a seeded session gives the
audio it would have given uninterrupted). After `resume_seconds` the session ends and its slot is freed. While the
replica drains, a dropped session is not held (its client should reconnect elsewhere), and the drain's end closes
what is held. A session an HTTP client drives (bar mode's `/jam/*`) is held afresh between its requests, and that
goes on while the replica drains (its client is still there) until the drain's end. Runs on the sidecar's event loop
only.
"""

import asyncio
import logging
import secrets
import typing as tp

from starlette.requests import Request

from streaming.sessions.pump import ChunkPump, SessionError
from streaming.sessions.recording import Recording, RecordingStore

logger = logging.getLogger(__name__)

ID_BYTES = 16
T = tp.TypeVar("T")


class RegisteredSession:
    """A session as the registry holds it: the engine session (bar mode's: its BarSource), its one pump (the chunk
    in the making, the lead, the last chunks: they go from one connection to the next), its recording, and the
    state its transport needs to go on (`state`: /ws/jam's protocol object with the parameters in force, a WebRTC
    peer's controls, bar mode's listeners)."""

    def __init__(self, session_id: str, kind: str, session, recording: Recording) -> None:
        self.session_id = session_id
        self.kind = kind
        self.session = session
        self.recording = recording
        self.pump = ChunkPump(session, on_chunk=recording.add)
        self.owner: tp.Optional[object] = None
        self._state: object = None
        self._expiry: tp.Optional[asyncio.TimerHandle] = None

    def set_state(self, state: object) -> None:
        """Keeps what the transport needs to go on with this session on its next connection."""
        self._state = state

    def state(self, kind: type[T]) -> T:
        """The transport's state, as the `kind` it kept; SessionError when the session has none of that kind."""
        if not isinstance(self._state, kind):
            raise SessionError(f"session {self.session_id} cannot go on here: it has no {kind.__name__}")
        return self._state

    def restarted(self, seed: int) -> None:
        """A fresh context: its chunks count from 0 again, so nothing before it can be replayed."""
        self.pump.restarted()
        self.recording.restarted(seed)

    @property
    def connected(self) -> bool:
        """Whether an open connection plays this session (a WebSocket transport's): a balancer counts that
        connection. A held session has none, a WebRTC peer's audio goes over UDP, and an HTTP-driven bar session
        has at most a request in flight."""
        return self.owner is not None and self.kind != "webrtc" and not isinstance(self.owner, Request)

    def disarm(self) -> None:
        """Stops the hold's clock (the session is attached, held afresh, or ended)."""
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None


def _check_id(session_id: tp.Any) -> None:
    if not isinstance(session_id, str) or not session_id:
        raise SessionError("session_id must be the id the server gave in `started`")


class SessionRegistry:
    """The live sessions of this replica by id, and the store of their recordings."""

    def __init__(self, resume_seconds: float, recordings: RecordingStore, prefix: str = "") -> None:
        self.resume_seconds = resume_seconds
        self.recordings = recordings
        # the LoRA adapter bar mode's new sessions and generations play (None: the loaded checkpoint), chosen by
        # magenta-retry's `POST /model/select` (streaming.gary.model_info.select); running sessions keep theirs
        self.model: tp.Optional[str] = None
        self.prefix = f"{prefix}." if prefix else ""
        self.holding = resume_seconds > 0  # dropped sessions are held: False once the replica drains
        self.keeping = resume_seconds > 0  # HTTP-driven sessions are held between requests: False once drained
        self._jams: dict[str, RegisteredSession] = {}

    @classmethod
    def from_config(cls, config) -> "SessionRegistry":
        """The registry a ServerConfig describes (resume window, replica prefix, recording bounds)."""
        return cls(config.resume_seconds, RecordingStore(config.recording_minutes, config.recording_keep_seconds,
                                                         config.max_recordings), prefix=config.replica_id)

    @property
    def held(self) -> int:
        return sum(1 for jam in self._jams.values() if jam.owner is None)

    @property
    def unconnected(self) -> int:
        """Sessions no open connection plays (RegisteredSession.connected): what a balancer cannot count."""
        return sum(1 for jam in self._jams.values() if not jam.connected)

    def new_id(self) -> str:
        return self.prefix + secrets.token_urlsafe(ID_BYTES)

    def open(self, kind: str, session, seed: int, model: dict, owner: object,
             session_id: tp.Optional[str] = None) -> RegisteredSession:
        """Registers a session just opened by `owner`, with a new id (or `session_id`, one from `new_id` that a
        transport told its client before the session opened: the recording of that id goes on) and a
        recording."""
        session_id = session_id or self.new_id()
        jam = RegisteredSession(session_id, kind, session, self.recordings.start(session_id, kind, seed, model))
        jam.owner = owner
        self._jams[session_id] = jam
        return jam

    def get(self, session_id: tp.Any) -> tp.Optional[RegisteredSession]:
        return self._jams.get(session_id) if isinstance(session_id, str) else None

    def attach(self, session_id: tp.Any, kind: str, owner: object) -> RegisteredSession:
        """Hands a held session to `owner`. SessionError when the id is unknown, expired, of another kind of
        session, or played by another connection."""
        _check_id(session_id)
        jam = self._jams.get(session_id)
        if jam is None:
            recording = self.recordings.get(session_id)
            if recording is not None and recording.ended_at is not None:
                raise SessionError(f"session {session_id} has ended (sessions are held {self.resume_seconds:g} s "
                                   "after their connection drops); its recording can still be downloaded")
            raise SessionError(f"no session {session_id} on this server")
        if jam.kind != kind:
            raise SessionError(f"session {session_id} is a {jam.kind} session; it cannot be attached as {kind}")
        if jam.owner is not None:
            raise SessionError(f"session {session_id} is being played by another connection: close that one first")
        jam.disarm()
        jam.owner = owner
        logger.info("session %s attached", session_id)
        return jam

    def find(self, session_id: tp.Any, kind: str) -> RegisteredSession:
        """A live session of `kind` by id, whoever plays it (HTTP routes that act on a session without owning a
        connection: bar mode's /jam/*); SessionError as `attach` says."""
        _check_id(session_id)
        jam = self._jams.get(session_id)
        if jam is None or jam.kind != kind:
            raise SessionError(f"no {kind} session {session_id} on this server")
        return jam

    def hold(self, jam: RegisteredSession, between_requests: bool = False) -> bool:
        """Keeps a session whose connection dropped for `resume_seconds`; False when this replica does not hold
        sessions now (resume off, or draining): then the caller ends it. `between_requests`: the session of an HTTP
        client between two of its requests, held while the replica drains too, until the drain's end."""
        if not (self.keeping if between_requests else self.holding) or jam.session_id not in self._jams:
            return False
        jam.owner = None
        jam.disarm()  # held again (an HTTP-driven session at each request): the time starts again
        jam._expiry = asyncio.get_running_loop().call_later(self.resume_seconds, self._expire, jam)
        logger.info("session %s held for %g s", jam.session_id, self.resume_seconds)
        return True

    def end(self, jam: RegisteredSession) -> None:
        """Ends a session for good: its slot is freed and its recording is complete."""
        if self._jams.pop(jam.session_id, None) is None:
            return
        jam.disarm()
        jam.pump.close()
        jam.session.close()
        self.recordings.ended(jam.recording)

    def _expire(self, jam: RegisteredSession) -> None:
        jam._expiry = None
        if jam.owner is None:
            logger.info("session %s was not resumed within %g s: ended", jam.session_id, self.resume_seconds)
            self.end(jam)

    def close(self) -> None:
        """Ends every session (the server stops)."""
        for jam in list(self._jams.values()):
            self.end(jam)

    # -- as a member of the replica's drain (streaming.app.capacity.Drain) ------------------------------------------
    async def on_drain(self, seconds_left: float) -> None:
        self.holding = False

    async def drain_close(self, reason: str) -> None:
        self.keeping = False
        for jam in [jam for jam in self._jams.values() if jam.owner is None]:
            self.end(jam)

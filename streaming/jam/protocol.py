"""The /ws/jam wire protocol (Magenta RealTime's jam API) as a pure state machine: no sockets, no model.

`JamProtocol.receive_text` turns one client message into commands (or an error to send); streaming.jam.events
builds the server's messages. Frame units are the protocol's: 25 frames per second, whatever the model's rate.
"""

import enum
import typing as tp
from dataclasses import dataclass

from pydantic import BaseModel, BeforeValidator, ConfigDict

from engine.api import SessionSettings
from engine.api import params as rules
from streaming.jam.params import DEFAULTS, JamParams, parse_params, settings_of
from streaming.jam.params import settings_from as settings_from
from streaming.wire import Base64Audio, WireError, load_object

MAX_MELODY_MESSAGE_BYTES = 1000 * 1024  # a melody message carries an audio file; others stay under 64 KiB
FROM_CHUNK = rules.integer(0, rules.MAX_EXACT_INTEGER)
SettingsCheck = tp.Callable[[SessionSettings], None]  # the engine's own check (e.g. prompt length in tokens)


class State(enum.Enum):
    """A connection's protocol state: IDLE -> STARTED (start, or an attach) -> STOPPED (stop); back to IDLE when the
    session ends on the server's side without a stop (generation failed for good)."""

    IDLE = "idle"
    STARTED = "started"
    STOPPED = "stopped"


class ProtocolError(ValueError):
    """A client message that cannot be acted on; its text is sent back in an error event."""


# -- the fields around a message's params (the params themselves: streaming.jam.params) ---------------------------
def _rt(mode: tp.Any) -> tp.Any:
    if mode != "rt":
        raise ValueError(f'mode {mode!r} is not supported: only "rt"')
    return mode


def _object(value: tp.Any) -> tp.Any:
    if not isinstance(value, dict):
        raise ValueError("params must be a JSON object")
    return value


class Envelope(BaseModel):
    """Strict values (engine.params); unknown names are ignored here, as Magenta RealTime's server ignores them."""

    model_config = ConfigDict(**rules.STRICT, frozen=True)


class StartMessage(Envelope):
    mode: tp.Annotated[str, BeforeValidator(_rt)] = "rt"
    binary_audio: bool = False
    from_chunk: tp.Optional[FROM_CHUNK] = None  # an attach's: the first chunk its client lacks
    params: tp.Annotated[dict, BeforeValidator(_object)] = {}


class MelodyMessage(Envelope):
    audio_base64: Base64Audio = None  # an audio file to follow; null (or "") drops the melody


def _read(model: type[Envelope], message: dict) -> tp.Any:
    try:
        return rules.validate(model, message)
    except ValueError as exc:
        raise ProtocolError(str(exc)) from None


@dataclass(frozen=True)
class Start:
    settings: SessionSettings
    pace: str
    binary_audio: bool
    seed: tp.Optional[int] = None  # None: the server picks one and reports it


@dataclass(frozen=True)
class Update:
    settings: SessionSettings
    pace: str
    changed: tuple[str, ...]


@dataclass(frozen=True)
class Stop:
    pass


@dataclass(frozen=True)
class Melody:
    """Follow this melody (the bytes of an audio file in any format ffmpeg reads), or none (None); melody
    checkpoints only."""

    audio: tp.Optional[bytes]


@dataclass(frozen=True)
class Ping:
    pass


@dataclass(frozen=True)
class Attach:
    """Play a session held since its connection dropped (streaming.sessions.registry), from chunk `from_chunk` (None:
    the first one the old connection did not finish sending)."""

    session_id: str
    from_chunk: tp.Optional[int]
    binary_audio: bool


@dataclass(frozen=True)
class RecordingRequest:
    pass


Command = tp.Union[Start, Update, Stop, Ping, Melody, Attach, RecordingRequest]


class JamProtocol:
    """One connection's protocol state: idle -> started -> stopped (and back to idle when the session ends
    without a stop, e.g. after generation failed for good). `check_settings` is the engine's validation of what
    only the model can judge; it runs before any state changes."""

    def __init__(self, check_settings: SettingsCheck = lambda settings: None) -> None:
        self.state = State.IDLE
        self.params: dict = {}
        self.check_settings = check_settings

    def session_ended(self) -> None:
        """The session ended on the server's side: a new start may come."""
        self.state = State.IDLE

    def _validated(self, params: dict) -> tuple[JamParams, SessionSettings]:
        """The parameters by their rules (streaming.jam.params), then by the engine's check."""
        try:
            model = parse_params(params)
            settings = settings_of(model)
            self.check_settings(settings)
        except ValueError as exc:
            raise ProtocolError(str(exc)) from None
        return model, settings

    def receive_bytes(self, data: bytes) -> Command:
        raise ProtocolError("binary frames are not accepted from clients: send JSON text messages")

    def receive_text(self, text: str) -> Command:
        try:
            message = load_object(text, max_bytes=MAX_MELODY_MESSAGE_BYTES)
            if message.get("type") != "melody":
                load_object(text)  # the ordinary size limit
        except WireError as exc:
            raise ProtocolError(str(exc)) from None
        kind = message.get("type")
        if kind == "ping":
            return Ping()
        if kind == "melody":
            return self._melody(message)
        if kind == "start":
            return self._start(message)
        if kind == "update":
            return self._update(message)
        if kind == "stop":
            if self.state is not State.STARTED:
                raise ProtocolError("stop before start: nothing is playing")
            self.state = State.STOPPED
            return Stop()
        if kind == "recording":
            if self.state is not State.STARTED:
                raise ProtocolError("recording before start: start or attach a session first")
            return RecordingRequest()
        raise ProtocolError(f"unknown message type {kind!r}: expected start, update, melody, recording, stop or "
                            "ping")

    def attached(self, held: "JamProtocol") -> None:
        """The shell attached a held session: its protocol state (the parameters in force) goes on here."""
        self.state, self.params = State.STARTED, dict(held.params)

    def _melody(self, message: dict) -> Melody:
        if self.state is not State.STARTED:
            raise ProtocolError("melody before start: send start first")
        return Melody(_read(MelodyMessage, message).audio_base64)

    def _start(self, message: dict) -> Start:
        if self.state is not State.IDLE:
            raise ProtocolError("start was already received on this connection; send update to change parameters")
        start = _read(StartMessage, message)
        if "session_id" in message:  # attach to a held session (the registry checks the id): its parameters stay
            return Attach(session_id=message["session_id"], from_chunk=start.from_chunk,
                          binary_audio=start.binary_audio)
        merged = {**DEFAULTS, **start.params}
        model, settings = self._validated(merged)
        self.params = {k: v for k, v in merged.items() if k != "seed"}
        self.state = State.STARTED
        seed = None if model.seed == -1 else model.seed
        return Start(settings=settings, pace=model.pace, binary_audio=start.binary_audio, seed=seed)

    def _update(self, message: dict) -> Update:
        if self.state is not State.STARTED:
            raise ProtocolError("update before start: send start first")
        changes = {k: v for k, v in message.items() if k != "type"}
        if isinstance(message.get("params"), dict):  # accept the start message's nesting too
            changes = {**{k: v for k, v in changes.items() if k != "params"}, **message["params"]}
        if not changes:
            raise ProtocolError("update names no parameter to change")
        if "seed" in changes:
            raise ProtocolError("seed can only be set when the session starts: it fixes the whole session")
        if "model" in changes and changes["model"] != self.params.get("model"):
            raise ProtocolError("model can only be set when the session starts: a session plays one model from its "
                                "start (start a new session for another)")
        if "styles" in changes and "style_weights" not in changes:
            changes["style_weights"] = None  # new styles without weights: equal weights
        merged = {**self.params, **changes}
        model, settings = self._validated(merged)  # raises before anything changes
        self.params = merged
        return Update(settings=settings, pace=model.pace, changed=tuple(sorted(changes)))


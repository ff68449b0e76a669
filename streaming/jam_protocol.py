"""The /ws/jam wire protocol (Magenta RealTime's jam API) as a pure state machine: no sockets, no model.

`JamProtocol.receive_text` turns one client message into commands (or an error to send); streaming.jam_events
builds the server's messages. Frame units are the protocol's: 25 frames per second, whatever the model's rate.
"""

import base64
import enum
import math
import typing as tp
from dataclasses import dataclass

from engine.api import (
    MAX_GUIDANCE,
    MAX_PROMPT_CHARS,
    MAX_RAMP_SECONDS,
    MAX_STYLES,
    MAX_TEMPERATURE,
    JamSettings,
    SamplingParams,
)
from streaming.wire import MAX_EXACT_INTEGER, WireError, bounded_number, load_object

PROTOCOL_FRAME_RATE = 25.0
MAX_MELODY_MESSAGE_BYTES = 1000 * 1024  # a melody message carries an audio file; others stay under 64 KiB
MAX_DECODE_FRAMES = 50
PACES = ("realtime", "asap")
DEFAULTS = {"styles": "warmup", "temperature": 1.1, "topk": 40, "guidance_weight": 3.0, "pace": "asap",
            "max_decode_frames": MAX_DECODE_FRAMES, "style_ramp_seconds": 0.0}
PARAMS = ("styles", "style_weights", "temperature", "topk", "guidance_weight", "pace", "max_decode_frames", "seed",
          "style_ramp_seconds")
MAX_SEED = 2**32 - 1
SettingsCheck = tp.Callable[[JamSettings], None]  # the engine's own check (e.g. prompt length in tokens)


class State(enum.Enum):
    """A connection's protocol state: IDLE -> STARTED (start, or an attach) -> STOPPED (stop); back to IDLE when the
    session ends on the server's side without a stop (generation failed for good)."""

    IDLE = "idle"
    STARTED = "started"
    STOPPED = "stopped"


class ProtocolError(ValueError):
    """A client message that cannot be acted on; its text is sent back in an error event."""


@dataclass(frozen=True)
class Start:
    settings: JamSettings
    pace: str
    binary_audio: bool
    seed: tp.Optional[int] = None  # None: the server picks one and reports it


@dataclass(frozen=True)
class Update:
    settings: JamSettings
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
    """Play a session held since its connection dropped (streaming.sessions), from chunk `from_chunk` (None: the
    first one the old connection did not finish sending)."""

    session_id: str
    from_chunk: tp.Optional[int]
    binary_audio: bool


@dataclass(frozen=True)
class RecordingRequest:
    pass


Command = tp.Union[Start, Update, Stop, Ping, Melody, Attach, RecordingRequest]


def _number(params: dict, name: str, kind: type, low: float, high: float) -> float:
    try:
        return bounded_number(params[name], name, low, high, integer=kind is int)
    except WireError as exc:
        raise ProtocolError(str(exc)) from None


def _styles(params: dict) -> tuple[tuple[str, ...], tuple[float, ...]]:
    raw = params["styles"]
    if not isinstance(raw, str):
        raise ProtocolError("styles must be a string such as \"jazz, hiphop\"")
    styles = tuple(s.strip() for s in raw.split(",") if s.strip())
    if not styles:
        raise ProtocolError("styles is empty: name at least one style")
    if len(styles) > MAX_STYLES:
        raise ProtocolError(f"{len(styles)} styles given; at most {MAX_STYLES} can be blended")
    if any(len(style) > MAX_PROMPT_CHARS for style in styles):
        raise ProtocolError(f"a style is longer than {MAX_PROMPT_CHARS} characters")
    raw_weights = params.get("style_weights")
    if raw_weights in (None, ""):
        return styles, tuple(1.0 for _ in styles)
    if not isinstance(raw_weights, str):
        raise ProtocolError("style_weights must be a string such as \"1.0,0.8\"")
    try:
        weights = tuple(float(w) for w in raw_weights.split(","))
    except ValueError:
        raise ProtocolError(f"style_weights must be comma-separated numbers, got {raw_weights!r}") from None
    if len(weights) != len(styles):
        raise ProtocolError(f"style_weights has {len(weights)} values for {len(styles)} styles")
    if any(w < 0 or not math.isfinite(w) for w in weights):
        raise ProtocolError("style_weights must be finite and >= 0")
    if sum(weights) <= 0:
        raise ProtocolError("style_weights are all zero: at least one style needs weight")
    return styles, weights


def settings_from(params: dict) -> tuple[JamSettings, str]:
    """Validated session settings and pace from a full parameter dict (defaults filled in)."""
    styles, weights = _styles(params)
    temperature = _number(params, "temperature", float, 0.0, MAX_TEMPERATURE)  # 0 decodes greedily
    topk = _number(params, "topk", int, 1, 2048)
    guidance = _number(params, "guidance_weight", float, 0.0, MAX_GUIDANCE)
    frames = _number(params, "max_decode_frames", int, 1, MAX_DECODE_FRAMES)
    ramp = _number({"style_ramp_seconds": 0.0, **params}, "style_ramp_seconds", float, 0.0, MAX_RAMP_SECONDS)
    if params["pace"] not in PACES:
        raise ProtocolError(f"pace must be one of {', '.join(PACES)}, got {params['pace']!r}")
    sampling = SamplingParams(temperature=temperature, top_k=topk, guidance=guidance)
    return JamSettings(styles=styles, weights=weights, params=sampling,
                       chunk_seconds=frames / PROTOCOL_FRAME_RATE, ramp_seconds=ramp), params["pace"]


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

    def _validated(self, params: dict) -> tuple[JamSettings, str]:
        settings, pace = settings_from(params)
        try:
            self.check_settings(settings)
        except ValueError as exc:
            raise ProtocolError(str(exc)) from None
        return settings, pace

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
        encoded = message.get("audio_base64")
        if encoded is None:
            return Melody(None)
        if not isinstance(encoded, str):
            raise ProtocolError("audio_base64 must be a base64 string of an audio file, or null to drop the melody")
        try:
            return Melody(base64.b64decode(encoded, validate=True))
        except ValueError:
            raise ProtocolError("audio_base64 is not valid base64") from None

    def _start(self, message: dict) -> Start:
        if self.state is not State.IDLE:
            raise ProtocolError("start was already received on this connection; send update to change parameters")
        mode = message.get("mode", "rt")
        if mode != "rt":
            raise ProtocolError(f"mode {mode!r} is not supported: only \"rt\"")
        binary = message.get("binary_audio", False)
        if not isinstance(binary, bool):
            raise ProtocolError("binary_audio must be true or false")
        if "session_id" in message:  # attach to a held session: its parameters stay those in force
            from_chunk = message.get("from_chunk")
            if from_chunk is not None:
                from_chunk = int(_number(message, "from_chunk", int, 0, MAX_EXACT_INTEGER))
            return Attach(session_id=message["session_id"], from_chunk=from_chunk, binary_audio=binary)
        params = message.get("params", {})
        if not isinstance(params, dict):
            raise ProtocolError("params must be a JSON object")
        unknown = sorted(set(params) - set(PARAMS))
        if unknown:
            raise ProtocolError(f"unknown parameter(s): {', '.join(unknown)}")
        merged = {**DEFAULTS, **params}
        settings, pace = self._validated(merged)
        seed = None if params.get("seed") in (None, -1) else int(_number(params, "seed", int, 0, MAX_SEED))
        self.params = {k: v for k, v in merged.items() if k != "seed"}
        self.state = State.STARTED
        return Start(settings=settings, pace=pace, binary_audio=binary, seed=seed)

    def _update(self, message: dict) -> Update:
        if self.state is not State.STARTED:
            raise ProtocolError("update before start: send start first")
        changes = {k: v for k, v in message.items() if k != "type"}
        if isinstance(message.get("params"), dict):  # accept the start message's nesting too
            changes = {**{k: v for k, v in changes.items() if k != "params"}, **message["params"]}
        unknown = sorted(set(changes) - set(PARAMS))
        if unknown:
            raise ProtocolError(f"unknown parameter(s): {', '.join(unknown)}")
        if not changes:
            raise ProtocolError("update names no parameter to change")
        if "seed" in changes:
            raise ProtocolError("seed can only be set when the session starts: it fixes the whole session")
        if "styles" in changes and "style_weights" not in changes:
            changes["style_weights"] = None  # new styles without weights: equal weights
        merged = {**self.params, **changes}
        settings, pace = self._validated(merged)  # raises before anything changes
        self.params = merged
        return Update(settings=settings, pace=pace, changed=tuple(sorted(changes)))

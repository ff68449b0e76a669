"""Bar mode's wire formats (magenta-retry's `/ws/jam` `mode: "bar"` and its HTTP API), pure: messages and forms
in, commands and parameters out (the server's events and answers: streaming.bar.events). No sockets, no model.

Field names, defaults and answers are magenta-retry's `app.py` (github betweentwomidnights/magenta-rt): the
WebSocket's `start` params (`headroom_db`, `target_sr`) and the HTTP forms (`loudness_headroom_db`,
`target_sample_rate`) name the same things differently there, and so they do here. Messages that carry audio
(`loop_audio_b64`, `combined_audio_b64`) may be up to MAX_AUDIO_MESSAGE_BYTES; every other one keeps the
ordinary 64 KiB limit.
"""

import base64
import enum
import typing as tp
from dataclasses import dataclass, replace

from engine.api import params as rules
from streaming import formats as audio
from streaming.bar.source import BarParams
from streaming.jam.protocol import ProtocolError
from streaming.wire import WireError, load_object

MAX_AUDIO_MESSAGE_BYTES = 20 * 2**20  # a 30 s 48 kHz stereo 16-bit loop is ~7.7 MB in base64; float WAV twice that
MAX_CHUNK_SECONDS = 120.0  # bars_per_chunk bars at the bpm: one chunk is held (and sent) whole
AUDIO_TYPES = ("start", "reseed", "reseed_splice")
BARS = rules.integer(1, 64)
# name -> its type and bounds (engine.params), for the WebSocket's params, the HTTP forms (by the WebSocket's
# names) and the fields of single messages alike
NUMBERS: dict[str, tp.Any] = {
    "bpm": rules.number(20, 400), "beats_per_bar": rules.integer(1, 16), "bars_per_chunk": BARS, "bars": BARS,
    "target_sr": rules.integer(8000, 192000), "headroom_db": rules.number(0, 60),
    "loop_weight": rules.number(0, 1000), "guidance_weight": rules.Guidance, "temperature": rules.Temperature,
    "topk": rules.integer(1, rules.MAX_TOP_K), "anchor_bars": rules.number(0, 64),
    "intro_bars_to_drop": rules.integer(0, 64), "chunk_index": rules.integer(-1, rules.MAX_EXACT_INTEGER),
    "seed": rules.Seed}
STEERING = ("styles", "style_weights", "loop_weight", "guidance_weight", "temperature", "topk")
WS_DEFAULTS = {"bpm": 120.0, "beats_per_bar": 4, "bars_per_chunk": 8, "target_sr": None, "loudness_mode": "none",
               "headroom_db": 1.0, "loop_weight": 1.0, "styles": "", "style_weights": "", "guidance_weight": 1.1,
               "temperature": 1.1, "topk": 40}
# the HTTP forms: their names for the WebSocket's fields, and app.py's defaults
FORM_NAMES = {"loudness_headroom_db": "headroom_db", "target_sample_rate": "target_sr"}
JAM_START_DEFAULTS = {**WS_DEFAULTS, "bars_per_chunk": 4, "loudness_mode": "auto"}
GENERATE_DEFAULTS = {**WS_DEFAULTS, "bars": 8, "styles": "acid house", "loudness_mode": "auto",
                     "guidance_weight": 5.0, "intro_bars_to_drop": 0}


def number(raw: dict, name: str) -> tp.Union[int, float]:
    return checked(NUMBERS[name], raw[name], name)


def checked(kind: tp.Any, value: tp.Any, name: str) -> tp.Any:
    try:
        return rules.checked(kind, value, name)
    except ValueError as exc:
        raise ProtocolError(str(exc)) from None


def styles_of(raw: dict) -> tuple[tuple[str, ...], tuple[float, ...]]:
    """Comma-separated styles and weights; empty is allowed (the loop alone); a missing weight is 1.0."""
    text, weights_text = raw.get("styles") or "", raw.get("style_weights") or ""
    if not isinstance(text, str) or not isinstance(weights_text, str):
        raise ProtocolError("styles and style_weights must be strings such as \"acid house, techno\" and \"1,0.5\"")
    styles = tuple(s.strip() for s in text.split(",") if s.strip())
    if styles:
        checked(rules.Styles, styles, "styles")
    try:
        given = [float(w) for w in weights_text.split(",") if w.strip()]
    except ValueError:
        raise ProtocolError(f"style_weights must be comma-separated numbers, got {weights_text!r:.60}") from None
    checked(rules.StyleWeights, given, "style_weights")
    if len(given) > len(styles):
        raise ProtocolError(f"style_weights has {len(given)} values for {len(styles)} styles")
    return styles, tuple(given + [1.0] * (len(styles) - len(given)))


def bar_params(raw: dict, loop_rate: int, bars_key: str = "bars_per_chunk") -> BarParams:
    """Validated parameters from a full dict (defaults filled in); `target_sr` None means the loop's rate."""
    styles, weights = styles_of(raw)
    mode = raw["loudness_mode"]
    if mode not in audio.LOUDNESS_MODES:
        raise ProtocolError(f"loudness_mode must be one of {', '.join(audio.LOUDNESS_MODES)}, got {mode!r:.40}")
    values = {name: number(raw, name) for name in ("bpm", "beats_per_bar", bars_key, "headroom_db", "loop_weight",
                                                   "guidance_weight", "temperature", "topk")}
    target_sr = loop_rate if raw.get("target_sr") is None else number(raw, "target_sr")
    params = BarParams(bpm=values["bpm"], beats_per_bar=values["beats_per_bar"], bars_per_chunk=values[bars_key],
                       target_sr=target_sr, loudness_mode=mode, headroom_db=values["headroom_db"], styles=styles,
                       style_weights=weights, loop_weight=values["loop_weight"],
                       guidance_weight=values["guidance_weight"], temperature=values["temperature"],
                       topk=values["topk"])
    seconds = params.bars_per_chunk * params.clock.seconds_per_bar
    if seconds > MAX_CHUNK_SECONDS:
        raise ProtocolError(f"{bars_key}: {params.bars_per_chunk} bars at {params.bpm:g} bpm are {seconds:.0f} s; "
                            f"at most {MAX_CHUNK_SECONDS:.0f} s of bars can be made at once")
    return params


def updated(params: BarParams, changes: dict) -> BarParams:
    """`params` with an update's steering fields (others are refused); validated before anything changes."""
    unknown = sorted(set(changes) - set(STEERING))
    if unknown:
        raise ProtocolError(f"update cannot change {', '.join(unknown)}: only {', '.join(STEERING)}")
    if not changes:
        raise ProtocolError("update names no parameter to change")
    current = {"styles": ", ".join(params.styles), "style_weights": ",".join(f"{w:g}" for w in params.style_weights),
               "loop_weight": params.loop_weight, "guidance_weight": params.guidance_weight,
               "temperature": params.temperature, "topk": params.topk}
    if "styles" in changes and "style_weights" not in changes:
        changes = {**changes, "style_weights": ""}  # new styles without weights: equal weights
    merged = {**current, **changes}
    styles, weights = styles_of(merged)
    return replace(params, styles=styles, style_weights=weights,
                   **{name: number(merged, name) for name in ("loop_weight", "guidance_weight", "temperature",
                                                              "topk")})


def audio_bytes(raw: dict, name: str, required: bool) -> tp.Optional[bytes]:
    encoded = raw.get(name)
    if encoded in (None, ""):
        if required:
            raise ProtocolError(f"{name} required")
        return None
    if not isinstance(encoded, str):
        raise ProtocolError(f"{name} must be a base64 string of an audio file")
    try:
        return base64.b64decode(encoded, validate=True)
    except ValueError:
        raise ProtocolError(f"{name} is not valid base64") from None


# -- the WebSocket's commands ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Start:
    raw_params: dict  # validated by bar_params once the loop's rate is known
    loop: tp.Optional[bytes]
    session_id: tp.Optional[str]  # attach to this running session
    binary_audio: bool
    seed: tp.Optional[int]


@dataclass(frozen=True)
class Consume:
    session_id: tp.Optional[str]
    chunk_index: int


@dataclass(frozen=True)
class Reseed:
    session_id: tp.Optional[str]
    loop: bytes


@dataclass(frozen=True)
class ReseedSplice:
    session_id: tp.Optional[str]
    anchor_bars: float
    combined: tp.Optional[bytes]


@dataclass(frozen=True)
class Update:
    changes: dict


@dataclass(frozen=True)
class Stop:
    pass


@dataclass(frozen=True)
class Ping:
    pass


Command = tp.Union[Start, Consume, Reseed, ReseedSplice, Update, Stop, Ping]


class State(enum.Enum):
    """A bar-mode socket's state, its transitions all in `SocketProtocol`: IDLE -> STARTED (a session started or
    attached) -> STOPPED (stop); back to IDLE when the session ends on the server's side (a start refused, a
    generation that failed for good), so that a new start may come."""

    IDLE = "idle"
    STARTED = "started"
    STOPPED = "stopped"


class SocketProtocol:
    """Which commands a bar-mode socket may act on now, and the one session it plays (`session_id`)."""

    def __init__(self) -> None:
        self.state = State.IDLE
        self.session_id: tp.Optional[str] = None

    def receive(self, command: Command) -> Command:
        """The command, if it may be acted on now; ProtocolError (magenta-retry's words) if not."""
        if isinstance(command, Ping):
            return command
        if isinstance(command, Start):
            if self.state is not State.IDLE:
                raise ProtocolError("start was already received on this connection; send update to change "
                                    "parameters")
            return command
        if self.state is not State.STARTED:
            raise ProtocolError("No session_id yet: send start first")
        if getattr(command, "session_id", None) not in (None, self.session_id):
            raise ProtocolError(f"Session not found: this socket plays session {self.session_id}")
        if isinstance(command, Stop):
            self.state = State.STOPPED
        return command

    def started(self, session_id: str) -> None:
        self.state, self.session_id = State.STARTED, session_id

    def session_ended(self) -> None:
        """The session ended on the server's side: a new start may come."""
        self.state, self.session_id = State.IDLE, None


def is_bar_start(message: dict) -> bool:
    return message.get("type") == "start" and message.get("mode") == "bar"


def load(text: str) -> dict:
    """One client message: up to MAX_AUDIO_MESSAGE_BYTES for the types that carry audio, 64 KiB for others."""
    try:
        message = load_object(text, max_bytes=MAX_AUDIO_MESSAGE_BYTES)
        if message.get("type") not in AUDIO_TYPES:
            load_object(text)
    except WireError as exc:
        raise ProtocolError(str(exc)) from None
    return message


def _session_id(message: dict) -> tp.Optional[str]:
    sid = message.get("session_id")
    if sid is not None and (not isinstance(sid, str) or not sid or len(sid) > 128):
        raise ProtocolError("session_id must be the string `started` gave")
    return sid


def command(message: dict) -> Command:
    """A parsed message (from `load`) as a command; ProtocolError names what is wrong."""
    kind = message.get("type")
    if kind == "ping":
        return Ping()
    if kind == "stop":
        return Stop()
    if kind == "start":
        return _start(message)
    if kind == "update":
        changes = {k: v for k, v in message.items() if k not in ("type", "session_id", "params")}
        if isinstance(message.get("params"), dict):
            changes.update(message["params"])
        return Update(changes)
    if kind == "consume":
        return Consume(_session_id(message), int(number({"chunk_index": message.get("chunk_index", -1)},
                                                        "chunk_index")))
    if kind == "reseed":
        return Reseed(_session_id(message), audio_bytes(message, "loop_audio_b64", required=True))
    if kind == "reseed_splice":
        anchor = number({"anchor_bars": message.get("anchor_bars", 2.0)}, "anchor_bars")
        return ReseedSplice(_session_id(message), float(anchor), audio_bytes(message, "combined_audio_b64", False))
    raise ProtocolError(f"Unknown type {kind!r}: bar mode takes start, update, consume, reseed, reseed_splice, "
                        "stop and ping")


def _start(message: dict) -> Start:
    binary = message.get("binary_audio", False)
    if not isinstance(binary, bool):
        raise ProtocolError("binary_audio must be true or false")
    params = message.get("params") or {}
    if not isinstance(params, dict):
        raise ProtocolError("params must be a JSON object")
    unknown = sorted(set(params) - set(WS_DEFAULTS) - {"seed"})
    if unknown:
        raise ProtocolError(f"unknown parameter(s): {', '.join(unknown)}")
    sid = _session_id(message)
    loop = audio_bytes(message, "loop_audio_b64", required=False)
    if sid is None and loop is None:
        raise ProtocolError("loop_audio_b64 required for mode=bar when no session_id")
    seed = params.get("seed")
    seed = None if seed in (None, -1) else int(number(params, "seed"))
    raw = {**WS_DEFAULTS, **{k: v for k, v in params.items() if k != "seed"}}
    return Start(raw_params=raw, loop=loop, session_id=sid, binary_audio=binary, seed=seed)


# -- HTTP forms ------------------------------------------------------------------------------------------------
def form_values(form: tp.Mapping[str, tp.Any], defaults: dict) -> dict:
    """A multipart form's text fields as the WebSocket's typed values (numbers parsed, HTTP names mapped),
    defaults filled in; files and unknown fields are left out (FastAPI ignores extra fields too)."""
    values = dict(defaults)
    for key, value in form.items():
        name = FORM_NAMES.get(key, key)
        if name not in defaults or not isinstance(value, str):
            continue
        if name in NUMBERS and not (value == "" and defaults[name] is None):
            kind = tp.get_args(NUMBERS[name])[0]  # int or float: a form's text becomes the JSON value it names
            try:
                values[name] = kind(float(value)) if kind is int and float(value).is_integer() else kind(value)
            except ValueError:
                raise ProtocolError(f"{key} must be {'an integer' if kind is int else 'a number'}, "
                                    f"got {value!r:.40}") from None
        elif name not in NUMBERS:
            values[name] = value
    return values

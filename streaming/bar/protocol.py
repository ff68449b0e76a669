"""Bar mode's wire formats (magenta-retry's `/ws/jam` `mode: "bar"` and its HTTP API), pure: messages and forms
in, commands and parameters out (the server's events and answers: streaming.bar.events). No sockets, no model.

Field names, defaults and answers are magenta-retry's `app.py` (github betweentwomidnights/magenta-rt): the
WebSocket's `start` params (`headroom_db`, `target_sr`) and the HTTP forms (`loudness_headroom_db`,
`target_sample_rate`) name the same things differently there, and so they do here. Messages that carry audio
(`loop_audio_b64`, `combined_audio_b64`) may be up to MAX_AUDIO_MESSAGE_BYTES; every other one keeps the
ordinary 64 KiB limit. Messages and forms are read by pydantic models of engine.params' types.
"""

import enum
import typing as tp
from dataclasses import dataclass, replace

from pydantic import AliasChoices, AliasGenerator, BaseModel, BeforeValidator, ConfigDict, model_validator
from pydantic.fields import FieldInfo

from engine.api import params as rules
from streaming import formats as audio
from streaming.bar.source import BarParams
from streaming.jam.protocol import ProtocolError
from streaming.wire import Base64Audio, WireError, load_object

MAX_AUDIO_MESSAGE_BYTES = 20 * 2**20  # a 30 s 48 kHz stereo 16-bit loop is ~7.7 MB in base64; float WAV twice that
MAX_CHUNK_SECONDS = 120.0  # bars_per_chunk bars at the bpm: one chunk is held (and sent) whole
AUDIO_TYPES = ("start", "reseed", "reseed_splice")
FORM_NAMES = {"headroom_db": "loudness_headroom_db", "target_sr": "target_sample_rate"}  # a form may use either
ModelT = tp.TypeVar("ModelT", bound=BaseModel)


# -- the fields: engine.params' types with magenta-retry's bounds ---------------------------------------------------
def _text(value: tp.Any) -> tp.Any:
    """Styles and weights are comma-separated text ("acid house, techno", "1,0.5"); null or "" is none."""
    if not isinstance(value or "", str):
        raise ValueError('styles and style_weights must be strings such as "acid house, techno" and "1,0.5"')
    return value or ""


def _session_id(value: tp.Any) -> tp.Any:
    if not isinstance(value, str) or not value or len(value) > 128:
        raise ValueError("session_id must be the string `started` gave")
    return value


def _object(value: tp.Any) -> tp.Any:
    """A start's params: an object; an empty value (null) is none."""
    if not isinstance(value or {}, dict):
        raise ValueError("params must be a JSON object")
    return value or {}


CommaText = tp.Annotated[str, BeforeValidator(_text)]
SessionId = tp.Optional[tp.Annotated[str, BeforeValidator(_session_id)]]
Bars = rules.integer(1, 64)
LoudnessMode = tp.Literal[audio.LOUDNESS_MODES]


class BarModel(BaseModel):
    """What bar mode's models share: strict values (engine.params); unknown names ignored, as they always were."""

    model_config = ConfigDict(**rules.STRICT, frozen=True)


class Steering(BarModel, extra="forbid"):
    """What an `update` may change, with the start's defaults; any other name is refused."""

    styles: CommaText = ""  # none: the loop alone
    style_weights: CommaText = ""  # a style without one has 1.0
    loop_weight: rules.number(0, 1000) = 1.0
    guidance_weight: rules.Guidance = 1.1
    temperature: rules.Temperature = 1.1
    topk: rules.integer(1, rules.MAX_TOP_K) = 40

    @model_validator(mode="after")
    def _styles_are_valid(self) -> "Steering":
        self.styles_and_weights()
        return self

    def styles_and_weights(self) -> tuple[tuple[str, ...], tuple[float, ...]]:
        """The styles and one weight each, by the engine's rules (engine.params.Styles, StyleWeights)."""
        styles = tuple(s.strip() for s in self.styles.split(",") if s.strip())
        if styles:
            rules.checked(rules.Styles, styles, "styles")
        try:
            given = [float(w) for w in self.style_weights.split(",") if w.strip()]
        except ValueError:
            raise rules.ParamError(f"style_weights must be comma-separated numbers, got "
                                   f"{self.style_weights!r:.60}") from None
        rules.checked(rules.StyleWeights, given, "style_weights")
        if len(given) > len(styles):
            raise rules.ParamError(f"style_weights has {len(given)} values for {len(styles)} styles")
        return styles, tuple(given + [1.0] * (len(styles) - len(given)))


class SessionFields(Steering):
    """A bar session's parameters but how many bars it makes at once, by the WebSocket start's names."""

    loudness_mode: LoudnessMode = "none"
    bpm: rules.number(20, 400) = 120.0
    beats_per_bar: rules.integer(1, 16) = 4
    headroom_db: rules.number(0, 60) = 1.0
    target_sr: tp.Optional[rules.integer(8000, 192000)] = None  # None: the loop's rate


class BarFields(SessionFields):
    """A bar session's parameters, with the WebSocket start's defaults."""

    bars_per_chunk: Bars = 8


class StartParams(BarFields):
    """The WebSocket start's `params`: a session's and its seed (null or -1: the server picks one)."""

    seed: tp.Optional[rules.Seed] = None


class GenerateFields(SessionFields):
    """/generate's parameters: `bars` (a session's bars_per_chunk), after `intro_bars_to_drop` made and dropped."""

    bars: Bars = 8
    intro_bars_to_drop: rules.integer(0, 64) = 0


# the forms': unknown names ignored (FastAPI ignores them), the forms' names taken as well as the socket's
FORM = ConfigDict(extra="ignore", alias_generator=AliasGenerator(
    validation_alias=lambda name: AliasChoices(FORM_NAMES[name], name) if name in FORM_NAMES else name))


class JamStartForm(BarFields, **FORM):
    """/jam/start's form, with app.py's defaults."""

    loudness_mode: LoudnessMode = "auto"
    bars_per_chunk: Bars = 4


class GenerateForm(GenerateFields, **FORM):
    """/generate's form, with app.py's defaults."""

    styles: CommaText = "acid house"
    loudness_mode: LoudnessMode = "auto"
    guidance_weight: rules.Guidance = 5.0


class SpliceFields(BarModel):
    anchor_bars: rules.number(0, 64) = 2.0


# -- the WebSocket's messages ------------------------------------------------------------------------------------
class Addressed(BarModel):
    session_id: SessionId = None  # the session `started` named; none: this socket's


class StartMessage(Addressed):
    binary_audio: bool = False
    params: tp.Annotated[dict, BeforeValidator(_object)] = {}  # StartParams, named without a prefix
    loop_audio_b64: Base64Audio = None  # required to open a session (no session_id)


class ConsumeMessage(Addressed):  # /jam/consume's form too
    chunk_index: rules.integer(-1, rules.MAX_EXACT_INTEGER) = -1  # -1: every chunk made so far


class ReseedMessage(Addressed):
    loop_audio_b64: Base64Audio = None  # required


class SpliceMessage(Addressed, SpliceFields):
    combined_audio_b64: Base64Audio = None  # none: the session's own recent output


# -- reading them ------------------------------------------------------------------------------------------------
def parse(model: type[ModelT], raw: tp.Any, unknown: str = "") -> ModelT:
    """`raw` as `model`; ProtocolError names the field, or the names it refuses in `unknown`'s words (`{names}`)."""
    try:
        return rules.validate(model, raw)
    except rules.ParamError as exc:
        if exc.unknown and unknown:
            raise ProtocolError(unknown.format(names=", ".join(sorted(exc.unknown)))) from None
        raise ProtocolError(str(exc)) from None


def _from_text(text: str, field: FieldInfo) -> tp.Any:
    """A form's text as the JSON value its field takes: "120.000" a number, "4" or "4.0" an integer, "" none
    where the field's default is none; text that is no such number is left for the field's rule to refuse."""
    kinds = tp.get_args(field.annotation) or (field.annotation,)  # Optional[Annotated[int, ...]]: its args
    kind = next((k for k in (tp.get_args(a)[0] if tp.get_origin(a) is tp.Annotated else a for a in kinds)
                 if k in (int, float)), None)
    if kind is None:
        return text
    if text == "" and field.default is None:
        return None
    try:
        number = float(text)
    except ValueError:
        return text
    return number if kind is float else int(number) if number.is_integer() else text


def form_values(model: type[BaseModel], form: tp.Mapping[str, tp.Any]) -> dict:
    """A multipart form's text fields as the JSON values `model` reads (magenta-retry's clients send every field as
    text: JUCE's "120.000", curl's "4"); files and names the model lacks are left out, as FastAPI leaves them."""
    values = {}
    for key, text in form.items():
        field = next((f for name, f in model.model_fields.items() if key in (name, FORM_NAMES.get(name))), None)
        if field is not None and isinstance(text, str):
            values[key] = _from_text(text, field)
    return values


def read_form(model: type[ModelT], form: tp.Mapping[str, tp.Any]) -> ModelT:
    """A multipart form as `model` (a form's model names the fields as the client did: `loudness_headroom_db`)."""
    return parse(model, form_values(model, form))


def bar_params(raw: dict, loop_rate: int, bars_key: str = "bars_per_chunk") -> BarParams:
    """A session's parameters from JSON values (a start's params, a form's values; /generate's with
    `bars_key="bars"`); `target_sr` None means the loop's rate."""
    fields = parse(GenerateFields if bars_key == "bars" else BarFields, raw)
    styles, weights = fields.styles_and_weights()
    params = BarParams(bpm=fields.bpm, beats_per_bar=fields.beats_per_bar, bars_per_chunk=getattr(fields, bars_key),
                       target_sr=fields.target_sr or loop_rate, loudness_mode=fields.loudness_mode,
                       headroom_db=fields.headroom_db, styles=styles, style_weights=weights, topk=fields.topk,
                       loop_weight=fields.loop_weight, guidance_weight=fields.guidance_weight,
                       temperature=fields.temperature)
    seconds = params.bars_per_chunk * params.clock.seconds_per_bar
    if seconds > MAX_CHUNK_SECONDS:
        raise ProtocolError(f"{bars_key}: {params.bars_per_chunk} bars at {params.bpm:g} bpm are {seconds:.0f} s; "
                            f"at most {MAX_CHUNK_SECONDS:.0f} s of bars can be made at once")
    return params


def updated(params: BarParams, changes: dict) -> BarParams:
    """`params` with an update's steering fields (others are refused); validated before anything changes."""
    if not changes:
        raise ProtocolError("update names no parameter to change")
    if "styles" in changes and "style_weights" not in changes:
        changes = {**changes, "style_weights": ""}  # new styles without weights: equal weights
    current = {name: getattr(params, name) for name in Steering.model_fields}
    current.update(styles=", ".join(params.styles), style_weights=",".join(map(repr, params.style_weights)))
    steering = parse(Steering, {**current, **changes},
                     unknown=f"update cannot change {{names}}: only {', '.join(Steering.model_fields)}")
    styles, weights = steering.styles_and_weights()
    return replace(params, **steering.model_dump(exclude={"styles", "style_weights"}), styles=styles,
                   style_weights=weights)


# -- the WebSocket's commands ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Start:
    raw_params: dict  # StartParams' values, made a session's by bar_params once the loop's rate is known
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


def command(message: dict) -> Command:
    """A parsed message (from `load`) as a command; ProtocolError names what is wrong."""
    kind = message.get("type")
    if kind == "ping":
        return Ping()
    if kind == "stop":
        return Stop()
    if kind == "start":
        start = parse(StartMessage, message)
        if start.session_id is None and start.loop_audio_b64 is None:
            raise ProtocolError("loop_audio_b64 required for mode=bar when no session_id")
        params = parse(StartParams, start.params, unknown="unknown parameter(s): {names}")
        return Start(raw_params=params.model_dump(exclude={"seed"}), loop=start.loop_audio_b64,
                     session_id=start.session_id, binary_audio=start.binary_audio,
                     seed=None if params.seed == -1 else params.seed)
    if kind == "update":
        changes = {k: v for k, v in message.items() if k not in ("type", "session_id", "params")}
        if isinstance(message.get("params"), dict):
            changes.update(message["params"])
        return Update(changes)
    if kind == "consume":
        consume = parse(ConsumeMessage, message)
        return Consume(consume.session_id, consume.chunk_index)
    if kind == "reseed":
        reseed = parse(ReseedMessage, message)
        if reseed.loop_audio_b64 is None:
            raise ProtocolError("loop_audio_b64 required")
        return Reseed(reseed.session_id, reseed.loop_audio_b64)
    if kind == "reseed_splice":
        splice = parse(SpliceMessage, message)
        return ReseedSplice(splice.session_id, splice.anchor_bars, splice.combined_audio_b64)
    raise ProtocolError(f"Unknown type {kind!r}: bar mode takes start, update, consume, reseed, reseed_splice, "
                        "stop and ping")

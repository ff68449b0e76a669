"""Lyria RealTime's BidiGenerateMusic wire protocol as a pure state machine: no sockets, no model.

`LyriaProtocol.receive_text` turns one client message into actions for the connection: what to send and what to
do with the session (start, steer, pause, resume, end). The playback state (PLAY before prompts waits for them,
PAUSE keeps the position, STOP and RESET_CONTEXT drop the context) lives here, and so does the packing of chunks
into 48 kHz stereo PCM messages. A malformed or out-of-order message raises `LyriaFatal` with the close code and a
reason naming the field, which the google-genai SDK surfaces as an APIError. Field names are accepted in camelCase
and snake_case, as protobuf JSON allows. Controls MusicGen cannot obey exactly become text cues added to every
prompt.

What the server must tell a client (a `warning`, a `filteredPrompt`) rides on the next audio message, beside its
`serverContent`, never alone. google-genai (`live_music.py` `AsyncMusicSession._receive`) parses every message as a
`LiveMusicServerMessage`, whose fields are setupComplete, serverContent and filteredPrompt only, dropping unknown
keys (`_common._remove_extra_fields`): a lone `{"warning": ...}` becomes an empty message, and Google's own example
(`message.server_content.audio_chunks[0].data` on every message) dies on it, as it does on a lone
`filteredPrompt`. Beside `serverContent` the SDK keeps `filteredPrompt` and drops `warning`, while a raw client
reads both keys of the one message.
"""

import base64
import collections
import enum
import json
import typing as tp
from dataclasses import dataclass, field

from pydantic.alias_generators import to_snake

from engine.api import Chunk, SessionSettings
from engine.api import params as rules
from streaming.formats import StreamingResampler, pcm16_bytes
from streaming.lyria.messages import (
    CLOSE_INVALID,
    ClientContent,
    GenerationConfig,
    LyriaFatal,
    Prompts,
    engine_seed,
    parse,
    parse_config,
)
from streaming.wire import WireError, load_object

__all__ = ["CLOSE_INVALID", "GenerationConfig", "LyriaFatal", "Prompts", "LyriaProtocol"]

PATH = "/ws/google.ai.generativelanguage.v1alpha.GenerativeService.BidiGenerateMusic"
OUTPUT_RATE = 48000
OUTPUT_CHANNELS = 2
MIME_TYPE = f"audio/l16;rate={OUTPUT_RATE};channels={OUTPUT_CHANNELS}"
CHUNK_SECONDS = 1.0  # a client that plays all it receives hears a change within the lead plus one chunk
CLOSE_TRY_AGAIN = 1013  # every session slot is taken

PLAYBACK = ("PLAY", "PAUSE", "STOP", "RESET_CONTEXT")
MAX_PENDING = 16  # notices (and filtered prompts) waiting for audio: the newest are kept, however many come


class State(enum.Enum):
    """A connection's playback state; whether a session exists is `SESSION_STATES`. Transitions, all here:
    SETUP -> STOPPED (setup); STOPPED -> WAITING (PLAY before prompts) or PLAYING (PLAY, or prompts while
    WAITING: a session starts); PLAYING <-> PAUSED (PAUSE, PLAY); PLAYING or PAUSED -> STOPPED (STOP, or a
    generation failure: the session ends); RESET_CONTEXT keeps the state (a fresh context on the same session)."""

    SETUP = "setup"  # nothing but setup may come
    STOPPED = "stopped"  # no session, no audio wanted
    WAITING = "waiting"  # PLAY came before prompts: a session starts when they arrive
    PLAYING = "playing"
    PAUSED = "paused"  # the session and its position are kept


SESSION_STATES = frozenset({State.PLAYING, State.PAUSED})


# -- actions for the connection ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Send:
    """Messages to send now (setupComplete: everything else rides on the audio)."""

    messages: tuple[str, ...]


@dataclass(frozen=True)
class StartSession:
    """Open a session with these settings (`seed`: the engine's, None: the server picks one) and play it."""

    settings: SessionSettings
    seed: tp.Optional[int]


@dataclass(frozen=True)
class UpdateSession:
    """The running session's settings changed (prompts or config): they apply from a coming chunk."""

    settings: SessionSettings


@dataclass(frozen=True)
class RestartSession:
    """Go on with a fresh context on the same session (and slot), from its latest settings, on `seed` (the
    engine's; None: the server picks one); `play` False keeps it paused."""

    seed: tp.Optional[int]
    play: bool


@dataclass(frozen=True)
class PauseSession:
    """Stop sending; keep the session and the chunk in the making, so that PLAY resumes where it paused."""


@dataclass(frozen=True)
class ResumeSession:
    pass


@dataclass(frozen=True)
class EndSession:
    """Drop the session and its context (STOP, a failure)."""


Action = tp.Union[Send, StartSession, UpdateSession, RestartSession, PauseSession, ResumeSession, EndSession]
SettingsCheck = tp.Callable[[SessionSettings], None]
# Lyria's own model names: with these, setup.model asks for the base model (models/NAME of an adapter picks it)
LYRIA_MODELS = ("lyria-realtime-exp", "lyria-realtime")


def _seed_words(seed: tp.Optional[int]) -> str:
    return "a seed the server picked" if seed is None else f"seed {seed}"


@dataclass
class LyriaProtocol:
    """One connection: setup first (once), then prompts, config and playback in any order.

    `check_settings` is the engine's validation of what only the model can judge (prompt length in tokens);
    `session_id` is the id this connection's sessions are recorded under, told in `setupComplete.sessionId` (a
    field Google's SDK ignores). `seed_in_force` is the seed (as the client sent it; None: one the server picked)
    of the stream playing: a seed sent later applies to the next fresh context (RESET_CONTEXT, or STOP then PLAY),
    and until then each chunk's sourceMetadata reports the one in force. `setup.model` (`models/NAME`) picks the
    LoRA adapter NAME of `served_models()` (engine.params.model_choice; Lyria's own names are the base model)."""

    check_settings: SettingsCheck = lambda settings: None
    served_models: tp.Callable[[], list[str]] = lambda: []
    model: tp.Optional[str] = None  # the adapter setup chose (None: the base model)
    session_id: str = ""
    prompts: tp.Optional[Prompts] = None
    config: GenerationConfig = field(default_factory=GenerationConfig)
    state: State = State.SETUP
    seed_in_force: tp.Optional[int] = None
    _warned: set = field(default_factory=set)
    _warnings: list = field(default_factory=list)  # told with the next audio message
    _filtered: collections.deque = field(default_factory=lambda: collections.deque(maxlen=MAX_PENDING))
    _resampler: tp.Optional[StreamingResampler] = None

    @property
    def playing(self) -> bool:
        """The client wants audio (PLAY until PAUSE or STOP)."""
        return self.state in (State.WAITING, State.PLAYING)

    @property
    def has_session(self) -> bool:
        return self.state in SESSION_STATES

    def receive_bytes(self, data: bytes) -> list[Action]:
        return self.receive_text(data.decode("utf-8", errors="replace"))

    def receive_text(self, text: str) -> list[Action]:
        try:
            message = load_object(text)
        except WireError as exc:
            raise LyriaFatal(str(exc)) from None
        if len(message) != 1:
            raise LyriaFatal("each message must be an object with exactly one of setup, clientContent, "
                             "musicGenerationConfig, playbackControl")
        (key, body), = message.items()
        kind = to_snake(key)
        if kind == "setup":
            return [self._setup(body)]
        if self.state is State.SETUP:
            raise LyriaFatal(f"{key} before setup: the first message must be setup")
        if kind == "client_content":
            return self._client_content(body)
        if kind == "music_generation_config":
            return self._music_generation_config(body)
        if kind == "playback_control":
            if body not in PLAYBACK:
                raise LyriaFatal(f"playbackControl {body!r} is not one of {', '.join(PLAYBACK)}")
            return self._playback(body)
        raise LyriaFatal(f"unknown message field {key}")

    def notify(self, text: str) -> None:
        """A `warning` for the client, sent with the next audio message (once, however often it is noted)."""
        if text not in self._warnings:
            self._warnings.append(text)
            del self._warnings[:-MAX_PENDING]

    def generation_failed(self, error: str, restarting: bool) -> None:
        """Generation failed: the session goes on with a fresh context on a seed the server picks (`restarting`),
        which the next audio message tells, or it ends (`session_ended`)."""
        if restarting:
            self.notify(f"generation failed: {error}; the music goes on with a fresh context on a seed the server "
                        "picked")
            self.seed_in_force = None
            self._resampler = None  # a fresh stream: no left context from the failed one

    def session_ended(self) -> None:
        """The session ended on the server's side (generation failed for good): playback stops."""
        self.state = State.STOPPED

    def chunk_message(self, chunk: Chunk) -> str:
        """A chunk as Lyria's serverContent: its new audio resampled (seamlessly across chunks, with the overlap
        as right context) to 48 kHz stereo 16-bit PCM, with what made it and what the client must be told."""
        if self._resampler is None:
            self._resampler = StreamingResampler(chunk.sample_rate, OUTPUT_RATE, OUTPUT_CHANNELS)
        new = int(round(chunk.seconds * chunk.sample_rate))
        pcm = self._resampler.process(chunk.audio[:, :new], chunk.audio[:, new:])
        prompts, config = chunk.settings.source  # what this chunk was generated with, not what is current now
        warning = "\n".join(self._warnings) or None
        self._warnings.clear()
        filtered = self._filtered.popleft() if self._filtered else None
        return audio_chunk_message(pcm16_bytes(pcm), prompts, config.with_seed(self.seed_in_force), warning,
                                   filtered)

    # -- state changes ------------------------------------------------------------------------------------------
    def _start(self) -> list[Action]:
        self.state = State.PLAYING
        self._resampler = None  # a new session is a new stream: no left context from the old one
        self.seed_in_force = self.config.seed
        return [StartSession(self.settings(), engine_seed(self.config.seed))]

    def _steer(self) -> list[Action]:
        if self.prompts is None:
            return []
        if self.has_session:
            return [UpdateSession(self.settings())]
        return self._start() if self.playing else []

    def _playback(self, control: str) -> list[Action]:
        if control == "PLAY":
            if self.has_session:
                self.state = State.PLAYING
                return [ResumeSession()]
            if self.prompts is None:
                self.state = State.WAITING
                self.notify("PLAY came before weightedPrompts: playback waited for them")
                return []
            return self._start()
        if control == "PAUSE":
            if self.has_session:
                self.state = State.PAUSED
                return [PauseSession()]
            self.state = State.STOPPED
            return []
        if control == "STOP":  # resets the context, keeps prompts and config
            ended = [EndSession()] if self.has_session else []
            self.state = State.STOPPED
            return ended
        # RESET_CONTEXT: resets without stopping, on the session's own slot, with the seed sent last
        if self.has_session:
            self._resampler = None  # a fresh stream: no left context from the old one
            self.seed_in_force = self.config.seed
            return [RestartSession(engine_seed(self.config.seed), play=self.playing)]
        return self._start() if self.playing and self.prompts is not None else []

    def _setup(self, body: tp.Any) -> Send:
        if self.state is not State.SETUP:
            raise LyriaFatal("setup was already received; it must be sent once, first")
        if not isinstance(body, dict) or not isinstance(body.get("model"), str) or not body["model"]:
            raise LyriaFatal("setup.model must name a model, e.g. models/lyria-realtime-exp")
        try:
            self.model = rules.model_choice(body["model"], base_names=LYRIA_MODELS)
        except ValueError as exc:
            raise LyriaFatal(f"setup.{exc}") from None
        if self.model is not None and self.model not in self.served_models():
            served = ", ".join(f"models/{name}" for name in (LYRIA_MODELS[0], *self.served_models()))
            raise LyriaFatal(f"setup.model {body['model'][:80]!r} is not served here; served: {served}")
        self.state = State.STOPPED
        return Send((json.dumps({"setupComplete": {"sessionId": self.session_id} if self.session_id else {}}),))

    def _client_content(self, body: tp.Any) -> list[Action]:
        content = parse(ClientContent, body, "clientContent")
        texts, weights, filtered = [], [], []
        for prompt in content.weighted_prompts:
            if not prompt.text.strip():
                filtered.append({"text": prompt.text, "filteredReason": "empty prompt: it was removed"})
                continue
            texts.append(prompt.text.strip())
            weights.append(prompt.weight)
        if texts and sum(weights) <= 0:
            raise LyriaFatal("clientContent.weightedPrompts: weights are all zero; give at least one weight > 0")
        if texts:  # as many as a session blends (engine.params.Styles)
            try:
                rules.checked(rules.Styles, tuple(texts), "clientContent.weightedPrompts")
            except ValueError as exc:
                raise LyriaFatal(str(exc)) from None
        if not texts:
            self._filtered.extend(filtered)
            self.notify("no usable prompt: the previous prompts stay in force" if self.prompts else
                        "no usable prompt: the music starts with the first usable one")
            return []
        total = sum(weights)
        prompts = Prompts(tuple(texts), tuple(w / total for w in weights))
        self._check(prompts, self.config)
        self._filtered.extend(filtered)
        self.prompts = prompts
        return self._steer()

    def _music_generation_config(self, body: tp.Any) -> list[Action]:
        previous, config = self.config, parse_config(body)
        self._check(self.prompts, config)
        self.config = config
        self._warn_approximations()
        if self.has_session and config.seed != previous.seed and config.seed != self.seed_in_force:
            self.notify(f"{_seed_words(config.seed)} applies to a fresh context: send RESET_CONTEXT (or STOP, then "
                        f"PLAY); until then the music goes on with {_seed_words(self.seed_in_force)}, as each "
                        "chunk's sourceMetadata says")
        return self._steer() if config.with_seed(None) != previous.with_seed(None) else []

    def _check(self, prompts: tp.Optional[Prompts], config: GenerationConfig) -> None:
        """The engine's verdict on prompts with their cues, before anything changes."""
        if prompts is None:
            return
        try:
            self.check_settings(_settings(prompts, config, self.model))
        except ValueError as exc:
            raise LyriaFatal(f"clientContent.weightedPrompts: {exc}") from None

    def _warn_approximations(self) -> None:
        fresh = [name for name in self.config.approximated() if name not in self._warned]
        if fresh:
            self._warned.update(self.config.approximated())
            self.notify(f"{', '.join(fresh)}: MusicGen cannot follow these exactly; they are added to the prompts "
                        "as text cues")

    def settings(self) -> SessionSettings:
        """What the next chunk is generated with: prompts plus cues, and the sampling config."""
        assert self.prompts is not None, "settings() before prompts"
        return _settings(self.prompts, self.config, self.model)


def _settings(prompts: Prompts, config: GenerationConfig, model: tp.Optional[str] = None) -> SessionSettings:
    cues = config.cues()
    texts = tuple(", ".join([t, *cues]) for t in prompts.texts)
    return SessionSettings(styles=texts, weights=prompts.weights, params=config.sampling(), chunk_seconds=CHUNK_SECONDS,
                           source=(prompts, config), model=model)


def audio_chunk_message(pcm: bytes, prompts: Prompts, config: GenerationConfig, warning: tp.Optional[str] = None,
                        filtered: tp.Optional[dict] = None) -> str:
    """serverContent with one audio chunk (base64 16-bit LE PCM at 48 kHz stereo) and what made it; beside it,
    the `filteredPrompt` and `warning` the client is told (see the module's docstring)."""
    message: dict = {"serverContent": {"audioChunks": [{
        "data": base64.b64encode(pcm).decode(), "mimeType": MIME_TYPE,
        "sourceMetadata": {"clientContent": prompts.to_json(), "musicGenerationConfig": config.to_json()}}]}}
    if filtered is not None:
        message["filteredPrompt"] = filtered
    if warning is not None:
        message["warning"] = warning
    return json.dumps(message)

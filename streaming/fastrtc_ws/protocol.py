"""FastRTC's WebSocket transport (`/websocket/offer`, and its phone mode at `/telephone/handler`) as pure
functions and one state object (no sockets): what each client frame means and what the server sends back.

The contract is FastRTC's server (`backend/fastrtc/websocket.py`, mounted by `stream.py`): client text frames
`{"event": "start", "websocket_id"}` (phone mode: `"streamSid"`, as Twilio sends it), `{"event": "media", "media":
{"payload": <base64 mu-law>}}`, `{"event": "ping"}` (answered `{"event": "pong"}`) and `{"event": "stop"}`; server
frames `{"event": "media", "media": {"payload"}}` (phone mode adds `"streamSid"`) and the `{"type", "data"}` messages
of the WebRTC data channel, which this transport shares with streaming.webrtc.protocol (`Controls` reads the
client's `{"type": "update" | "ping" | "stop"}` messages; `log`, `warning`, `error` are its replies). A full server
answers FastRTC's `{"status": "failed", "meta": {"error": "concurrency_limit_reached", "limit"}}` before closing.

What FastRTC leaves to its handler, this jam says in the start: `params` (the offer's jam parameters, or
`{"session_id", "from_chunk"?}` to resume a held session) and the rates (`output_sample_rate`, 48 kHz by default;
`input_sample_rate`, the rate of the client's media, 48 kHz by default as FastRTC's handlers; phone mode is 8 kHz
both ways, as FastRTC's). Every frame is read once (`FastRTCSocket.receive_text`): an `event` is FastRTC's, a `type`
a data-channel control; anything else, or a frame that breaks a rule, is a `ProtocolError` the shell answers with an
`error` message while the session plays on."""

import base64
import binascii
import enum
import typing as tp
from dataclasses import dataclass

import numpy as np

from engine.api import SessionSettings
from streaming.formats import mulaw_decode, mulaw_encode
from streaming.jam import events as je
from streaming.jam import protocol as jp
from streaming.webrtc import protocol as wp
from streaming.wire import WireError, load_object

PATH = "/websocket/offer"
PHONE_PATH = "/telephone/handler"
OUTPUT_SAMPLE_RATE = 48000  # mono mu-law out unless the start names another rate
INPUT_SAMPLE_RATE = 48000  # FastRTC's StreamHandler default input_sample_rate
PHONE_SAMPLE_RATE = 8000  # FastRTC's phone mode (Twilio media streams): 8 kHz mu-law both ways
SAMPLE_RATES = (8000, 16000, 22050, 24000, 32000, 44100, 48000)
MAX_MEDIA_SECONDS = 1.0  # one media frame at most (FastRTC's browser snippet sends 2048 samples: 43 ms at 48 kHz)
# twice a media frame of MAX_MEDIA_SECONDS at 48 kHz, base64 (4/3) inside its JSON: larger frames are refused
# unparsed; those between hear how long a media frame may be
MAX_FRAME_BYTES = int(2 * MAX_MEDIA_SECONDS * max(SAMPLE_RATES) * 4 / 3) + 1024
EVENTS = ("start", "media", "ping", "stop")
# what else a Twilio media stream sends (its "connected" first, then "mark" and "dtmf"): read and let be in phone
# mode, as FastRTC's handler lets every other event be
TWILIO_EVENTS = ("connected", "mark", "dtmf")
RESUME_PARAMS = ("session_id", "from_chunk")


class State(enum.Enum):
    """IDLE (no session: a start may come) -> STARTED (a session plays) -> IDLE again when the server ends it (a
    refused start, a failure given up); STOPPED once the client stopped (the socket closes)."""

    IDLE = "idle"
    STARTED = "started"
    STOPPED = "stopped"


@dataclass(frozen=True)
class Start:
    stream_id: str  # FastRTC's websocket_id (phone mode: streamSid)
    settings: tp.Optional[SessionSettings]  # None when resuming: the held session's own
    seed: tp.Optional[int]  # None: a random seed
    output_sample_rate: int
    input_sample_rate: int
    session_id: tp.Optional[str] = None  # a held session to play on this socket (streaming.sessions.registry)
    from_chunk: tp.Optional[int] = None  # resuming: the first chunk the client lacks (None: the next one made)


@dataclass(frozen=True)
class Media:
    """The client's audio: 16-bit samples at `sample_rate` (mono), decoded from its mu-law payload."""

    samples: np.ndarray
    sample_rate: int

    @property
    def seconds(self) -> float:
        return len(self.samples) / self.sample_rate

    def float32(self) -> np.ndarray:
        """The samples in [-1, 1), as FastRTC's audio_to_float32 scales them."""
        return self.samples.astype(np.float32) / 32768.0


@dataclass(frozen=True)
class Ping:
    """FastRTC's `{"event": "ping"}` (the data channel's `{"type": "ping"}` is streaming.jam.protocol's Ping)."""


@dataclass(frozen=True)
class Ignored:
    """A Twilio event in phone mode (TWILIO_EVENTS): nothing to do, nothing to answer."""

    event: str


Command = tp.Union[Start, Media, Ping, Ignored, jp.Stop, jp.Update, jp.Ping]


class FastRTCSocket:
    """One socket's protocol: its state, its jam parameters (`controls`, the WebRTC data channel's, so updates are
    merged and checked by the one rule set) and the rates it speaks at."""

    def __init__(self, phone: bool = False) -> None:
        self.phone = phone
        self.state = State.IDLE
        self.controls = wp.Controls()
        self.stream_id: tp.Optional[str] = None
        self.input_sample_rate = PHONE_SAMPLE_RATE if phone else INPUT_SAMPLE_RATE
        self.output_sample_rate = PHONE_SAMPLE_RATE if phone else OUTPUT_SAMPLE_RATE

    def receive_text(self, text: str) -> Command:
        """The command one text frame carries; ProtocolError (its text says what to send instead)."""
        try:
            message = load_object(text, max_bytes=MAX_FRAME_BYTES)
        except WireError as exc:
            raise jp.ProtocolError(str(exc)) from None
        if "event" not in message:
            if "type" not in message:
                raise jp.ProtocolError(f"a message needs \"event\" ({', '.join(EVENTS)}) or \"type\" (update, "
                                       "ping, stop)")
            if self.state is not State.STARTED and message.get("type") != "ping":
                raise jp.ProtocolError(f"{message.get('type')!r} before start: send {{\"event\": \"start\"}} first")
            command = self.controls.receive_message(message)
            if isinstance(command, jp.Stop):
                self.state = State.STOPPED
            return command
        event = message["event"]
        if event == "ping":
            return Ping()
        if event == "start":
            return self._start(message)
        if event == "media":
            return self._media(message)
        if event == "stop":
            self.state = State.STOPPED
            return jp.Stop()
        if self.phone and event in TWILIO_EVENTS:
            return Ignored(event)
        raise jp.ProtocolError(f"unknown event {event!r}: expected {', '.join(EVENTS)}")

    def _start(self, message: dict) -> Start:
        if self.state is State.STARTED:
            raise jp.ProtocolError("a session is already playing on this socket: stop it first")
        key = "streamSid" if self.phone else "websocket_id"
        stream_id = message.get(key)
        if not isinstance(stream_id, str) or not stream_id.strip() or len(stream_id) > wp.MAX_ID_LENGTH:
            raise jp.ProtocolError(f"start needs {key}: a non-empty string of at most {wp.MAX_ID_LENGTH} characters")
        output_rate = self._rate(message, "output_sample_rate", self.output_sample_rate)
        input_rate = self._rate(message, "input_sample_rate", self.input_sample_rate)
        params = message.get("params", {})
        if not isinstance(params, dict):
            raise jp.ProtocolError("params must be a JSON object")
        if "session_id" in params:
            unknown = sorted(set(params) - set(RESUME_PARAMS))
            from_chunk = params.get("from_chunk")
            if unknown or not isinstance(params["session_id"], str) or not (
                    from_chunk is None or (isinstance(from_chunk, int) and not isinstance(from_chunk, bool)
                                           and from_chunk >= 0)):
                raise jp.ProtocolError("a resuming start holds only params.session_id (a string) and optionally "
                                       "params.from_chunk (an integer >= 0): the session keeps its parameters")
            command = Start(stream_id, None, None, output_rate, input_rate, params["session_id"], from_chunk)
        else:
            controls = wp.Controls()
            settings, seed = controls.start(params)  # ProtocolError names the field; nothing changed then
            self.controls = controls
            command = Start(stream_id, settings, seed, output_rate, input_rate)
        self.stream_id, self.output_sample_rate, self.input_sample_rate = stream_id, output_rate, input_rate
        self.state = State.STARTED
        return command

    def _rate(self, message: dict, key: str, default: int) -> int:
        rate = message.get(key, default)
        if self.phone and rate != PHONE_SAMPLE_RATE:
            raise jp.ProtocolError(f"phone mode speaks {PHONE_SAMPLE_RATE} Hz mu-law both ways: {key} cannot change")
        if rate not in SAMPLE_RATES or isinstance(rate, bool):
            raise jp.ProtocolError(f"{key} must be one of {', '.join(map(str, SAMPLE_RATES))}, got {rate!r}")
        return rate

    def _media(self, message: dict) -> Media:
        if self.state is not State.STARTED:
            raise jp.ProtocolError("media before start (or after stop): send {\"event\": \"start\"} first")
        media = message.get("media")
        payload = media.get("payload") if isinstance(media, dict) else None
        if not isinstance(payload, str) or not payload:
            raise jp.ProtocolError("media needs media.payload: base64 of mu-law bytes")
        try:
            data = base64.b64decode(payload, validate=True)
        except (ValueError, binascii.Error):
            raise jp.ProtocolError("media.payload is not valid base64") from None
        limit = int(MAX_MEDIA_SECONDS * self.input_sample_rate)
        if len(data) > limit:
            raise jp.ProtocolError(f"media frame too long: {len(data)} samples, the limit is {limit} "
                                   f"({MAX_MEDIA_SECONDS:g} s at {self.input_sample_rate} Hz)")
        return Media(mulaw_decode(data), self.input_sample_rate)

    def restore(self, controls: wp.Controls) -> None:
        """A resumed session's parameters in force (its held controls) become this socket's."""
        self.controls = controls

    def session_ended(self) -> None:
        """The server ended the session (a refused start, a failure given up): a new start may come."""
        if self.state is State.STARTED:
            self.state = State.IDLE

    # -- frames out ---------------------------------------------------------------------------------------------
    def media(self, pcm: np.ndarray) -> str:
        """FastRTC's media frame for 16-bit mono samples at `output_sample_rate` (phone mode names its stream)."""
        frame: dict = {"event": "media", "media": {"payload": base64.b64encode(mulaw_encode(pcm)).decode("ascii")}}
        if self.phone:
            frame["streamSid"] = self.stream_id
        return je.encode(frame)

    def audio_format(self) -> dict:
        """What the `started` log says of the audio both ways."""
        return {"codec": "mulaw", "sample_rate": self.output_sample_rate, "channels": 1,
                "input_sample_rate": self.input_sample_rate}


def input_dropped(count: int, why: str) -> str:
    """The warning for media frames the engine dropped (faster than real time, too far ahead or behind), sent at
    most once per engine.api.DropTally's interval with the `count` since the last one, never once per frame."""
    return wp.warning(f"input dropped ({count} media frame(s) since the last notice): {why}")


def pong() -> str:
    return je.encode({"event": "pong"})


def concurrency_limit_reached(limit: int) -> str:
    """FastRTC's answer of a full server, sent before the socket closes (its docs: "Over WebSocket, the server will
    send the same message before closing the connection")."""
    return je.encode(wp.failed("concurrency_limit_reached", limit=limit))

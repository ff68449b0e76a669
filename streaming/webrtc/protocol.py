"""FastRTC's WebRTC signalling contract and the jam controls on its data channel, as pure functions (no sockets).

`parse_signal` turns a `POST /webrtc/offer` body into an `Offer` or a trickled `Candidate`, `parse_input` a `POST
/webrtc/input` body into an `Input`; `Controls` reads the `"text"` data channel. Every jam parameter is validated by
`streaming.jam.protocol` (one rule set for every transport). Requests that cannot be served raise `RequestFailed`, which
the I/O shell answers as FastRTC does: HTTP 200 `{"status": "failed", "meta": {"error": ...}}`. Data-channel replies
have FastRTC's shape `{"type": "log" | "warning" | "error", "data": ...}`. FastRTC's own browser client
(`frontend/shared/webrtc_utils.ts`) sends the plain text `handshake` as the channel opens; it is answered as FastRTC's
server answers it, never as an error. An offer with a data channel and no audio section (FastRTC's "receive"
template) is answered, since its client's `setRemoteDescription` needs an answer, not a failure it cannot parse, and
its channel hears `NO_AUDIO`, which says what to add."""

import enum
import typing as tp
from dataclasses import dataclass

from engine.api import Chunk, Landing, SessionSettings
from streaming.jam import events as je
from streaming.jam import params as jam_params
from streaming.jam import protocol as jp
from streaming.wire import WireError, load_object

OFFER_PARAMS = tuple(name for name in jam_params.PARAMS if name != "pace")  # the track always plays in real time
MAX_ID_LENGTH = 128
MAX_BODY_BYTES = 256 * 1024  # an SDP offer with many candidates stays far below this
HANDSHAKE = "handshake"  # what FastRTC's client sends on the data channel when it opens (not JSON)
# FastRTC's "receive" template (docs/userguide/api.md) offers only its "text" data channel: the answer is valid, and
# this `error` on the channel says what to add; the peer takes no slot and ends soon after
NO_AUDIO = ("the offer has no audio section, so the music has no track to play on: add an audio transceiver before "
            "createOffer (pc.addTransceiver(\"audio\", {direction: \"recvonly\"})) and send a new offer; this "
            "connection closes")
FAILED = "connection failed"
# A resuming offer takes a session over from the peer playing it: a network that vanished is noticed by ICE consent
# checks only after about 30 s, so the old peer may still look alive when its client comes back.
REPLACED = "connection replaced by a new offer"


class PeerState(enum.Enum):
    """A peer's connection: NEW (answered; ICE and DTLS connecting) -> CONNECTED -> ENDED, or NEW -> ENDED (it
    never connected, or was stopped or replaced first). Its transitions are `peer_state`'s and `ended`'s."""

    NEW = "new"
    CONNECTED = "connected"
    ENDED = "ended"


def peer_state(state: PeerState, connection_state: str) -> PeerState:
    """The state after aiortc reports `connection_state` (an RTCPeerConnection.connectionState)."""
    if state is PeerState.ENDED:
        return state
    if connection_state == "connected":
        return PeerState.CONNECTED
    if connection_state in ("failed", "closed"):
        return PeerState.ENDED
    return state


def keeps_session(reason: str, connected: bool, resumed: bool) -> bool:
    """Whether a peer that ends for `reason` leaves its session held for a new offer (streaming.sessions.registry): one
    whose connection failed (the network went: ICE consent checks notice it) or was replaced by a resuming
    offer, after it had connected or when it was itself a resume, and a resumed peer that never connected. One
    the client stopped or closed (DTLS close, as a normal WebSocket close), drained, that never connected or
    that the server shut down ends it."""
    dropped = reason in (FAILED, REPLACED) and (connected or resumed)
    return dropped or (resumed and not connected)


class RequestFailed(Exception):
    """A signalling or input request that is refused; `error` is FastRTC's code, `meta` what explains it."""

    def __init__(self, error: str, **meta: tp.Any) -> None:
        super().__init__(error)
        self.error = error
        self.meta = meta

    def body(self) -> dict:
        return failed(self.error, **self.meta)


@dataclass(frozen=True)
class Offer:
    webrtc_id: str
    sdp: str
    settings: tp.Optional[SessionSettings]  # None when resuming: the held session's own
    seed: tp.Optional[int]  # None: a random seed
    controls: tp.Optional["Controls"]
    session_id: tp.Optional[str] = None  # a held session to play on this peer (streaming.sessions.registry)
    audio: bool = True  # False: the offer has only a data channel, on which the peer says what to add (NO_AUDIO)


@dataclass(frozen=True)
class Candidate:
    webrtc_id: str
    candidate: tp.Optional[dict]  # None (or an empty candidate string): the client's end of candidates


@dataclass(frozen=True)
class Handshake:
    """FastRTC's client announcing its open data channel."""


@dataclass(frozen=True)
class Input:
    webrtc_id: str
    params: dict


def failed(error: str, **meta: tp.Any) -> dict:
    return {"status": "failed", "meta": {"error": error, **meta}}


def success(**fields: tp.Any) -> dict:
    return {"status": "success", **fields}


def answer(sdp: str) -> dict:
    return {"sdp": sdp, "type": "answer"}


def _load(body: bytes) -> dict:
    if len(body) > MAX_BODY_BYTES:
        raise RequestFailed("invalid_request",
                            detail=f"body too large: {len(body)} bytes, the limit is {MAX_BODY_BYTES}")
    try:
        return load_object(body.decode("utf-8", errors="replace"), max_bytes=MAX_BODY_BYTES)
    except WireError as exc:
        raise RequestFailed("invalid_request", detail=str(exc)) from None


def _webrtc_id(message: dict) -> str:
    webrtc_id = message.get("webrtc_id")
    if not isinstance(webrtc_id, str) or not webrtc_id.strip() or len(webrtc_id) > MAX_ID_LENGTH:
        raise RequestFailed("invalid_request",
                            detail=f"webrtc_id must be a non-empty string of at most {MAX_ID_LENGTH} characters")
    return webrtc_id


def parse_signal(body: bytes) -> tp.Union[Offer, Candidate]:
    """A `/webrtc/offer` body: an offer `{"sdp", "type": "offer", "webrtc_id", "params"?}` or a trickled ICE
    candidate `{"candidate": {...}, "webrtc_id", "type": "ice-candidate"}`."""
    message = _load(body)
    kind = message.get("type")
    webrtc_id = _webrtc_id(message)
    if kind == "ice-candidate":
        candidate = message.get("candidate")
        if candidate is None or (isinstance(candidate, dict) and not candidate.get("candidate")):
            return Candidate(webrtc_id, None)
        if not isinstance(candidate, dict) or not isinstance(candidate.get("candidate"), str) or \
                (candidate.get("sdpMid") is None and candidate.get("sdpMLineIndex") is None):
            raise RequestFailed("invalid_candidate", detail="candidate must be an object with a candidate string "
                                                            "and sdpMid or sdpMLineIndex")
        return Candidate(webrtc_id, candidate)
    if kind != "offer":
        raise RequestFailed("invalid_request", detail=f"type must be \"offer\" or \"ice-candidate\", got {kind!r}")
    sdp = message.get("sdp")
    if not isinstance(sdp, str) or not sdp.startswith("v=0"):
        raise RequestFailed("invalid_request", detail="sdp must be the offer's session description (starting v=0)")
    sections = sdp.replace("\r\n", "\n")
    audio = "\nm=audio " in sections
    if not audio and "\nm=application " not in sections:  # nothing to answer on, nowhere to say why
        raise RequestFailed("invalid_request", detail="the offer has no audio section: add a recvonly audio "
                                                      "transceiver before createOffer")
    params = message.get("params", {})
    if not isinstance(params, dict):
        raise RequestFailed("invalid_params", detail="params must be a JSON object")
    if "session_id" in params:
        if set(params) != {"session_id"} or not isinstance(params["session_id"], str):
            raise RequestFailed("invalid_params", detail="a resuming offer holds only params.session_id (a "
                                                         "string): the session keeps its parameters; send updates "
                                                         "once connected")
        return Offer(webrtc_id, sdp, None, None, None, session_id=params["session_id"], audio=audio)
    controls = Controls()
    try:
        settings, seed = controls.start(params)
    except jp.ProtocolError as exc:
        raise RequestFailed("invalid_params", detail=str(exc)) from None
    return Offer(webrtc_id, sdp, settings, seed, controls, audio=audio)


def parse_input(body: bytes) -> Input:
    """FastRTC's input hook: `{"webrtc_id", ...params}` (or the params nested under "params")."""
    message = _load(body)
    webrtc_id = _webrtc_id(message)
    params = {k: v for k, v in message.items() if k != "webrtc_id"}
    if isinstance(params.get("params"), dict):
        params = {**{k: v for k, v in params.items() if k != "params"}, **params["params"]}
    return Input(webrtc_id, params)


def _check_names(params: dict, allowed: tuple[str, ...]) -> None:
    if "pace" in params:
        raise jp.ProtocolError("pace does not apply to WebRTC: the track always plays in real time")
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise jp.ProtocolError(f"unknown parameter(s): {', '.join(unknown)}; expected {', '.join(allowed)}")


class Controls:
    """One peer's jam parameters: set by the offer, changed by `update` from the data channel or the input hook.

    Wraps a started `streaming.jam.protocol.JamProtocol`, so merging and validation are exactly the WebSocket
    protocol's."""

    def __init__(self) -> None:
        self.jam = jp.JamProtocol()

    def start(self, params: dict) -> tuple[SessionSettings, tp.Optional[int]]:
        _check_names(params, OFFER_PARAMS)
        command = self.jam.receive_text(je.encode({"type": "start", "params": params}))
        return command.settings, command.seed

    def update(self, params: dict) -> jp.Update:
        """Validated new settings; raises ProtocolError naming the field and then nothing has changed."""
        _check_names(params, OFFER_PARAMS)  # a seed gets streaming.jam.protocol's own word: set at the start only
        return self.jam.receive_text(je.encode({"type": "update", **params}))

    def receive_text(self, text: str) -> tp.Union[jp.Update, jp.Ping, jp.Stop, Handshake]:
        """One data-channel message: `{"type": "update", ...params}`, `{"type": "ping"}`, `{"type": "stop"}`, or
        FastRTC's `handshake`."""
        if text == HANDSHAKE:
            return Handshake()
        try:
            message = load_object(text)
        except WireError as exc:
            raise jp.ProtocolError(str(exc)) from None
        return self.receive_message(message)

    def receive_message(self, message: dict) -> tp.Union[jp.Update, jp.Ping, jp.Stop]:
        """One parsed control message (FastRTC's WebSocket transport carries the same ones beside its events:
        streaming.fastrtc_ws.protocol)."""
        kind = message.get("type")
        if kind == "ping":
            return jp.Ping()
        if kind == "stop":
            return jp.Stop()
        if kind == "update":
            changes = {k: v for k, v in message.items() if k != "type"}
            if isinstance(changes.get("params"), dict):  # the start message's nesting is accepted too
                changes = {**{k: v for k, v in changes.items() if k != "params"}, **changes["params"]}
            return self.update(changes)
        if kind == "start":
            raise jp.ProtocolError("start is implied by the offer: send update to change parameters")
        raise jp.ProtocolError(f"unknown message type {kind!r}: expected update, ping or stop")


# -- data-channel messages out ----------------------------------------------------------------------------------
def log(data: tp.Any) -> str:
    return je.encode({"type": "log", "data": data})


def warning(text: str) -> str:
    return je.encode({"type": "warning", "data": text})


def error(text: str) -> str:
    return je.encode({"type": "error", "data": text})


def drain_warning(seconds_left: float) -> str:
    """What a peer (or a FastRTC WebSocket) hears once when the replica starts draining."""
    return warning(f"this server is draining: the session ends within {seconds_left:.0f} s; connect again to "
                   "continue on another replica")


def received(message: str) -> str:
    """FastRTC's server acknowledgement of a data-channel message (`webrtc_connection_mixin.py`: it answers every
    message with `create_message("log", data=f"Server received: {message}")`)."""
    return log(f"Server received: {message}")


def update_acknowledgement(update: jp.Update, placement: Landing, heard_in_seconds: float) -> dict:
    """What changed, the values now in force, and where they start (streaming.jam.events.placement_fields): about
    `heard_in_seconds` after this message, once the audio already in the track has played."""
    fields = je.describe_update(update)
    fields.pop("pace")
    return {"event": "updated", **fields, **je.placement_fields(placement, heard_in_seconds)}


def chunk_log(chunk: Chunk, buffer_seconds: float, underruns: int, notice: tp.Optional[str]) -> str:
    """Sent as each chunk joins the track's buffer: the page shows real-time factor and buffer health from it."""
    data = {"event": "chunk", "index": chunk.index, "seconds": chunk.seconds,
            "real_time_factor": round(chunk.real_time_factor, 4), "buffer_seconds": round(buffer_seconds, 3),
            "underruns": underruns, "styles": ", ".join(chunk.settings.styles)}
    if notice:
        data["notice"] = notice
    return log(data)

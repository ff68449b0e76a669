"""The WebRTC signalling and data-channel protocol without sockets: bodies in, commands or FastRTC replies out."""

import json

import pytest

from engine.work.steering import Landing
from streaming.jam import protocol as jp
from streaming.webrtc import protocol as wp

SDP = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=recvonly\r\n"


def body(**fields) -> bytes:
    return json.dumps(fields).encode()


def offer(**extra) -> bytes:
    return body(sdp=SDP, type="offer", webrtc_id="abc", **extra)


def test_offer_without_params_uses_the_documented_defaults():
    command = wp.parse_signal(offer())
    assert isinstance(command, wp.Offer) and command.webrtc_id == "abc" and command.sdp == SDP
    assert command.settings.styles == ("warmup",) and command.settings.chunk_seconds == 2.0
    assert (command.settings.params.temperature, command.settings.params.top_k, command.settings.params.guidance) \
        == (1.1, 40, 3.0)
    assert command.seed is None


def test_offer_params_are_the_jam_start_parameters():
    command = wp.parse_signal(offer(params={"styles": "jazz, hiphop", "style_weights": "1.0,0.5", "temperature": 0.9,
                                            "topk": 7, "guidance_weight": 1.5, "seed": 0, "max_decode_frames": 25}))
    assert command.settings.styles == ("jazz", "hiphop") and command.settings.weights == (1.0, 0.5)
    assert command.settings.params.top_k == 7 and command.settings.chunk_seconds == 1.0
    assert command.seed == 0  # 0 is a real seed; -1 and null pick a random one
    assert wp.parse_signal(offer(params={"seed": -1})).seed is None


@pytest.mark.parametrize(("params", "detail"), [
    ({"topk": 0}, "topk must be within [1, 2048]"),
    ({"styles": ""}, "styles is empty"),
    ({"styles": "a,b", "style_weights": "1"}, "style_weights has 1 values for 2 styles"),
    ({"temperature": "hot"}, "temperature must be a number"),
    ({"seed": 1.5}, "seed must be an integer"),
    ({"pace": "asap"}, "pace does not apply to WebRTC"),
    ({"volume": 3}, "unknown parameter(s): volume"),
])
def test_bad_offer_params_fail_naming_the_field(params, detail):
    with pytest.raises(wp.RequestFailed) as caught:
        wp.parse_signal(offer(params=params))
    assert caught.value.body()["status"] == "failed"
    assert caught.value.body()["meta"]["error"] == "invalid_params"
    assert detail in caught.value.body()["meta"]["detail"]


def test_an_offer_with_only_a_data_channel_is_answered_without_audio():
    """FastRTC's "receive" template offers its "text" data channel alone: it gets an answer (its client cannot
    parse a failure), and the peer tells on the channel what to add."""
    data_only = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n"
    command = wp.parse_signal(body(sdp=data_only, type="offer", webrtc_id="abc"))
    assert isinstance(command, wp.Offer) and not command.audio
    assert wp.parse_signal(offer()).audio
    assert "add an audio transceiver" in wp.NO_AUDIO
    with pytest.raises(wp.RequestFailed):  # its params are still the jam's
        wp.parse_signal(body(sdp=data_only, type="offer", webrtc_id="abc", params={"topk": 0}))


@pytest.mark.parametrize(("raw", "detail"), [
    (b"not json", "not valid JSON"),
    (b"[1]", "must be a JSON object"),
    (body(sdp=SDP, type="offer"), "webrtc_id must be a non-empty string"),
    (body(sdp=SDP, type="answer", webrtc_id="x"), "type must be \"offer\" or \"ice-candidate\""),
    (body(sdp="hello", type="offer", webrtc_id="x"), "sdp must be the offer's session description"),
    (body(sdp="v=0\r\nm=video 9 UDP 96\r\n", type="offer", webrtc_id="x"), "no audio section"),
    (b"{" + b" " * wp.MAX_BODY_BYTES + b"}", "body too large"),
])
def test_malformed_signals_are_invalid_requests(raw, detail):
    with pytest.raises(wp.RequestFailed) as caught:
        wp.parse_signal(raw)
    assert caught.value.error == "invalid_request" and detail in caught.value.meta["detail"]


def test_trickled_candidates():
    candidate = {"candidate": "candidate:1 1 udp 2130706431 127.0.0.1 5000 typ host", "sdpMid": "0",
                 "sdpMLineIndex": 0}
    command = wp.parse_signal(body(candidate=candidate, webrtc_id="abc", type="ice-candidate"))
    assert command == wp.Candidate("abc", candidate)
    end = wp.parse_signal(body(candidate={"candidate": "", "sdpMid": "0"}, webrtc_id="abc", type="ice-candidate"))
    assert end == wp.Candidate("abc", None)
    with pytest.raises(wp.RequestFailed) as caught:
        wp.parse_signal(body(candidate={"candidate": "candidate:1"}, webrtc_id="abc", type="ice-candidate"))
    assert caught.value.error == "invalid_candidate"


def test_fastrtc_reply_shapes():
    assert wp.failed("concurrency_limit_reached", limit=2) == \
        {"status": "failed", "meta": {"error": "concurrency_limit_reached", "limit": 2}}
    assert wp.success() == {"status": "success"}
    assert wp.answer("v=0") == {"sdp": "v=0", "type": "answer"}
    assert json.loads(wp.log("pong")) == {"type": "log", "data": "pong"}
    assert json.loads(wp.warning("late")) == {"type": "warning", "data": "late"}
    assert json.loads(wp.error("bad")) == {"type": "error", "data": "bad"}


def started_controls(**params) -> wp.Controls:
    controls = wp.Controls()
    controls.start(params)
    return controls


def test_data_channel_update_merges_with_the_offer_params_and_is_acknowledged():
    controls = started_controls(styles="jazz, funk", style_weights="1,1", topk=20)
    update = controls.receive_text(json.dumps({"type": "update", "styles": "metal", "temperature": 0.8}))
    assert isinstance(update, jp.Update)
    assert update.settings.styles == ("metal",) and update.settings.weights == (1.0,)  # new styles: equal weights
    assert update.settings.params.top_k == 20 and update.settings.params.temperature == 0.8
    placement = Landing(chunk=7, offset_seconds=0.12, stream_seconds=2.36, ramp_seconds=0.0)
    ack = wp.update_acknowledgement(update, placement, heard_in_seconds=3.4564)
    assert ack["event"] == "updated" and ack["changed"] == ["style_weights", "styles", "temperature"]
    assert ack["applies_from_chunk"] == 7 and ack["heard_in_seconds"] == 3.456 and ack["offset_seconds"] == 0.12
    assert ack["params"]["styles"] == "metal" and "pace" not in ack
    glide = controls.receive_text(json.dumps({"type": "update", "styles": "dub", "style_ramp_seconds": 2}))
    assert glide.settings.ramp_seconds == 2.0 and glide.settings.styles == ("dub",)
    nested = controls.receive_text(json.dumps({"type": "update", "params": {"topk": 5}}))
    assert nested.settings.params.top_k == 5 and nested.settings.styles == ("dub",)


@pytest.mark.parametrize(("message", "error"), [
    ("not json", "not valid JSON"),
    (json.dumps({"type": "update", "topk": 0}), "topk must be within"),
    (json.dumps({"type": "update"}), "update names no parameter"),
    (json.dumps({"type": "update", "seed": 3}), "seed can only be set when the session starts"),
    (json.dumps({"type": "update", "pace": "asap"}), "pace does not apply"),
    (json.dumps({"type": "start"}), "start is implied by the offer"),
    (json.dumps({"type": "dance"}), "unknown message type 'dance': expected update, ping or stop"),
])
def test_bad_data_channel_messages_name_the_problem_and_change_nothing(message, error):
    controls = started_controls(styles="jazz", topk=20)
    with pytest.raises(jp.ProtocolError, match=error.replace("(", r"\(").replace(")", r"\)")):
        controls.receive_text(message)
    after = controls.receive_text(json.dumps({"type": "update", "temperature": 1.0}))
    assert after.settings.styles == ("jazz",) and after.settings.params.top_k == 20


def test_ping_and_stop():
    controls = started_controls()
    assert controls.receive_text('{"type": "ping"}') == jp.Ping()
    assert controls.receive_text('{"type": "stop"}') == jp.Stop()


def test_input_hook_body():
    assert wp.parse_input(body(webrtc_id="abc", topk=3)) == wp.Input("abc", {"topk": 3})
    assert wp.parse_input(body(webrtc_id="abc", params={"topk": 3})) == wp.Input("abc", {"topk": 3})
    with pytest.raises(wp.RequestFailed):
        wp.parse_input(body(topk=3))


def test_fastrtcs_handshake_is_a_command_with_fastrtcs_answer():
    assert wp.Controls().receive_text("handshake") == wp.Handshake()
    assert json.loads(wp.received("handshake")) == {"type": "log", "data": "Server received: handshake"}

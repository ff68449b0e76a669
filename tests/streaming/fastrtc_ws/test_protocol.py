"""FastRTC's WebSocket events without sockets: frames in, commands or FastRTC's frames out; and the mu-law codec
against audioop, the one FastRTC's server uses (backend/fastrtc/websocket.py)."""

import audioop
import base64
import json

import numpy as np
import pytest

from streaming.fastrtc_ws import protocol as fp
from streaming.formats import mulaw_decode, mulaw_encode
from streaming.jam import protocol as jp


def frame(**fields) -> str:
    return json.dumps(fields)


def started(phone: bool = False, **fields) -> fp.FastRTCSocket:
    socket = fp.FastRTCSocket(phone)
    key = "streamSid" if phone else "websocket_id"
    socket.receive_text(frame(event="start", **{key: "abc"}, **fields))
    return socket


def payload(samples: np.ndarray) -> str:
    return base64.b64encode(audioop.lin2ulaw(samples.astype("<i2").tobytes(), 2)).decode()


def test_mulaw_is_audioops_bit_for_bit_both_ways():
    every = np.arange(-32768, 32768, dtype=np.int16)
    assert mulaw_encode(every) == audioop.lin2ulaw(every.tobytes(), 2)
    codes = bytes(range(256))
    assert np.array_equal(mulaw_decode(codes), np.frombuffer(audioop.ulaw2lin(codes, 2), dtype=np.int16))


def test_a_bare_start_as_fastrtc_sends_it_plays_the_defaults_at_48_khz():
    socket = fp.FastRTCSocket()
    command = socket.receive_text(frame(event="start", websocket_id="abc"))
    assert isinstance(command, fp.Start) and command.stream_id == "abc" and command.session_id is None
    assert command.settings.styles == ("warmup",) and command.seed is None
    assert (command.output_sample_rate, command.input_sample_rate) == (48000, 48000)
    assert socket.state is fp.State.STARTED
    assert socket.audio_format() == {"codec": "mulaw", "sample_rate": 48000, "channels": 1,
                                     "input_sample_rate": 48000}


def test_start_carries_jam_params_and_rates():
    command = fp.FastRTCSocket().receive_text(frame(event="start", websocket_id="abc", output_sample_rate=24000,
                                                    input_sample_rate=16000,
                                                    params={"styles": "jazz", "seed": 7, "temperature": 0.9}))
    assert command.settings.styles == ("jazz",) and command.seed == 7
    assert command.settings.params.temperature == 0.9
    assert (command.output_sample_rate, command.input_sample_rate) == (24000, 16000)


def test_a_resuming_start_names_the_session_and_optionally_the_chunk():
    command = fp.FastRTCSocket().receive_text(frame(event="start", websocket_id="a",
                                                    params={"session_id": "s1", "from_chunk": 3}))
    assert (command.session_id, command.from_chunk, command.settings) == ("s1", 3, None)
    with pytest.raises(jp.ProtocolError, match="resuming start holds only"):
        fp.FastRTCSocket().receive_text(frame(event="start", websocket_id="a",
                                              params={"session_id": "s1", "styles": "jazz"}))


@pytest.mark.parametrize("fields, error", [
    ({}, "start needs websocket_id"),
    ({"websocket_id": ""}, "start needs websocket_id"),
    ({"websocket_id": "a", "output_sample_rate": 12345}, "output_sample_rate must be one of"),
    ({"websocket_id": "a", "input_sample_rate": "48000"}, "input_sample_rate must be one of"),
    ({"websocket_id": "a", "params": {"temperature": "hot"}}, "temperature"),
    ({"websocket_id": "a", "params": []}, "params must be a JSON object"),
])
def test_bad_starts_say_what_is_wrong_and_start_nothing(fields, error):
    socket = fp.FastRTCSocket()
    with pytest.raises(jp.ProtocolError, match=error):
        socket.receive_text(frame(event="start", **fields))
    assert socket.state is fp.State.IDLE


def test_phone_mode_is_twilios_stream_sid_at_8_khz_both_ways():
    socket = fp.FastRTCSocket(phone=True)
    assert socket.receive_text(frame(event="connected", protocol="Call", version="1.0.0")) == fp.Ignored("connected")
    with pytest.raises(jp.ProtocolError, match="unknown event 'connected'"):
        fp.FastRTCSocket().receive_text(frame(event="connected"))  # outside phone mode it is no event of FastRTC's
    with pytest.raises(jp.ProtocolError, match="start needs streamSid"):
        socket.receive_text(frame(event="start", websocket_id="abc"))
    with pytest.raises(jp.ProtocolError, match="phone mode"):
        socket.receive_text(frame(event="start", streamSid="MZ1", output_sample_rate=48000))
    command = socket.receive_text(frame(event="start", streamSid="MZ1"))
    assert (command.stream_id, command.output_sample_rate, command.input_sample_rate) == ("MZ1", 8000, 8000)
    out = json.loads(socket.media(np.zeros((160, 1), dtype=np.int16)))
    assert out["streamSid"] == "MZ1" and len(base64.b64decode(out["media"]["payload"])) == 160


def test_media_decodes_fastrtcs_mulaw_at_the_input_rate():
    socket = started(input_sample_rate=16000)
    samples = (np.sin(np.arange(2048) / 7) * 20000).astype(np.int16)
    media = socket.receive_text(frame(event="media", media={"payload": payload(samples)}))
    assert isinstance(media, fp.Media) and media.sample_rate == 16000
    expected = np.frombuffer(audioop.ulaw2lin(audioop.lin2ulaw(samples.tobytes(), 2), 2), dtype=np.int16)
    assert np.array_equal(media.samples, expected)


@pytest.mark.parametrize("media, error", [
    ({"payload": "not base64!"}, "not valid base64"),
    ({"payload": ""}, "media needs media.payload"),
    ({}, "media needs media.payload"),
    ("abc", "media needs media.payload"),
    ({"payload": base64.b64encode(bytes(48001)).decode()}, "media frame too long: 48001 samples"),
])
def test_bad_media_is_refused_and_the_session_stays_started(media, error):
    socket = started()
    with pytest.raises(jp.ProtocolError, match=error):
        socket.receive_text(frame(event="media", media=media))
    assert socket.state is fp.State.STARTED


def test_media_before_start_is_refused():
    with pytest.raises(jp.ProtocolError, match="media before start"):
        fp.FastRTCSocket().receive_text(frame(event="media", media={"payload": payload(np.zeros(4))}))


def test_ping_stop_and_the_data_channels_controls_are_read_from_the_same_frames():
    socket = fp.FastRTCSocket()
    assert isinstance(socket.receive_text(frame(event="ping")), fp.Ping)
    assert isinstance(socket.receive_text(frame(type="ping")), jp.Ping)
    with pytest.raises(jp.ProtocolError, match="'update' before start"):
        socket.receive_text(frame(type="update", temperature=0.5))
    socket = started()
    update = socket.receive_text(frame(type="update", temperature=0.5))
    assert isinstance(update, jp.Update) and update.settings.params.temperature == 0.5
    assert isinstance(socket.receive_text(frame(event="stop")), jp.Stop) and socket.state is fp.State.STOPPED


@pytest.mark.parametrize("text, error", [
    ("handshake", "not valid JSON"),
    ("[1]", "must be a JSON object"),
    (frame(hello=1), "needs \"event\""),
    (frame(event="offer"), "unknown event 'offer'"),
    (frame(event="start", websocket_id="a", pad="x" * fp.MAX_FRAME_BYTES), "message too large"),
])
def test_unreadable_frames_say_why(text, error):
    with pytest.raises(jp.ProtocolError, match=error):
        fp.FastRTCSocket().receive_text(text)


def test_a_second_start_while_playing_is_refused_and_a_lost_session_allows_one():
    socket = started()
    with pytest.raises(jp.ProtocolError, match="already playing"):
        socket.receive_text(frame(event="start", websocket_id="b"))
    socket.session_ended()
    assert isinstance(socket.receive_text(frame(event="start", websocket_id="b")), fp.Start)


def test_media_out_is_fastrtcs_frame_that_audioop_decodes():
    socket = started(output_sample_rate=24000)
    pcm = (np.cos(np.arange(960) / 3) * 30000).astype(np.int16).reshape(-1, 1)
    out = json.loads(socket.media(pcm))
    assert set(out) == {"event", "media"} and out["event"] == "media"
    decoded = np.frombuffer(audioop.ulaw2lin(base64.b64decode(out["media"]["payload"]), 2), dtype=np.int16)
    assert np.array_equal(decoded, np.frombuffer(audioop.ulaw2lin(audioop.lin2ulaw(pcm.tobytes(), 2), 2),
                                                 dtype=np.int16))


def test_a_full_server_answers_fastrtcs_concurrency_message():
    assert json.loads(fp.concurrency_limit_reached(2)) == \
        {"status": "failed", "meta": {"error": "concurrency_limit_reached", "limit": 2}}


def test_dropped_input_is_told_now_and_then_with_the_count():
    """How often is engine.api.DropTally's (tests/engine/work/test_live_input.py); here, what the client reads."""
    notice = json.loads(fp.input_dropped(3, "input comes faster than real time"))
    assert notice["type"] == "warning" and "3 media frame(s)" in notice["data"] and "faster" in notice["data"]


def test_media_samples_scale_to_float_as_fastrtc_does():
    media = fp.Media(np.array([-32768, 0, 16384], dtype=np.int16), 8000)
    assert media.float32().tolist() == [-1.0, 0.0, 0.5] and media.seconds == pytest.approx(3 / 8000)


def test_the_input_gain_and_mode_are_parameters_of_the_start_and_of_updates():
    socket = started(params={"input_gain": 0.5})
    update = socket.receive_text(frame(type="update", input_gain=1.5, input_mode="replace"))
    assert (update.settings.input_gain, update.settings.input_mode) == (1.5, "replace")
    with pytest.raises(jp.ProtocolError, match="input_gain"):
        socket.receive_text(frame(type="update", input_gain=9))

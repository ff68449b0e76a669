"""The /ws/jam protocol state machine, without sockets or a model."""

import json

import pytest
import torch

from engine.api import Chunk, SessionSettings
from engine.runtime.streams import SamplingParams
from streaming.jam import events as je
from streaming.jam import protocol as jp
from streaming.wire import MAX_MESSAGE_BYTES


def started(params=None, **extra):
    protocol = jp.JamProtocol()
    command = protocol.receive_text(json.dumps({"type": "start", "mode": "rt", "params": params or {}, **extra}))
    return protocol, command


def test_start_parses_the_seed_example():
    _, command = started({"styles": "jazz, hiphop", "style_weights": "1.0,0.8", "temperature": 1.1, "topk": 40,
                          "guidance_weight": 1.1, "pace": "realtime", "max_decode_frames": 50})
    assert isinstance(command, jp.Start)
    assert command.settings.styles == ("jazz", "hiphop") and command.settings.weights == (1.0, 0.8)
    assert command.settings.params == SamplingParams(temperature=1.1, top_k=40, guidance=1.1)
    assert command.settings.chunk_seconds == 2.0 and command.pace == "realtime" and not command.binary_audio


def test_start_defaults_and_binary_audio():
    _, command = started(binary_audio=True)
    assert command.binary_audio and command.pace == "asap"
    assert command.settings.styles == ("warmup",) and command.settings.weights == (1.0,)


def test_update_merges_and_names_what_changed():
    protocol, _ = started({"styles": "jazz"})
    update = protocol.receive_text(json.dumps({"type": "update", "styles": "jazz, hiphop", "style_weights": "1,0.5",
                                               "temperature": 1.2, "topk": 64, "max_decode_frames": 40}))
    assert isinstance(update, jp.Update)
    assert update.changed == ("max_decode_frames", "style_weights", "styles", "temperature", "topk")
    assert update.settings.chunk_seconds == 1.6 and update.settings.params.top_k == 64
    assert je.describe_update(update)["params"]["max_decode_frames"] == 40


def test_temperature_zero_is_greedy_and_a_seed_fixes_the_session():
    protocol, command = started({"temperature": 0, "seed": 42})
    assert command.settings.params.temperature == 0 and command.seed == 42
    with pytest.raises(jp.ProtocolError, match="seed can only be set when the session starts"):
        protocol.receive_text(json.dumps({"type": "update", "seed": 1}))


def test_the_engine_check_runs_before_anything_changes():
    def check(settings):
        if "long" in settings.styles:
            raise ValueError("style 'long': 600 text tokens; the text encoder takes at most 512")

    protocol = jp.JamProtocol(check_settings=check)
    protocol.receive_text(json.dumps({"type": "start", "params": {"styles": "short"}}))
    with pytest.raises(jp.ProtocolError, match="at most 512"):
        protocol.receive_text(json.dumps({"type": "update", "styles": "long"}))
    assert protocol.params["styles"] == "short"


def test_new_styles_without_weights_get_equal_weights():
    protocol, _ = started({"styles": "a, b", "style_weights": "1,2"})
    update = protocol.receive_text(json.dumps({"type": "update", "styles": "c, d, e"}))
    assert update.settings.weights == (1.0, 1.0, 1.0)


def test_invalid_update_changes_nothing():
    protocol, _ = started({"temperature": 1.0})
    with pytest.raises(jp.ProtocolError, match="temperature"):
        protocol.receive_text(json.dumps({"type": "update", "temperature": -1, "topk": 10}))
    update = protocol.receive_text(json.dumps({"type": "update", "topk": 12}))
    assert update.settings.params.temperature == 1.0 and update.settings.params.top_k == 12


@pytest.mark.parametrize(("message", "error"), [
    ("not json", "not valid JSON"),
    ("[1, 2]", "JSON object"),
    ('{"type": "dance"}', "unknown message type 'dance'"),
    ('{"type": "update", "topk": 3}', "update before start"),
    ('{"type": "stop"}', "stop before start"),
    ('{"type": "start", "mode": "batch"}', "only \\\"rt\\\""),
    ('{"type": "start", "params": {"styles": " , "}}', "styles is empty"),
    ('{"type": "start", "params": {"styles": "a,b", "style_weights": "1"}}', "1 values for 2 styles"),
    ('{"type": "start", "params": {"styles": "a,b", "style_weights": "0,0"}}', "all zero"),
    ('{"type": "start", "params": {"styles": "a", "style_weights": "x"}}', "comma-separated numbers"),
    ('{"type": "start", "params": {"temperature": -0.5}}', "temperature must be within \\[0, 10\\]"),
    ('{"type": "start", "params": {"temperature": 1e400}}', "temperature must be a number"),
    ('{"type": "start", "params": {"topk": 123456789012345678901234567890}}', "topk must be within"),
    ('{"type": "start", "params": {"seed": -2}}', "seed must be within"),
    ('{"type": "start", "params": {"styles": "' + "x" * 4001 + '"}}', "longer than 4000 characters"),
    ('{"type": "start", "params": {"temperature": "hot"}}', "temperature must be a number"),
    ('{"type": "start", "params": {"topk": 0}}', "topk must be within \\[1, 2048\\]"),
    ('{"type": "start", "params": {"topk": 2.5}}', "topk must be an integer"),
    ('{"type": "start", "params": {"max_decode_frames": 51}}', "max_decode_frames must be within \\[1, 50\\]"),
    ('{"type": "start", "params": {"max_decode_frames": 0}}', "max_decode_frames"),
    ('{"type": "start", "params": {"pace": "slow"}}', "pace must be one of"),
    ('{"type": "start", "params": {"volume": 3}}', "unknown parameter"),
    ('{"type": "start", "params": {"styles": "a,b,c,d,e"}}', "at most 4"),
    ('{"type": "start", "binary_audio": "yes"}', "binary_audio must be true or false"),
    ('{"type": "start", "mode": "bars"}', "mode 'bars' is not supported: only \"rt\""),
    ('{"type": "start", "params": [1]}', "params must be a JSON object"),
    ('{"type": "start", "session_id": "s", "from_chunk": -1}', "from_chunk must be within \\[0, "),
    ('{"type": "start", "session_id": "s", "binary_audio": 1}', "binary_audio must be true or false"),
])
def test_bad_messages_name_the_problem(message, error):
    with pytest.raises(jp.ProtocolError, match=error):
        jp.JamProtocol().receive_text(message)


def test_start_twice_binary_frames_and_oversized_messages_are_refused():
    protocol, _ = started()
    with pytest.raises(jp.ProtocolError, match="already received"):
        protocol.receive_text('{"type": "start"}')
    with pytest.raises(jp.ProtocolError, match="binary frames are not accepted"):
        protocol.receive_bytes(b"\x00")
    with pytest.raises(jp.ProtocolError, match="message too large"):
        protocol.receive_text(json.dumps({"type": "ping", "pad": "x" * MAX_MESSAGE_BYTES}))


def test_ping_stop_and_events():
    protocol, _ = started()
    assert isinstance(protocol.receive_text('{"type":"ping"}'), jp.Ping)
    assert isinstance(protocol.receive_text('{"type":"stop"}'), jp.Stop)
    assert json.loads(je.started_event("r.abc")) == {"type": "started", "mode": "rt", "session_id": "r.abc"}
    assert json.loads(je.pong_event()) == {"type": "pong"}
    assert json.loads(je.stopped_event()) == {"type": "stopped"}
    assert json.loads(je.error_event("concurrency_limit_reached", limit=2)) == \
        {"type": "error", "error": "concurrency_limit_reached", "limit": 2}


def _chunk():
    settings = SessionSettings(styles=("a", "b"), weights=(1.0, 0.5), chunk_seconds=1.6)
    audio = torch.zeros(1, int(1.64 * 32000))
    return Chunk(index=3, audio=audio, sample_rate=32000, seconds=1.6, overlap_seconds=0.04,
                 generation_seconds=0.8, frames=torch.zeros(4, 80, dtype=torch.long), settings=settings)


def test_chunk_metadata_states_what_was_sent():
    import base64
    import io

    import soundfile as sf

    (text,) = je.chunk_events(_chunk(), binary=False, noise_notice="noise")
    message = json.loads(text)
    meta = message["metadata"]
    assert meta["chunk_frames"] == 40 and meta["chunk_seconds"] == 1.6 and meta["crossfade_seconds"] == 0.04
    assert meta["sample_rate"] == 32000 and meta["chunk_index"] == 3 and meta["real_time_factor"] == 0.5
    assert meta["notice"] == "noise"
    samples, rate = sf.read(io.BytesIO(base64.b64decode(message["audio_base64"])))
    assert rate == 32000 and len(samples) == int(1.64 * 32000)
    wav, meta_text = je.chunk_events(_chunk(), binary=True)
    assert wav[:4] == b"RIFF" and json.loads(meta_text)["type"] == "chunk_meta"


def test_melody_messages_carry_audio_or_drop_it():
    import base64

    protocol, _ = started()
    audio = b"RIFF" + b"\x00" * 200_000  # larger than an ordinary message may be
    command = protocol.receive_text(json.dumps({"type": "melody", "audio_base64": base64.b64encode(audio).decode()}))
    assert command == jp.Melody(audio)
    assert protocol.receive_text('{"type": "melody", "audio_base64": null}') == jp.Melody(None)
    assert protocol.receive_text('{"type": "melody", "audio_base64": ""}') == jp.Melody(None)
    with pytest.raises(jp.ProtocolError, match="^audio_base64 must be a base64 string of an audio file, got int$"):
        protocol.receive_text('{"type": "melody", "audio_base64": 5}')
    with pytest.raises(jp.ProtocolError, match="not valid base64"):
        protocol.receive_text('{"type": "melody", "audio_base64": "***"}')
    with pytest.raises(jp.ProtocolError, match="melody before start"):
        jp.JamProtocol().receive_text('{"type": "melody", "audio_base64": null}')
    with pytest.raises(jp.ProtocolError, match="message too large"):
        protocol.receive_text(json.dumps({"type": "ping", "pad": "x" * 200_000}))

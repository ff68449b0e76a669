"""One model of parameters and limits (engine/params.py): every protocol refuses a NaN, an infinity, a bool for a
number or a value out of range with its own error naming the field; Lyria's models are Google's, field by field;
Cog's schema shows the same bounds; random JSON never gets past a parser as anything but the protocol's error."""

import json
import math

import pytest
from google.genai import types
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic.alias_generators import to_camel

from engine import params as rules
from engine.params import BatchRequest, RequestError, SamplingParams
from engine.work.settings import SessionSettings
from streaming.bar import protocol as bp
from streaming.gary import protocol as gp
from streaming.jam import params as jam_params
from streaming.jam import protocol as jp
from streaming.lyria import messages as lc
from streaming.lyria import protocol as lp
from streaming.webrtc import protocol as wp
from tools.openapi_schema import build_schema

SDP = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=recvonly\r\n"
# (value, what the error says about it): JSON's NaN and 1e400 (infinity), a bool for a number, out of range
BAD_NUMBERS = [(float("nan"), "must be a number"), (1e400, "must be a number"), (True, "must be a number"),
               (-1, "must be within")]
BAD_INTEGERS = [(float("nan"), "must be an integer"), (True, "must be an integer"), (2.5, "must be an integer"),
                (10**30, "must be within"), (0, "must be within")]


def jam_start(**params) -> str:
    return json.dumps({"type": "start", "params": params})


@pytest.mark.parametrize(("value", "error"), BAD_NUMBERS)
def test_jam_start_refuses_bad_numbers_naming_the_field(value, error):
    with pytest.raises(jp.ProtocolError, match=f"^temperature {error}"):
        jp.JamProtocol().receive_text(jam_start(temperature=value))


@pytest.mark.parametrize(("value", "error"), BAD_INTEGERS)
def test_jam_update_refuses_bad_integers_naming_the_field_and_changes_nothing(value, error):
    protocol = jp.JamProtocol()
    protocol.receive_text(jam_start(topk=7))
    with pytest.raises(jp.ProtocolError, match=f"^topk {error}"):
        protocol.receive_text(json.dumps({"type": "update", "topk": value}))
    assert protocol.params["topk"] == 7


def test_a_whole_float_is_an_integer_as_json_has_one_kind_of_number():
    start = jp.JamProtocol().receive_text(jam_start(topk=12.0, max_decode_frames=25.0))
    assert start.settings.params.top_k == 12 and isinstance(start.settings.params.top_k, int)


@pytest.mark.parametrize(("value", "error"), BAD_NUMBERS)
def test_webrtc_offer_refuses_bad_numbers_naming_the_field(value, error):
    body = json.dumps({"sdp": SDP, "type": "offer", "webrtc_id": "a", "params": {"guidance_weight": value}})
    with pytest.raises(wp.RequestFailed) as caught:
        wp.parse_signal(body.encode())
    assert caught.value.error == "invalid_params"
    assert caught.value.meta["detail"].startswith(f"guidance_weight {error}")


@pytest.mark.parametrize(("field", "value", "error"), [
    ("bpm", float("nan"), "must be a number"), ("bpm", True, "must be a number"), ("bpm", 401, "must be within"),
    ("beats_per_bar", True, "must be an integer"), ("loop_weight", 1e400, "must be a number"),
    ("target_sr", 7999, "must be within")])
def test_bar_start_refuses_bad_numbers_naming_the_field(field, value, error):
    message = {"type": "start", "mode": "bar", "loop_audio_b64": "UklGRg==", "params": {field: value}}
    with pytest.raises(jp.ProtocolError, match=f"^{field} {error}"):
        bp.command(bp.load(json.dumps(message)))


@pytest.mark.parametrize(("config", "reason"), [
    ({"guidance": float("nan")}, "musicGenerationConfig.guidance must be a number"),
    ({"topK": True}, "musicGenerationConfig.topK must be an integer"),
    ({"top_k": 1001}, "musicGenerationConfig.topK must be within \\[1, 1000\\]"),  # named as the wire names it
    ({"bpm": 1e400}, "musicGenerationConfig.bpm must be an integer"),
    ({"onlyBassAndDrums": 1}, "musicGenerationConfig.onlyBassAndDrums must be true or false")])
def test_lyria_config_refuses_bad_values_naming_the_field(config, reason):
    protocol = lp.LyriaProtocol()
    protocol.receive_text(json.dumps({"setup": {"model": "models/lyria-realtime-exp"}}))
    with pytest.raises(lp.LyriaFatal, match=f"^{reason}") as caught:
        protocol.receive_text(json.dumps({"musicGenerationConfig": config}))
    assert caught.value.code == lc.CLOSE_INVALID


@pytest.mark.parametrize(("body", "error"), [
    ({"top_k": True}, "top_k must be an integer"), ({"temperature": float("inf")}, "temperature must be a number"),
    ({"cfg_coef": 21}, "cfg_coef must be within \\[0, 20\\]"), ({"prompt_duration": 30}, "prompt_duration must be")])
def test_gary_fields_refuse_bad_numbers_naming_the_field(body, error):
    with pytest.raises(gp.GaryError, match=f"^{error}"):
        gp.parse_params({"model_name": "m", "prompt_duration": 4, **body})


@pytest.mark.parametrize(("inputs", "error"), [
    ({"duration": 0}, "duration must be within \\[1, 300\\], got 0"),
    ({"temperature": float("nan")}, "temperature must be a number"),
    ({"top_k": True}, "top_k must be an integer"),
    ({"seed": -2}, "seed must be within \\[-1, 4294967295\\]"),
    ({"continuation_end": -2}, "continuation_end must be an integer >= -1"),
    ({"output_format": "ogg"}, "output_format must be one of 'wav' or 'mp3'"),
    ({"prompt": "x" * 4001}, "prompt is longer than 4000 characters")])
def test_batch_requests_name_the_input(inputs, error):
    with pytest.raises(RequestError, match=f"^{error}"):
        BatchRequest(**{"prompt": "x", **inputs})


def test_engine_models_are_valid_whenever_they_exist():
    with pytest.raises(ValueError, match="guidance must be within"):
        SamplingParams(guidance=21.0)
    with pytest.raises(ValueError, match="chunk_seconds must be within \\(0, 10\\]"):
        SessionSettings(styles=("a",), weights=(1.0,), chunk_seconds=0.0)
    assert SessionSettings(styles=["a"], weights=[1]).styles == ("a",)  # lists are read as tuples
    with pytest.raises(jp.ProtocolError, match="style weights are too large"):  # each finite, not their sum
        jp.JamProtocol().receive_text(jam_start(styles="a, b", style_weights="1e308,1e308"))


def test_cogs_schema_shows_the_bounds_of_the_one_model():
    properties = build_schema()["components"]["schemas"]["Input"]["properties"]
    for name, kind in [("duration", rules.Duration), ("top_p", rules.TopP), ("temperature", rules.Temperature),
                       ("classifier_free_guidance", rules.Guidance), ("seed", rules.Seed),
                       ("continuation_start", rules.ContinuationStart), ("continuation_end", rules.ContinuationEnd)]:
        bounds = rules.limits(kind)
        assert properties[name].get("minimum") == bounds.get("ge"), name
        assert properties[name].get("maximum") == bounds.get("le"), name
    assert properties["top_k"]["maximum"] == rules.MAX_TOP_K
    assert properties["prompt"]["maxLength"] == rules.MAX_PROMPT_CHARS


def test_lyria_models_are_googles_field_by_field():
    assert set(lc.GenerationConfig.model_fields) == set(types.LiveMusicGenerationConfig.model_fields)
    assert set(lc.WeightedPrompt.model_fields) == set(types.WeightedPrompt.model_fields)
    assert set(lc.ClientContent.model_fields) == set(types.LiveMusicClientContent.model_fields)
    assert [s.value for s in lc.Scale] == [s.value for s in types.Scale]
    assert [m.value for m in lc.MusicGenerationMode] == [m.value for m in types.MusicGenerationMode]


def test_lyria_config_reads_camel_and_snake_case_and_null_as_the_default():
    sdk = types.LiveMusicGenerationConfig(top_k=30, mute_bass=True, scale=types.Scale.D_MAJOR_B_MINOR, bpm=90,
                                          music_generation_mode=types.MusicGenerationMode.DIVERSITY)
    camel = lc.parse_config(sdk.model_dump(mode="json", by_alias=True, exclude_none=True))
    snake = lc.parse_config(sdk.model_dump(mode="json", exclude_none=True))
    assert camel == snake and camel.top_k == 30 and camel.mute_bass and camel.scale == "D_MAJOR_B_MINOR"
    assert camel.to_json()["topK"] == 30 and camel.to_json()["musicGenerationMode"] == "DIVERSITY"
    assert set(camel.to_json()) <= {to_camel(name) for name in lc.GenerationConfig.model_fields}
    nulls = lc.parse_config({"temperature": None, "muteBass": None, "scale": None})
    assert nulls == lc.GenerationConfig()
    unspecified = lc.parse_config({"musicGenerationMode": "MUSIC_GENERATION_MODE_UNSPECIFIED"})
    assert unspecified.music_generation_mode == "QUALITY"  # Lyria's default mode


def test_lyria_prompts_read_camel_and_snake_case():
    protocol = lp.LyriaProtocol()
    protocol.receive_text(json.dumps({"setup": {"model": "models/lyria-realtime-exp"}}))
    protocol.receive_text(json.dumps({"client_content": {"weighted_prompts": [{"text": "a", "weight": 3}]}}))
    assert protocol.prompts.texts == ("a",)
    protocol.receive_text(json.dumps({"clientContent": {"weightedPrompts": [{"text": "b", "weight": 1},
                                                                             {"text": "c", "weight": 3}]}}))
    assert protocol.prompts.texts == ("b", "c") and protocol.prompts.weights == (0.25, 0.75)


# -- random JSON: the parsers answer only with the protocol's error -------------------------------------------
NAMES = st.sampled_from([*jam_params.PARAMS, "type", "params", "volume", "session_id", "binary_audio", "from_chunk"])
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(min_value=-2**70, max_value=2**70),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
                    st.sampled_from(["jazz, rock", "1,0", "realtime", "asap", "1e400", ""]))
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                      st.dictionaries(NAMES, inner, max_size=4)), max_leaves=8)
MESSAGES = st.dictionaries(NAMES, VALUES, max_size=6).map(lambda m: {"type": m.pop("type", "start"), **m})


def _text(message: dict) -> str:
    try:
        return json.dumps(message)
    except ValueError:  # a float json cannot write
        return json.dumps({k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                           for k, v in message.items()})


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(start=MESSAGES, params=st.dictionaries(NAMES, VALUES, max_size=6), update=MESSAGES)
def test_random_jam_start_and_update_raise_only_the_protocol_error(start, params, update):
    protocol = jp.JamProtocol()
    for message in ({**start, "type": "start"}, {"type": "start", "params": params}, {**update, "type": "update"}):
        try:
            command = protocol.receive_text(_text(message))
        except jp.ProtocolError as exc:
            assert str(exc) and "validation error" not in str(exc)  # never pydantic's own dump
        else:
            assert isinstance(command, (jp.Start, jp.Update, jp.Attach))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(config=st.dictionaries(st.sampled_from([*map(to_camel, lc.GenerationConfig.model_fields),
                                               *lc.GenerationConfig.model_fields, "tempo"]), VALUES, max_size=5),
       prompts=VALUES)
def test_random_lyria_config_and_prompts_raise_only_lyria_fatal(config, prompts):
    protocol = lp.LyriaProtocol()
    protocol.receive_text(json.dumps({"setup": {"model": "models/lyria-realtime-exp"}}))
    for message in ({"musicGenerationConfig": config}, {"clientContent": {"weightedPrompts": prompts}}):
        try:
            protocol.receive_text(_text(message))
        except lp.LyriaFatal as exc:
            assert exc.reason and "validation error" not in exc.reason


BAR_NAMES = st.sampled_from([*bp.StartParams.model_fields, "volume"])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(params=st.dictionaries(BAR_NAMES, VALUES, max_size=6), changes=st.dictionaries(BAR_NAMES, VALUES, max_size=3))
def test_random_bar_start_and_update_raise_only_the_protocol_error(params, changes):
    message = {"type": "start", "mode": "bar", "loop_audio_b64": "UklGRg==", "params": params}
    try:
        start = bp.command(bp.load(_text(message)))
        bp.updated(bp.bar_params(start.raw_params, loop_rate=44100), changes)
    except jp.ProtocolError as exc:
        assert str(exc) and "validation error" not in str(exc)


def test_a_nested_field_is_named_by_its_path():
    protocol = lp.LyriaProtocol()
    protocol.receive_text(json.dumps({"setup": {"model": "models/lyria-realtime-exp"}}))
    message = {"clientContent": {"weightedPrompts": [{"text": "a"}, {"text": ["b"], "weight": 1}]}}
    with pytest.raises(lp.LyriaFatal, match=r"^clientContent\.weightedPrompts\[1\]\.text must be a string"):
        protocol.receive_text(json.dumps(message))


FORM_TEXT = st.one_of(st.text(max_size=8), st.sampled_from(["", "4", "4.000", "2.5", "nan", "inf", "1e400", "-1",
                                                           "120.000", "acid house, techno", "1,0.5", "auto"]))
FORM_NAMES = st.sampled_from([*bp.GenerateForm.model_fields, *bp.JamStartForm.model_fields, *bp.FORM_NAMES.values(),
                              "chunk_index", "anchor_bars", "request_id"])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fields=st.dictionaries(FORM_NAMES, FORM_TEXT, max_size=6))
def test_random_bar_forms_raise_only_the_protocol_error(fields):
    """Every form route's reading, as streaming.bar.http does it."""
    params = bp.bar_params({}, loop_rate=44100)
    for read in (lambda: bp.bar_params(bp.read_form(bp.GenerateForm, fields).model_dump(), 44100, bars_key="bars"),
                 lambda: bp.bar_params(bp.read_form(bp.JamStartForm, fields).model_dump(), 44100),
                 lambda: bp.read_form(bp.ConsumeMessage, {**fields, "session_id": "s"}),
                 lambda: bp.read_form(bp.SpliceFields, fields),
                 lambda: bp.updated(params, bp.form_values(bp.Steering, fields) or {"topk": 1})):
        try:
            read()
        except jp.ProtocolError as exc:
            assert str(exc) and "validation error" not in str(exc)


GARY_NAMES = st.sampled_from(["model_name", "prompt_duration", "top_k", "temperature", "cfg_coef", "description",
                              "seed", "session_id", "audio_data", "volume"])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=st.one_of(st.dictionaries(GARY_NAMES, VALUES, max_size=6), VALUES), retry=st.booleans())
def test_random_gary_requests_raise_only_gary_error(body, retry):
    stored = gp.GaryParams(model_name="demo", prompt_duration=4) if retry else None
    for read in (lambda: gp.parse_params(body, base=stored), lambda: gp.session_id(body, required=False),
                 lambda: gp.audio_bytes(body if isinstance(body, dict) else {}, required=False)):
        try:
            read()
        except gp.GaryError as exc:
            assert str(exc) and "validation error" not in str(exc)


def test_lyria_names_a_field_sent_in_snake_case_as_the_wire_does():
    protocol = lp.LyriaProtocol()
    protocol.receive_text(json.dumps({"setup": {"model": "models/lyria-realtime-exp"}}))
    message = {"client_content": {"weighted_prompts": [{"text": "a", "weight": -1}]}}
    with pytest.raises(lp.LyriaFatal, match=r"^clientContent\.weightedPrompts\[0\]\.weight must be a number >= 0"):
        protocol.receive_text(json.dumps(message))
    with pytest.raises(lp.LyriaFatal, match="^musicGenerationConfig.muteBass must be true or false"):
        protocol.receive_text(json.dumps({"music_generation_config": {"mute_bass": "yes"}}))


def test_the_model_rule_names_an_adapter_or_the_base():
    """engine.params.model_choice, every protocol's `model`: the base by default or by name, an adapter by its file
    name with a protocol's prefix dropped, and a clear error for what cannot be a name."""
    from engine.params import ParamError, model_choice

    assert [model_choice(m) for m in (None, "", "base", " base ")] == [None] * 4
    assert model_choice("models/lyria-realtime-exp", base_names=("lyria-realtime-exp",)) is None
    assert model_choice("thepatch/demo", base_names=("demo",)) is None
    assert [model_choice(m) for m in ("funk", "models/funk", "owner/funk", "funk.safetensors")] == ["funk"] * 4
    for bad, words in (("../x!", "is not a model name"), ("a" * 65, "is not a model name"), (".hidden", "not a"),
                       (3, "model must be a string")):
        with pytest.raises(ParamError, match=words):
            model_choice(bad)

"""The BidiGenerateMusic protocol state machine, without sockets or a model."""

import json

import pytest

from streaming import lyria_protocol as lp


def ready() -> lp.LyriaProtocol:
    protocol = lp.LyriaProtocol()
    action = protocol.receive_text(json.dumps({"setup": {"model": "models/lyria-realtime-exp"}}))
    assert action == lp.Send((json.dumps({"setupComplete": {}}),))
    return protocol


def prompts(*pairs):
    return json.dumps({"clientContent": {"weightedPrompts": [{"text": t, "weight": w} for t, w in pairs]}})


def test_setup_must_come_first_and_once():
    with pytest.raises(lp.LyriaFatal, match="clientContent before setup"):
        lp.LyriaProtocol().receive_text(prompts(("x", 1)))
    protocol = ready()
    with pytest.raises(lp.LyriaFatal, match="already received"):
        protocol.receive_text(json.dumps({"setup": {"model": "m"}}))
    with pytest.raises(lp.LyriaFatal, match="setup.model"):
        lp.LyriaProtocol().receive_text(json.dumps({"setup": {}}))


def test_weighted_prompts_are_normalised_and_empty_ones_filtered():
    protocol = ready()
    action = protocol.receive_text(prompts(("minimal techno", 3.0), ("", 1.0), ("piano", 1.0)))
    assert isinstance(action, lp.Steer)
    assert json.loads(action.messages[0])["filteredPrompt"]["text"] == ""
    assert protocol.prompts == lp.Prompts(("minimal techno", "piano"), (0.75, 0.25))


def test_snake_case_is_accepted():
    protocol = ready()
    protocol.receive_text(json.dumps({"client_content": {"weighted_prompts": [{"text": "a", "weight": 1}]}}))
    protocol.receive_text(json.dumps({"music_generation_config": {"top_k": 7, "mute_bass": True}}))
    assert protocol.prompts.texts == ("a",) and protocol.config.top_k == 7 and protocol.config.mute_bass


@pytest.mark.parametrize(("message", "reason"), [
    (prompts(("a", 0), ("b", 0)), "weights are all zero"),
    (prompts(("a", -1)), "weight must be a number >= 0"),
    (json.dumps({"clientContent": {"weightedPrompts": "jazz"}}), "must be a list"),
    (json.dumps({"musicGenerationConfig": {"temperature": 3.5}}), "temperature must be within \\[0, 3\\]"),
    (json.dumps({"musicGenerationConfig": {"topK": 0}}), "topK must be within \\[1, 1000\\]"),
    (json.dumps({"musicGenerationConfig": {"guidance": 7}}), "guidance must be within \\[0, 6\\]"),
    (json.dumps({"musicGenerationConfig": {"bpm": 30}}), "bpm must be within \\[60, 200\\]"),
    (json.dumps({"musicGenerationConfig": {"density": 2}}), "density must be within \\[0, 1\\]"),
    (json.dumps({"musicGenerationConfig": {"brightness": -1}}), "brightness must be within \\[0, 1\\]"),
    (json.dumps({"musicGenerationConfig": {"scale": "H_MAJOR"}}), "not a Scale"),
    (json.dumps({"musicGenerationConfig": {"musicGenerationMode": "LOUD"}}), "not a MusicGenerationMode"),
    (json.dumps({"musicGenerationConfig": {"muteBass": "yes"}}), "muteBass must be true or false"),
    (json.dumps({"musicGenerationConfig": {"tempo": 1}}), "unknown field tempo"),
    (json.dumps({"playbackControl": "REWIND"}), "not one of PLAY"),
    (json.dumps({"dance": {}}), "unknown message field dance"),
    (json.dumps({"a": 1, "b": 2}), "exactly one of"),
    ("{nope", "not valid JSON"),
])
def test_malformed_messages_close_with_a_reason_naming_the_field(message, reason):
    with pytest.raises(lp.LyriaFatal, match=reason) as caught:
        ready().receive_text(message)
    assert caught.value.code == lp.CLOSE_INVALID and len(caught.value.reason.encode()) <= 123


def test_config_is_whole_each_time_and_omitted_fields_return_to_defaults():
    protocol = ready()
    protocol.receive_text(json.dumps({"musicGenerationConfig": {"temperature": 2.0, "topK": 100, "bpm": 120}}))
    assert protocol.config.temperature == 2.0 and protocol.config.bpm == 120
    protocol.receive_text(json.dumps({"musicGenerationConfig": {"guidance": 5.0}}))
    assert protocol.config == lp.GenerationConfig(guidance=5.0)


def test_approximated_controls_become_cues_and_warn_once():
    protocol = ready()
    protocol.receive_text(prompts(("funk", 1.0)))
    first = protocol.receive_text(json.dumps({"musicGenerationConfig": {
        "bpm": 90, "scale": "D_MAJOR_B_MINOR", "density": 0.1, "brightness": 0.9, "muteDrums": True,
        "musicGenerationMode": "VOCALIZATION"}}))
    warning = json.loads(first.messages[0])["warning"]
    for name in ("bpm", "scale", "density", "brightness", "muteDrums", "musicGenerationMode"):
        assert name in warning
    again = protocol.receive_text(json.dumps({"musicGenerationConfig": {"bpm": 100}}))
    assert again.messages == ()
    protocol.receive_text(json.dumps({"musicGenerationConfig": {"bpm": 90, "onlyBassAndDrums": True}}))
    settings = protocol.settings()
    assert settings.styles == ("funk, 90 bpm, only bass and drums",)


def test_settings_map_lyria_sampling_to_musicgen():
    protocol = ready()
    protocol.receive_text(prompts(("a", 2), ("b", 2)))
    protocol.receive_text(json.dumps({"musicGenerationConfig": {"temperature": 0.5, "topK": 20, "guidance": 2}}))
    settings = protocol.settings()
    assert settings.weights == (0.5, 0.5)
    assert settings.params.temperature == 0.5 and settings.params.top_k == 20 and settings.params.guidance == 2
    protocol.receive_text(json.dumps({"musicGenerationConfig": {"temperature": 0}}))
    assert protocol.settings().params.top_k == 1  # temperature 0: deterministic


def test_playback_controls():
    protocol = ready()
    for control in lp.PLAYBACK:
        assert protocol.receive_text(json.dumps({"playbackControl": control})) == lp.Playback(control)


def test_audio_chunk_message_format():
    import base64

    message = json.loads(lp.audio_chunk_message(b"\x01\x00\x02\x00", lp.Prompts(("a",), (1.0,)),
                                                lp.GenerationConfig(seed=3)))
    chunk = message["serverContent"]["audioChunks"][0]
    assert base64.b64decode(chunk["data"]) == b"\x01\x00\x02\x00"
    assert chunk["mimeType"] == "audio/l16;rate=48000;channels=2"
    assert chunk["sourceMetadata"]["clientContent"]["weightedPrompts"] == [{"text": "a", "weight": 1.0}]
    assert chunk["sourceMetadata"]["musicGenerationConfig"]["seed"] == 3

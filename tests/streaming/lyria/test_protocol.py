"""The BidiGenerateMusic protocol state machine, without sockets or a model."""

import json

import pytest

from streaming.lyria import protocol as lp


def ready() -> lp.LyriaProtocol:
    protocol = lp.LyriaProtocol()
    actions = protocol.receive_text(json.dumps({"setup": {"model": "models/lyria-realtime-exp"}}))
    assert actions == [lp.Send((json.dumps({"setupComplete": {}}),))]
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
    (send,) = protocol.receive_text(prompts(("minimal techno", 3.0), ("", 1.0), ("piano", 1.0)))
    assert json.loads(send.messages[0])["filteredPrompt"]["text"] == ""
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
    warning = json.loads(first[0].messages[0])["warning"]
    for name in ("bpm", "scale", "density", "brightness", "muteDrums", "musicGenerationMode"):
        assert name in warning
    again = protocol.receive_text(json.dumps({"musicGenerationConfig": {"bpm": 100}}))
    assert again[0].messages == ()
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


def test_play_before_prompts_waits_for_them_then_starts():
    protocol = ready()
    (send,) = protocol.receive_text(json.dumps({"playbackControl": "PLAY"}))
    assert "PLAY before weightedPrompts" in json.loads(send.messages[0])["warning"]
    actions = protocol.receive_text(prompts(("dub", 1.0)))
    assert [type(a) for a in actions] == [lp.Send, lp.StartSession]
    assert actions[1].settings.styles == ("dub",) and actions[1].seed is None


def test_playback_state_machine():
    protocol = ready()
    protocol.receive_text(json.dumps({"musicGenerationConfig": {"seed": 9}}))
    assert protocol.receive_text(prompts(("dub", 1.0))) == [lp.Send(())]  # not playing: nothing starts
    (start,) = protocol.receive_text(json.dumps({"playbackControl": "PLAY"}))
    assert isinstance(start, lp.StartSession) and start.seed == 9
    steer = protocol.receive_text(prompts(("techno", 1.0)))
    assert isinstance(steer[-1], lp.UpdateSession) and steer[-1].settings.styles == ("techno",)
    assert protocol.receive_text(json.dumps({"playbackControl": "PAUSE"})) == [lp.PauseSession()]
    assert protocol.receive_text(json.dumps({"playbackControl": "PLAY"})) == [lp.ResumeSession()]
    # a new context on the same session (and slot), still playing; paused, it stays paused
    assert protocol.receive_text(json.dumps({"playbackControl": "RESET_CONTEXT"})) == \
        [lp.RestartSession(seed=9, play=True)]
    assert protocol.receive_text(json.dumps({"playbackControl": "PAUSE"})) == [lp.PauseSession()]
    assert protocol.receive_text(json.dumps({"playbackControl": "RESET_CONTEXT"})) == \
        [lp.RestartSession(seed=9, play=False)]
    assert protocol.receive_text(json.dumps({"playbackControl": "PLAY"})) == [lp.ResumeSession()]
    assert protocol.receive_text(json.dumps({"playbackControl": "STOP"})) == [lp.EndSession()]
    assert protocol.receive_text(json.dumps({"playbackControl": "STOP"})) == []
    assert protocol.prompts.texts == ("techno",)  # STOP keeps prompts and config
    (again,) = protocol.receive_text(json.dumps({"playbackControl": "PLAY"}))
    assert isinstance(again, lp.StartSession)


def test_after_a_generation_failure_play_starts_a_fresh_session():
    protocol = ready()
    protocol.receive_text(prompts(("dub", 1.0)))
    protocol.receive_text(json.dumps({"playbackControl": "PLAY"}))
    end, warning = protocol.session_failed("decode step failed")  # the session goes before the client hears
    assert "generation failed: decode step failed" in json.loads(warning.messages[0])["warning"]
    assert end == lp.EndSession() and not protocol.playing
    (start,) = protocol.receive_text(json.dumps({"playbackControl": "PLAY"}))
    assert isinstance(start, lp.StartSession)


def test_the_engine_check_refuses_prompts_before_anything_changes():
    def check(settings):
        if any("long" in style for style in settings.styles):
            raise ValueError("600 text tokens; the text encoder takes at most 512")

    protocol = lp.LyriaProtocol(check_settings=check)
    protocol.receive_text(json.dumps({"setup": {"model": "m"}}))
    protocol.receive_text(prompts(("short", 1.0)))
    with pytest.raises(lp.LyriaFatal, match="at most 512"):
        protocol.receive_text(prompts(("very long", 1.0)))
    assert protocol.prompts.texts == ("short",)


@pytest.mark.parametrize("message", [
    json.dumps({"musicGenerationConfig": {"seed": 10**400}}),
    '{"musicGenerationConfig": {"topK": ' + "9" * 5000 + "}}",
    prompts(("a", 10**400)),
    prompts(*[("x", 1.0)] * 5),
    prompts(("x" * 5000, 1.0)),
])
def test_numbers_and_prompts_of_any_size_are_refused_with_a_reason(message):
    with pytest.raises(lp.LyriaFatal) as caught:
        ready().receive_text(message)
    assert caught.value.code == lp.CLOSE_INVALID


def test_chunks_are_packed_as_48k_stereo_pcm_seamlessly():
    import base64

    import numpy as np
    import torch

    from engine.api import Chunk

    protocol = ready()
    protocol.receive_text(prompts(("a", 1.0)))
    rate, seconds, overlap = 32000, 0.5, 0.025
    t = torch.arange(int(rate * (4 * seconds + overlap))) / rate
    tone = 0.5 * torch.sin(2 * np.pi * 440 * t)[None]
    pcm = []
    for i in range(4):
        start = int(i * seconds * rate)
        chunk = Chunk(index=i, audio=tone[:, start: start + int((seconds + overlap) * rate)], sample_rate=rate,
                      seconds=seconds, overlap_seconds=overlap, generation_seconds=0.1,
                      frames=torch.zeros(4, 25, dtype=torch.long), settings=protocol.settings())
        message = json.loads(protocol.chunk_message(chunk))["serverContent"]["audioChunks"][0]
        assert message["mimeType"] == "audio/l16;rate=48000;channels=2"
        pcm.append(np.frombuffer(base64.b64decode(message["data"]), "<i2").reshape(-1, 2))
    assert all(len(p) == 24000 for p in pcm)  # 0.5 s at 48 kHz, no overlap sent
    left = np.concatenate(pcm)[:, 0] / 32767
    expected = 0.5 * np.sin(2 * np.pi * 440 * np.arange(len(left)) / 48000)
    assert np.abs(left[200:-200] - expected[200:-200]).max() < 0.01  # continuous across chunk boundaries


def test_audio_chunk_message_format():
    import base64

    message = json.loads(lp.audio_chunk_message(b"\x01\x00\x02\x00", lp.Prompts(("a",), (1.0,)),
                                                lp.GenerationConfig(seed=3)))
    chunk = message["serverContent"]["audioChunks"][0]
    assert base64.b64decode(chunk["data"]) == b"\x01\x00\x02\x00"
    assert chunk["mimeType"] == "audio/l16;rate=48000;channels=2"
    assert chunk["sourceMetadata"]["clientContent"]["weightedPrompts"] == [{"text": "a", "weight": 1.0}]
    assert chunk["sourceMetadata"]["musicGenerationConfig"]["seed"] == 3


def test_setup_complete_tells_the_session_id_the_recording_is_under():
    protocol = lp.LyriaProtocol(session_id="r1.abc")
    actions = protocol.receive_text(json.dumps({"setup": {"model": "models/lyria-realtime-exp"}}))
    assert actions == [lp.Send((json.dumps({"setupComplete": {"sessionId": "r1.abc"}}),))]

"""The BidiGenerateMusic protocol state machine, without sockets or a model."""

import json

import pytest
import torch

from engine.api import Chunk
from streaming.lyria import protocol as lp


def ready() -> lp.LyriaProtocol:
    protocol = lp.LyriaProtocol()
    actions = protocol.receive_text(json.dumps({"setup": {"model": "models/lyria-realtime-exp"}}))
    assert actions == [lp.Send((json.dumps({"setupComplete": {}}),))]
    return protocol


def prompts(*pairs):
    return json.dumps({"clientContent": {"weightedPrompts": [{"text": t, "weight": w} for t, w in pairs]}})


def config(**fields) -> str:
    return json.dumps({"musicGenerationConfig": fields})


def control(name: str) -> str:
    return json.dumps({"playbackControl": name})


def audio(protocol: lp.LyriaProtocol) -> dict:
    """The next audio message the protocol sends: 1 s of silence made with the settings in force now."""
    rate = 32000
    chunk = Chunk(index=0, audio=torch.zeros(1, int(rate * 1.025)), sample_rate=rate, seconds=1.0,
                  overlap_seconds=0.025, generation_seconds=0.1, frames=torch.zeros(4, 50, dtype=torch.long),
                  settings=protocol.settings())
    return json.loads(protocol.chunk_message(chunk))


def reported_seed(message: dict):
    return message["serverContent"]["audioChunks"][0]["sourceMetadata"]["musicGenerationConfig"].get("seed")


def test_setup_must_come_first_and_once():
    with pytest.raises(lp.LyriaFatal, match="clientContent before setup"):
        lp.LyriaProtocol().receive_text(prompts(("x", 1)))
    protocol = ready()
    with pytest.raises(lp.LyriaFatal, match="already received"):
        protocol.receive_text(json.dumps({"setup": {"model": "models/lyria-realtime-exp"}}))
    with pytest.raises(lp.LyriaFatal, match="setup.model"):
        lp.LyriaProtocol().receive_text(json.dumps({"setup": {}}))


def test_weighted_prompts_are_normalised_and_empty_ones_filtered():
    protocol = ready()
    assert protocol.receive_text(prompts(("minimal techno", 3.0), ("", 1.0), ("piano", 1.0))) == []
    assert protocol.prompts == lp.Prompts(("minimal techno", "piano"), (0.75, 0.25))
    told = audio(protocol)  # the filtered prompt rides on the next audio message
    assert told["filteredPrompt"] == {"text": "", "filteredReason": "empty prompt: it was removed"}
    assert "filteredPrompt" not in audio(protocol)  # told once


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
    assert protocol.receive_text(config(bpm=90, scale="D_MAJOR_B_MINOR", density=0.1, brightness=0.9,
                                        muteDrums=True, musicGenerationMode="VOCALIZATION")) == []
    warning = audio(protocol)["warning"]
    for name in ("bpm", "scale", "density", "brightness", "muteDrums", "musicGenerationMode"):
        assert name in warning
    protocol.receive_text(config(bpm=100))
    assert "warning" not in audio(protocol)
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
    assert protocol.receive_text(control("PLAY")) == []
    (start,) = protocol.receive_text(prompts(("dub", 1.0)))
    assert isinstance(start, lp.StartSession)
    assert start.settings.styles == ("dub",) and start.seed is None
    assert "PLAY came before weightedPrompts" in audio(protocol)["warning"]


def test_playback_state_machine():
    protocol = ready()
    protocol.receive_text(json.dumps({"musicGenerationConfig": {"seed": 9}}))
    assert protocol.receive_text(prompts(("dub", 1.0))) == []  # not playing: nothing starts
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


def test_a_generation_failure_is_told_with_the_restarted_streams_first_chunk():
    protocol = ready()
    protocol.receive_text(config(seed=9))
    protocol.receive_text(prompts(("dub", 1.0)))
    protocol.receive_text(control("PLAY"))
    protocol.generation_failed("decode step failed", restarting=True)
    first = audio(protocol)
    assert "generation failed: decode step failed" in first["warning"]
    assert reported_seed(first) is None  # the restart's seed is the server's, not the 9 the client sent
    protocol.generation_failed("again", restarting=False)  # given up: the connection closes with the reason
    protocol.session_ended()
    assert not protocol.playing and not protocol.has_session
    (start,) = protocol.receive_text(control("PLAY"))
    assert isinstance(start, lp.StartSession) and start.seed == 9


def test_the_engine_check_refuses_prompts_before_anything_changes():
    def check(settings):
        if any("long" in style for style in settings.styles):
            raise ValueError("600 text tokens; the text encoder takes at most 512")

    protocol = lp.LyriaProtocol(check_settings=check)
    protocol.receive_text(json.dumps({"setup": {"model": "models/lyria-realtime-exp"}}))
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


@pytest.mark.parametrize(("seed", "engine_seed"), [
    (-2**31, 2**31), (-1, 2**32 - 1), (0, 0), (7, 7), (2**31 - 1, 2**31 - 1)])
def test_every_int32_seed_is_a_seed(seed, engine_seed):
    """Lyria's seed is an int32: each one is a distinct engine seed (two's complement), reported as sent."""
    protocol = ready()
    protocol.receive_text(config(seed=seed))
    protocol.receive_text(prompts(("dub", 1.0)))
    (start,) = protocol.receive_text(control("PLAY"))
    assert start.seed == engine_seed
    assert reported_seed(audio(protocol)) == seed


@pytest.mark.parametrize("seed", [-2**31 - 1, 2**31])
def test_seeds_beyond_int32_are_refused(seed):
    with pytest.raises(lp.LyriaFatal, match=r"seed must be within \[-2147483648, 2147483647\]"):
        ready().receive_text(config(seed=seed))


def test_a_seed_sent_mid_session_applies_at_reset_context_and_the_metadata_says_so():
    protocol = ready()
    protocol.receive_text(config(seed=3, temperature=0.9))
    protocol.receive_text(prompts(("dub", 1.0)))
    protocol.receive_text(control("PLAY"))
    assert reported_seed(audio(protocol)) == 3
    assert protocol.receive_text(config(seed=-4, temperature=0.9)) == []  # the stream does not change
    held = audio(protocol)
    assert reported_seed(held) == 3  # what made this chunk, not what was asked for
    assert "seed -4 applies to a fresh context: send RESET_CONTEXT" in held["warning"]
    assert "seed 3" in held["warning"]
    (steer,) = protocol.receive_text(config(seed=-4, temperature=0.5))  # no new notice for the same seed
    assert isinstance(steer, lp.UpdateSession) and "warning" not in audio(protocol)
    assert protocol.receive_text(control("RESET_CONTEXT")) == [lp.RestartSession(seed=2**32 - 4, play=True)]
    assert reported_seed(audio(protocol)) == -4
    protocol.receive_text(config(temperature=0.5))  # seed unset: a server's seed from the next fresh context
    assert reported_seed(audio(protocol)) == -4
    protocol.receive_text(control("STOP"))
    (start,) = protocol.receive_text(control("PLAY"))
    assert start.seed is None and reported_seed(audio(protocol)) is None


def test_every_message_after_setup_is_one_google_genai_reads_as_audio():
    """google-genai parses each server message as a LiveMusicServerMessage, dropping keys it does not know: a
    notice must ride beside serverContent, so that `message.server_content.audio_chunks[0]` (Google's example)
    holds on every message, while a raw client reads the warning in the same message."""
    from google.genai import types

    protocol = ready()
    protocol.receive_text(control("PLAY"))
    protocol.receive_text(prompts(("", 1.0), ("   ", 1.0)))
    protocol.receive_text(prompts(("dub", 1.0), ("", 2.0)))
    protocol.receive_text(config(bpm=90, scale="C_MAJOR_A_MINOR", density=0.5, brightness=0.5, muteDrums=True))
    protocol.notify("this server is draining")
    raw = [audio(protocol) for _ in range(4)]
    told = raw[0]["warning"].split("\n")  # each notice on a line of its own, once
    assert [line.split(":")[0] for line in told] == ["PLAY came before weightedPrompts", "no usable prompt",
                                                      "bpm, density, brightness, scale, muteDrums",
                                                      "this server is draining"]
    assert all("warning" not in m for m in raw[1:])
    assert [m.get("filteredPrompt", {}).get("text") for m in raw] == ["", "   ", "", None]  # one a message
    for message in raw:
        parsed = types.LiveMusicServerMessage._from_response(response=message, kwargs={})
        assert parsed.server_content.audio_chunks[0].data
        assert (parsed.filtered_prompt is None) == ("filteredPrompt" not in message)


def test_notices_waiting_for_audio_are_bounded():
    """A stopped client that keeps sending what must be told holds at most MAX_PENDING of each, the newest."""
    protocol = ready()
    for seed in range(3 * lp.MAX_PENDING):
        protocol.receive_text(prompts(("", 1.0)))
        protocol.notify(f"notice {seed}")
    protocol.receive_text(prompts(("dub", 1.0)))
    told = [audio(protocol) for _ in range(lp.MAX_PENDING + 1)]
    assert told[0]["warning"].split("\n")[-1] == f"notice {3 * lp.MAX_PENDING - 1}"
    assert len(told[0]["warning"].split("\n")) == lp.MAX_PENDING
    assert sum("filteredPrompt" in m for m in told) == lp.MAX_PENDING

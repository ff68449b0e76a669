"""gary4juce against a real sidecar over HTTP: the plugin's own sequence (health, models, process_audio, poll,
continue_music, retry_music) with a client written from its request code (tests/support/gary_clients.py), the audio
decoded back and checked against the continuation semantics; bad input, the queue, the model routes, JAM_TOKEN."""

import threading

import numpy as np
import pytest
import requests
import torch

from streaming import formats as audio
from tests.support.gary_clients import JuceClient, PluginGaveUp, decode_b64, wav_b64
from tests.support.helpers import offline_decode
from tests.support.servers import start_server

RATE = 44100
PROMPT = 4
MATCH_DB = 70


@pytest.fixture
def juce(server):
    return JuceClient(f"http://127.0.0.1:{server.port}")


def recording(seconds: float = 8.0, rate: int = RATE) -> np.ndarray:
    """A stereo 'recording' whose halves differ (loud noise, then rising tones different per channel), at
    16-bit-exact values."""
    t = np.arange(int(seconds * rate)) / rate
    left = 0.3 * np.sin(2 * np.pi * (200 * t + 40 * t ** 2))
    right = 0.25 * np.sin(2 * np.pi * (300 * t + 25 * t ** 2) + 0.5)
    samples = np.stack([left, right], axis=1)
    half = len(t) // 2
    samples[:half] = np.clip(0.5 * np.random.default_rng(0).standard_normal((half, 2)), -1, 1)
    return np.round(samples * 32767) / 32768


def scaled_snr_db(reference: np.ndarray, test: np.ndarray) -> float:
    """SNR of `test` against `reference` after the best gain (the output is scaled down when it would clip). The
    demo's random-weight decoder makes similar audio of any tokens: a wrong slice still scores ~50 dB, the right
    one ~85 dB (16-bit output, streaming decode), hence MATCH_DB."""
    gain = float(np.dot(reference.ravel(), test.ravel()) / max(np.dot(reference.ravel(), reference.ravel()), 1e-20))
    noise = np.mean((test - gain * reference) ** 2)
    return 10 * np.log10(np.mean((gain * reference) ** 2) / max(noise, 1e-20))


def redecoded(engine, piece: np.ndarray, rate: int) -> np.ndarray:
    """`piece` [samples, channels] as the codec re-decodes it, back at `rate`: what an output starts with."""
    wav = torch.from_numpy(piece.T.copy()).float()
    tokens = engine.codec_worker.call(lambda: engine.runtime.encode_now(wav, rate)).result()
    decoded = audio.resample(offline_decode(engine, tokens), engine.model.sample_rate, rate)
    return decoded.numpy().T


def test_health_satisfies_both_gary_tabs_and_keeps_our_fields(juce):
    assert juce.backend_online()
    assert juce.darius_connected() == (True, True)
    body = requests.get(juce.base + "/health", timeout=5).json()
    assert {"sessions", "max_sessions", "connections", "max_connections", "model"} <= set(body)
    assert body["model"]["lm_dim"] == 32


@pytest.mark.slow  # four 30 s generations: ~25 s here
def test_the_plugin_sequence_process_continue_retry(juce, engine):
    assert juce.model_paths() == ["demo"]
    source = recording()
    started = juce.process_audio(wav_b64(source, RATE), "demo", PROMPT)
    assert started["success"] and 0 <= started["seed"] <= 99999
    first_b64, polls = juce.poll_until_done(started["session_id"])
    progress = [p["progress"] for p in polls]
    assert progress == sorted(progress) and any(0 < p < 100 for p in progress)
    assert all(p["queue_status"].get("status") for p in polls) and polls[-1]["generation_seed"] == started["seed"]
    first, rate = decode_b64(first_b64)
    assert rate == RATE and first.shape == (30 * RATE, 2)  # 30 s in all, at the input's rate and channels
    head = int((PROMPT - 0.3) * RATE)  # the slice's last frames also depend on what follows them
    expected = redecoded(engine, source[:PROMPT * RATE], RATE)
    assert scaled_snr_db(expected[:head], first[:head, :1]) >= MATCH_DB

    cont = juce.continue_music(first_b64, "demo", PROMPT, seed=7)
    assert cont["success"] and cont["seed"] == 7
    second_b64, _ = juce.poll_until_done(cont["session_id"])
    second, rate = decode_b64(second_b64)
    keep = (30 - PROMPT) * RATE
    assert second.shape == (keep + 30 * RATE, 2)  # the input without its prompt, then 30 s
    assert np.array_equal(second[:keep], first[:keep])  # what it keeps, sample for sample
    expected = redecoded(engine, first[keep:, :1], RATE)
    assert scaled_snr_db(expected[:head], second[keep:keep + head, :1]) >= MATCH_DB

    same = juce.retry_music(cont["session_id"], "demo", PROMPT, seed=7)
    assert same["success"] and same["session_id"] != cont["session_id"]
    assert juce.poll_until_done(same["session_id"])[0] == second_b64  # from the stored input: the same take
    other = juce.retry_music(same["session_id"], "demo", PROMPT)  # a retry of a retry, a new random seed
    third, _ = decode_b64(juce.poll_until_done(other["session_id"])[0])
    assert other["seed"] != 7 and third.shape == second.shape
    assert np.array_equal(third[:keep], first[:keep]) and not np.array_equal(third[keep:], second[keep:])


def test_process_prompts_with_the_start_and_continue_with_the_end(juce, engine):
    """Slices whose re-decodes differ (noise, then tones): each output starts with its own slice."""
    source, head = recording(), int((PROMPT - 0.3) * RATE)
    start, end = (redecoded(engine, piece, RATE)[:head] for piece in (source[:PROMPT * RATE],
                                                                     source[-PROMPT * RATE:]))
    for call, own, other, offset in ((juce.process_audio, start, end, 0),
                                     (juce.continue_music, end, start, len(source) - PROMPT * RATE)):
        output, _ = decode_b64(juce.poll_until_done(call(wav_b64(source, RATE), "demo", PROMPT)["session_id"])[0])
        prompt = output[offset:offset + head, :1]
        assert scaled_snr_db(own, prompt) >= MATCH_DB > scaled_snr_db(other, prompt) + 10


@pytest.mark.parametrize(("change", "field"), [
    ({"audio_data": "not base64!"}, "audio_data is not valid base64"),
    ({"audio_data": "aGVsbG8gd29ybGQ="}, "audio_data: Could not read"),
    ({"prompt_duration": 9}, "prompt_duration (9 s) is longer than audio_data"),
    ({"prompt_duration": 30}, "prompt_duration must be within [1, 29]"),
    ({"prompt_duration": 2.5}, "prompt_duration must be an integer"),
    ({"top_k": "many"}, "top_k must be an integer"),
    ({"cfg_coef": [3]}, "cfg_coef must be a number"),
    ({"seed": -2}, "seed must be within"),
    ({"description": 5}, "description must be a string"),
    ({"model_name": "thepatch/bleeps-large-6"}, "this server has one checkpoint, 'demo'"),
    ({"model_name": None}, "model_name is required"),
])
def test_bad_input_names_the_field_and_loses_nothing(juce, change, field):
    body = {"model_name": "demo", "prompt_duration": 2, "audio_data": wav_b64(recording(8.0), RATE),
            "top_k": 250, "temperature": 1.0, "cfg_coef": 3.0, "description": "", "seed": -1, **change}
    response = requests.post(juce.base + "/api/juce/process_audio", json=body, timeout=30)
    assert response.status_code == 400 and response.json()["success"] is False
    assert field in response.json()["error"]
    assert requests.get(juce.base + "/health", timeout=5).json()["sessions"] == 0


def test_unknown_sessions_and_bodies_are_refused_with_the_field(juce):
    retry = requests.post(juce.base + "/api/juce/retry_music", json={"session_id": "nope", "prompt_duration": 2,
                                                                   "model_name": "demo"}, timeout=10)
    assert retry.status_code == 404 and "session_id 'nope' has no stored input" in retry.json()["error"]
    poll = requests.get(juce.base + "/api/juce/poll_status/nope", timeout=10)
    assert poll.status_code == 404 and poll.json()["success"] is False
    broken = requests.post(juce.base + "/api/juce/process_audio", data=b"{not json", timeout=10,
                           headers={"Content-Type": "application/json"})  # without it: 415 (test_guard.py)
    assert broken.status_code == 400 and "not valid JSON" in broken.json()["error"]
    with pytest.raises(PluginGaveUp, match="unknown"):
        juce.poll_until_done("nope")


def test_jobs_queue_with_a_real_position_and_estimate(juce):
    clip = wav_b64(recording(6.0), RATE)
    ids = [juce.process_audio(clip, "demo", 2, seed=s)["session_id"] for s in (1, 2)]
    second = requests.get(f"{juce.base}/api/juce/poll_status/{ids[1]}", timeout=10).json()
    assert second["generation_in_progress"] and second["queue_status"]["status"] == "queued"
    assert second["queue_status"]["position"] == 1 and second["queue_status"]["estimated_seconds"] > 0
    results = {}
    threads = [threading.Thread(target=lambda i=i: results.update({i: juce.poll_until_done(i)[0]})) for i in ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert set(results) == set(ids) and results[ids[0]] != results[ids[1]]


def test_darius_model_routes_answer_for_the_loaded_checkpoint(juce):
    config = requests.get(juce.base + "/model/config", timeout=10).json()
    assert (config["size"], config["repo"], config["loaded"], config["warmup_done"]) == ("small", "demo", True, True)
    assert requests.get(juce.base + "/model/assets/status", timeout=10).json()["mean_loaded"] is False
    steps = requests.get(juce.base + "/model/checkpoints", params={"repo_id": "thepatch/magenta-ft",
                                                                   "revision": "main"}, timeout=10).json()
    assert steps["steps"] == [] and steps["latest"] is None
    same = {"size": "small", "step": "none", "sync_assets": False, "prewarm": True, "stop_active": True,
            "dry_run": False}
    assert requests.post(juce.base + "/model/select", json=same, timeout=10).json()["ok"] is True
    other = {**same, "size": "large", "repo_id": "thepatch/magenta-ft", "step": "latest"}
    refused = requests.post(juce.base + "/model/select", json=other, timeout=10).json()
    assert refused["ok"] is False and "'demo'" in refused["error"]


def test_jam_token_applies_to_the_gary_routes(engine):
    running = start_server(engine, token="s3cret")
    try:
        base = f"http://127.0.0.1:{running.port}"
        assert requests.get(base + "/api/models", timeout=5).status_code == 401
        assert requests.post(base + "/api/juce/process_audio", json={}, timeout=5).status_code == 401
        assert requests.get(base + "/model/config", timeout=5).status_code == 401
        assert requests.get(base + "/api/models", params={"token": "s3cret"}, timeout=5).json()["success"]
        assert requests.get(base + "/api/models", headers={"Authorization": "Bearer s3cret"}, timeout=5).ok
        assert requests.get(base + "/health", timeout=5).ok  # liveness stays open, as before
    finally:
        running.stop()


def test_a_draining_replica_refuses_new_jobs(demo_dir):
    """On an engine of its own: a drain closes the engine's admission for good."""
    from engine.config import EngineConfig
    from engine.core import Engine

    own = Engine.load(demo_dir, device="cpu", config=EngineConfig(max_sessions=1))
    running = start_server(own, drain_seconds=1)
    try:
        juce = JuceClient(f"http://127.0.0.1:{running.port}")
        assert requests.post(juce.base + "/admin/drain", timeout=10).ok
        refused = requests.post(juce.base + "/api/juce/process_audio", timeout=10, json={
            "model_name": "demo", "prompt_duration": 2, "audio_data": wav_b64(recording(4.0), RATE)})
        assert refused.status_code == 503 and "draining" in refused.json()["error"]
    finally:
        running.stop()
        own.close()

"""The predictor served by Cog's real HTTP server (coglet): schema, validation, files in and out, async, cancel."""

import base64
import re
import time

import pytest
import requests

from tests.support.cog_server import predict, wait_ready
from tests.support.helpers import data_uri_bytes, decode_wav, sine_wav
from tests.support.webhooks import wait_final, wait_for, webhook_receiver

SEED_FIELDS = ["prompt", "input_audio", "duration", "continuation", "continuation_start", "continuation_end",
               "multi_band_diffusion", "normalization_strategy", "top_k", "top_p", "temperature",
               "classifier_free_guidance", "output_format", "seed"]


@pytest.fixture
def webhook():
    """A local webhook receiver: yields (url, queue of received prediction payloads)."""
    with webhook_receiver() as receiver:
        yield receiver


def test_health_check_is_ready_and_openapi_has_the_replicate_inputs(cog):
    assert requests.get(f"{cog.url}/health-check", timeout=5).json()["status"] == "READY"
    schema = requests.get(f"{cog.url}/openapi.json", timeout=5).json()
    properties = schema["components"]["schemas"]["Input"]["properties"]
    assert sorted(properties, key=lambda name: properties[name]["x-order"]) == SEED_FIELDS
    assert properties["normalization_strategy"]["enum"] == ["loudness", "clip", "peak", "rms"]
    assert schema["components"]["schemas"]["Output"]["format"] == "uri"


def test_sync_prediction_returns_a_wav_of_the_requested_length(cog):
    started = time.monotonic()
    response = predict(cog, prompt="lo-fi beat", duration=2, seed=5)
    waited = time.monotonic() - started
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "succeeded", body.get("error")
    mime, data = data_uri_bytes(body["output"])
    assert mime == "audio/wav"
    samples, rate, subtype = decode_wav(data)
    assert rate == 32000 and subtype == "PCM_16"
    assert samples.shape == (2 * 32000, 1)
    assert "Using seed 5" in body["logs"]
    assert "generated" in body["logs"] and "/ " in body["logs"]  # progress lines
    metrics = body["metrics"]
    assert metrics["audio_seconds"] == 2.0
    assert 0 < metrics["generation_seconds"] <= waited
    assert metrics["real_time_factor"] == pytest.approx(metrics["generation_seconds"] / 2.0, abs=1e-3)
    from engine.lm.precision import choose_weight_format

    assert body["metrics"]["weight_format"] == choose_weight_format("auto", "cpu")[0]  # chosen for this CPU


def test_same_seed_over_http_is_byte_identical(cog):
    first = predict(cog, prompt="techno", duration=1, seed=123).json()["output"]
    second = predict(cog, prompt="techno", duration=1, seed=123).json()["output"]
    assert first == second


def test_mp3_output_decodes(cog, tmp_path):
    body = predict(cog, prompt="rock", duration=2, seed=1, output_format="mp3").json()
    assert body["status"] == "succeeded", body.get("error")
    mime, data = data_uri_bytes(body["output"])
    assert mime == "audio/mpeg"
    path = tmp_path / "out.mp3"
    path.write_bytes(data)
    from engine.codec.input_audio import decode

    wav, rate = decode(path)
    assert rate == 32000 and abs(wav.shape[-1] / rate - 2.0) < 0.1


@pytest.mark.parametrize(("inputs", "field"), [
    ({"prompt": "x", "normalization_strategy": "loudest"}, "normalization_strategy"),
    ({"prompt": "x", "duration": 301}, "duration"),
    ({"prompt": "x", "top_k": "many"}, "top_k"),
    ({"prompt": "x", "output_format": "flac"}, "output_format"),
])
def test_invalid_inputs_get_422_naming_the_field(cog, inputs, field):
    response = predict(cog, **inputs)
    assert response.status_code == 422, response.text
    assert field in response.text


def test_missing_prompt_and_audio_fails_clearly_and_worker_stays_healthy(cog):
    body = predict(cog, duration=1).json()
    assert body["status"] == "failed"
    assert "Give a prompt, an input_audio, or both" in body["error"]
    assert predict(cog, prompt="ok", duration=1, seed=1).json()["status"] == "succeeded"


def test_input_audio_as_data_uri_continues_the_clip(cog, tmp_path):
    clip = sine_wav(tmp_path / "clip.wav", seconds=3.0, rate=44100)
    uri = "data:audio/wav;base64," + base64.b64encode(clip.read_bytes()).decode()
    body = predict(cog, prompt="jazz", input_audio=uri, continuation=True, continuation_start=1, duration=1,
                   seed=2).json()
    assert body["status"] == "succeeded", body.get("error")
    samples, rate, _ = decode_wav(data_uri_bytes(body["output"])[1])
    assert samples.shape[0] == 3 * rate  # 2 s slice + 1 s new


def test_input_audio_as_http_url(cog, file_server):
    base, directory = file_server
    sine_wav(directory / "loop.wav", seconds=2.0)
    body = predict(cog, input_audio=f"{base}/loop.wav", continuation=True, duration=1, seed=2).json()
    assert body["status"] == "succeeded", body.get("error")
    samples, rate, _ = decode_wav(data_uri_bytes(body["output"])[1])
    assert samples.shape[0] == 3 * rate


def test_bad_continuation_slice_fails_with_a_message(cog, tmp_path):
    clip = sine_wav(tmp_path / "clip.wav", seconds=2.0)
    uri = "data:audio/wav;base64," + base64.b64encode(clip.read_bytes()).decode()
    body = predict(cog, prompt="x", input_audio=uri, continuation=True, continuation_start=5, duration=1).json()
    assert body["status"] == "failed"
    assert "past the end of input_audio" in body["error"]


def test_async_prediction_with_webhook(cog, webhook):
    url, events = webhook
    wait_ready(cog)
    response = requests.post(f"{cog.url}/predictions", headers={"Prefer": "respond-async"}, timeout=10,
                             json={"input": {"prompt": "disco", "duration": 1, "seed": 9}, "webhook": url})
    assert response.status_code == 202, response.text
    final = wait_final(events)
    assert final["status"] == "succeeded"
    samples, rate, _ = decode_wav(data_uri_bytes(final["output"])[1])
    assert samples.shape[0] == rate


def test_cancel_mid_generation_then_next_prediction_succeeds(cog, webhook):
    url, events = webhook
    prediction_id = "cancel-me"
    wait_ready(cog)
    response = requests.put(f"{cog.url}/predictions/{prediction_id}", headers={"Prefer": "respond-async"},
                            timeout=10, json={"input": {"prompt": "endless", "duration": 300, "seed": 1},
                                              "webhook": url})
    assert response.status_code == 202, response.text
    # well into generation: the predictor has logged its progress ("generated N / M steps", N > 0)
    wait_for(events, lambda event: re.search(r"generated [1-9]\d* / ", event.get("logs") or ""), "with progress", 60)
    cancelled_at = time.monotonic()
    assert requests.post(f"{cog.url}/predictions/{prediction_id}/cancel", timeout=10).status_code == 200
    final = wait_final(events, timeout=60)
    assert final["status"] == "canceled"
    assert time.monotonic() - cancelled_at < 10
    body = predict(cog, prompt="after", duration=1, seed=1).json()
    assert body["status"] == "succeeded", body.get("error")

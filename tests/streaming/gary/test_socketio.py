"""gary4live against a real sidecar: a python-socketio client doing what the Max for Live device does
(tests/support/gary_clients.py, from gary4live's commentedout.js), over the websocket transport only."""

import numpy as np
import pytest
import requests
import socketio

from tests.support.gary_clients import Gary4LiveClient, decode_b64, wav_b64
from tests.support.helpers import wait_until
from tests.support.servers import start_server

RATE = 32000
PROMPT = 2
DONE = ("audio_processed", "music_continued", "music_retried", "error")


@pytest.fixture
def base(server):
    return f"http://127.0.0.1:{server.port}"


@pytest.fixture
def live(base):
    client = Gary4LiveClient(base)
    yield client
    client.close()


def clip(seconds: float = 6.0) -> str:
    t = np.arange(int(seconds * RATE)) / RATE
    return wav_b64(0.3 * np.sin(2 * np.pi * (220 * t + 30 * t ** 2)), RATE)


def test_process_continue_retry_as_the_device_does(live, base):
    bystander = Gary4LiveClient(base)
    try:
        live.process(clip(), "demo", PROMPT)
        name, processed, before = live.wait_for(DONE)
        assert name == "audio_processed", processed
        progress = [data["progress"] for event, data in before if event == "progress_update"]
        assert progress == sorted(progress) and any(0 < p < 100 for p in progress)
        first, rate = decode_b64(processed["audio_data"])
        assert rate == RATE and first.shape == (30 * RATE, 1)

        live.continue_music(processed["audio_data"], "demo", processed["session_id"], PROMPT)
        name, continued, _ = live.wait_for(DONE)
        assert name == "music_continued" and continued["session_id"] != processed["session_id"]
        second, _ = decode_b64(continued["audio_data"])
        keep = (30 - PROMPT) * RATE
        assert second.shape == (keep + 30 * RATE, 1) and np.array_equal(second[:keep], first[:keep])

        live.retry(continued["session_id"], "demo", PROMPT)
        name, retried, _ = live.wait_for(DONE)
        assert name == "music_retried"
        third, _ = decode_b64(retried["audio_data"])
        assert third.shape == second.shape and np.array_equal(third[:keep], first[:keep])
        assert not np.array_equal(third[keep:], second[keep:])  # a new seed
        assert bystander.events.empty()  # results go to the requesting client only
    finally:
        bystander.close()


@pytest.mark.parametrize(("change", "field"), [
    ({"audio_data": "%%%"}, "audio_data is not valid base64"),
    ({"prompt_duration": 7}, "prompt_duration (7 s) is longer than audio_data"),
    ({"prompt_duration": "6"}, "prompt_duration must be an integer"),
    ({"model_name": "thepatch/vanya_ai_dnb_0.1"}, "this server has one checkpoint, 'demo'"),
])
def test_bad_requests_get_an_error_event_naming_the_field(live, change, field):
    live.emit("process_audio_request", {"audio_data": clip(), "model_name": "demo", "prompt_duration": PROMPT,
                                        **change})
    name, data, _ = live.wait_for(DONE, timeout=30)
    assert name == "error" and field in data["message"]


def test_cropped_audio_is_what_a_continue_without_audio_continues(live):
    live.process(clip(), "demo", PROMPT)
    _, processed, _ = live.wait_for(DONE)
    cropped = clip(5.0)
    live.emit("update_cropped_audio", {"session_id": processed["session_id"], "audio_data": cropped})
    name, data, _ = live.wait_for(["update_cropped_audio_complete", "error"], timeout=30)
    assert name == "update_cropped_audio_complete" and data["session_id"] == processed["session_id"]
    live.emit("continue_music_request", {"session_id": processed["session_id"], "model_name": "demo",
                                         "prompt_duration": PROMPT})
    name, continued, _ = live.wait_for(DONE)
    assert name == "music_continued", continued
    assert decode_b64(continued["audio_data"])[0].shape[0] == (5 - PROMPT + 30) * RATE


def test_cleanup_forgets_the_session(live):
    live.continue_music(clip(), "demo", None, PROMPT)
    _, continued, _ = live.wait_for(DONE)
    live.emit("cleanup_session_request", {"session_id": continued["session_id"]})
    live.retry(continued["session_id"], "demo", PROMPT)
    name, data, _ = live.wait_for(DONE, timeout=30)
    assert name == "error" and "has no stored input" in data["message"]


def test_a_second_client_is_told_its_place_in_the_queue(live, base):
    other = Gary4LiveClient(base)
    try:
        live.process(clip(), "demo", PROMPT)
        live.wait_for(["progress_update"], timeout=30)
        other.process(clip(), "demo", PROMPT)
        _, place, _ = other.wait_for(["queue_status"], timeout=30)
        assert place["position"] == 1 and place["estimated_seconds"] > 0 and place["total_queued"] == 1
        assert live.wait_for(DONE)[0] == "audio_processed" and other.wait_for(DONE)[0] == "audio_processed"
    finally:
        other.close()


def test_a_client_that_leaves_mid_job_frees_the_engine(base, server, engine):
    client = Gary4LiveClient(base)
    client.process(clip(), "demo", PROMPT)
    client.wait_for(["progress_update"], timeout=30)
    client.close()
    assert wait_until(lambda: server.jobs.counts()["running"] == 0 and engine.rows_in_use == 0, 2, 0.05)
    assert requests.get(base + "/health", timeout=5).json()["status"] == "ready"


def test_jam_token_is_required_to_connect(engine):
    running = start_server(engine, token="s3cret")
    base = f"http://127.0.0.1:{running.port}"
    try:
        with pytest.raises(socketio.exceptions.ConnectionError):
            Gary4LiveClient(base)
        Gary4LiveClient(base, auth={"token": "s3cret"}).close()
    finally:
        running.stop()


def test_socketio_clients_count_against_the_connection_cap(engine):
    running = start_server(engine, max_connections=1)
    base = f"http://127.0.0.1:{running.port}"
    try:
        first = Gary4LiveClient(base)
        assert requests.get(base + "/health", timeout=5).json()["connections"] == 1
        with pytest.raises(socketio.exceptions.ConnectionError):
            Gary4LiveClient(base)
        first.close()
        assert wait_until(lambda: requests.get(base + "/health", timeout=5).json()["connections"] == 0, 5, 0.05)
        Gary4LiveClient(base).close()
    finally:
        running.stop()

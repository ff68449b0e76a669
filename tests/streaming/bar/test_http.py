"""magenta-retry's HTTP API on the sidecar, driven as its clients drive it: `/generate` + `/progress` exactly as
gary4juce's Darius tab sends them (Source/PluginEditor.cpp: makeGenerateURL, pollDariusProgress: a multipart
POST with `loop_audio` and text fields, `request_id` polled every 250 ms), and the `/jam/*` routes as
docs/api_http.md of magenta-rt shows them."""

import base64
import io
import math
import threading
import time
import uuid

import numpy as np
import pytest
import requests
import soundfile as sf

from tests.support.servers import start_server


def base(server):
    return f"http://127.0.0.1:{server.port}/"


def loop_wav(seconds=4.0, rate=44100, channels=2):
    t = np.arange(int(seconds * rate)) / rate
    tone = 0.3 * np.sin(2 * math.pi * 220 * t) * (1 + np.sin(2 * math.pi * 2 * t)) / 2
    buffer = io.BytesIO()
    sf.write(buffer, np.stack([tone] * channels, axis=1), rate, subtype="PCM_16", format="WAV")
    return buffer.getvalue()


def darius_fields(request_id, bpm=120.0, bars=4, **extra):
    """makeGenerateURL's parameters, formatted as JUCE formats them (juce::String(double, 3))."""
    fields = {"bpm": f"{bpm:.3f}", "bars": str(bars), "beats_per_bar": "4", "styles": "acid house, techno",
              "style_weights": "1.0,0.5", "loop_weight": f"{0.5:.3f}", "guidance_weight": f"{5.0:.3f}",
              "temperature": f"{1.2:.3f}", "topk": "40", "loudness_mode": "none", "loudness_headroom_db": "1.0",
              "intro_bars_to_drop": "0", "request_id": request_id}
    return {**fields, **extra}


def poll_progress(url, request_id, seen, stop):
    """pollDariusProgress: GET progress?request_id= every 250 ms until stage done/error or percent >= 100."""
    while not stop.is_set():
        answer = requests.get(url + "progress", params={"request_id": request_id}, timeout=10).json()
        seen.append(answer)
        if answer.get("stage") in ("done", "error") or answer.get("percent", 0) >= 100:
            return
        time.sleep(0.25)


@pytest.mark.parametrize("bpm, bars, rate", [(120.0, 4, 44100), (93.5, 2, 48000)])
def test_generate_and_progress_as_gary4juce(server, bpm, bars, rate):
    request_id = uuid.uuid4().hex  # juce::Uuid().toString(): 32 hex digits
    seen, stop = [], threading.Event()
    poller = threading.Thread(target=poll_progress, args=(base(server), request_id, seen, stop))
    poller.start()
    try:
        answer = requests.post(base(server) + "generate", data=darius_fields(request_id, bpm, bars),
                               files={"loop_audio": ("gary_output.wav", loop_wav(rate=rate), "audio/wav")},
                               timeout=180)
    finally:
        poller.join(timeout=30)
        stop.set()
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["request_id"] == request_id
    samples, got_rate = sf.read(io.BytesIO(base64.b64decode(body["audio_base64"])), dtype="float32",
                                always_2d=True)
    expected = round(bars * 60 * 4 / bpm * rate)  # the loop's rate: no target_sample_rate was sent
    assert got_rate == rate and samples.shape == (expected, 2)
    meta = body["metadata"]
    assert meta["total_samples"] == expected and meta["sample_rate"] == rate and meta["bars"] == bars
    assert meta["bpm"] == round(bpm) and meta["loop_weight"] == 0.5 and meta["styles"] == ["acid house", "techno"]
    assert abs(meta["seconds_per_bar"] - 240 / bpm) < 1e-9 and "noise" in meta["notice"]
    assert np.abs(samples).max() > 0
    # the poller saw it from pending/queued through generating to done, percent never going down
    assert seen and seen[-1]["stage"] == "done" and seen[-1]["percent"] == 100
    percents = [s["percent"] for s in seen]
    assert percents == sorted(percents)
    final = requests.get(base(server) + "progress", params={"request_id": request_id}, timeout=10).json()
    assert final == {"n": 100, "total": 100, "percent": 100, "stage": "done"}


def test_generate_target_rate_and_dropped_intro(server):
    answer = requests.post(base(server) + "generate",
                           data=darius_fields("r-" + uuid.uuid4().hex, 173.0, 3, target_sample_rate="32000",
                                              intro_bars_to_drop="1", loudness_mode="auto"),
                           files={"loop_audio": ("loop.wav", loop_wav(seconds=2.0), "audio/wav")}, timeout=180)
    assert answer.status_code == 200, answer.text
    samples, rate = sf.read(io.BytesIO(base64.b64decode(answer.json()["audio_base64"])), always_2d=True)
    assert rate == 32000 and samples.shape[0] == round(3 * 60 * 4 / 173 * 32000)
    assert answer.json()["metadata"]["loudness"]["method"] in ("lufs", "rms")


def test_progress_of_an_unknown_id_is_pending(server):
    assert requests.get(base(server) + "progress", params={"request_id": "nobody"}, timeout=10).json() == \
        {"percent": 0, "stage": "pending"}


@pytest.mark.parametrize("fields, files, status, word", [
    ({"bars": "4"}, True, 400, "bpm"),
    ({"bpm": "120", "topk": "lots"}, True, 400, "topk"),
    ({"bpm": "120", "loudness_mode": "loud"}, True, 400, "loudness_mode"),
    ({"bpm": "120"}, False, 400, "loop_audio"),
    ({"bpm": "30", "bars": "8", "intro_bars_to_drop": "16"}, True, 400, "intro_bars_to_drop"),
])
def test_generate_refuses_bad_input_naming_the_field(server, fields, files, status, word):
    upload = {"loop_audio": ("loop.wav", loop_wav(seconds=1.0), "audio/wav")} if files else \
        {"other": ("x.txt", b"x", "text/plain")}
    answer = requests.post(base(server) + "generate", data=fields, files=upload, timeout=60)
    assert answer.status_code == status and word in answer.json()["detail"], answer.text


def test_generate_of_a_file_that_is_not_audio_fails_with_progress_error(server):
    request_id = uuid.uuid4().hex
    answer = requests.post(base(server) + "generate", data={"bpm": "120", "request_id": request_id},
                           files={"loop_audio": ("loop.wav", b"not audio at all", "audio/wav")}, timeout=60)
    assert answer.status_code == 400 and "loop_audio" in answer.json()["detail"]
    progress = requests.get(base(server) + "progress", params={"request_id": request_id}, timeout=10).json()
    assert progress["stage"] == "error" and progress["percent"] == 100


def test_generate_inside_cog(cog):
    """The Darius tab pointed at the Cog container's sidecar port: the same /generate, on Cog's own worker."""
    url = cog.jam_url.replace("ws://", "http://").replace("/ws/jam", "/")
    request_id = uuid.uuid4().hex
    answer = requests.post(url + "generate", data=darius_fields(request_id, 120.0, 2),
                           files={"loop_audio": ("gary_output.wav", loop_wav(), "audio/wav")}, timeout=180)
    assert answer.status_code == 200, answer.text
    samples, rate = sf.read(io.BytesIO(base64.b64decode(answer.json()["audio_base64"])), always_2d=True)
    assert rate == 44100 and samples.shape[0] == round(2 * 60 * 4 / 120 * 44100)
    assert requests.get(url + "progress", params={"request_id": request_id}, timeout=10).json()["stage"] == "done"


def test_jam_token_guards_the_bar_routes(engine):
    running = start_server(engine, token="s3cret")
    try:
        url = f"http://127.0.0.1:{running.port}/"
        for method, path in [("post", "generate"), ("get", "progress"), ("post", "jam/start"), ("get", "jam/next"),
                             ("get", "jam/status"), ("post", "jam/consume")]:
            assert getattr(requests, method)(url + path, timeout=10).status_code == 401, path
        allowed = requests.get(url + "progress", params={"request_id": "x"}, timeout=10,
                               headers={"Authorization": "Bearer s3cret"})
        assert allowed.json() == {"percent": 0, "stage": "pending"}
    finally:
        running.stop()

"""The gary API's pure parts: field rules and defaults, retry's inherited parameters, output assembly at any rate
and channel count, what a poll shows at each state, and the bounds of the stored inputs."""

import random

import pytest
import torch

from streaming.gary import protocol as gp
from streaming.jobs.table import COMPLETED, QUEUED, RUNNING, JobStatus


def status(state, stage=None, progress=0.0, position=None, estimate=10.0, result=None, error=None):
    return JobStatus(job_id="j", owner=None, state=state, stage=stage or state, progress=progress,
                     position=position, estimated_seconds=estimate, error=error, result=result, submitted=0.0,
                     finished=None)


def test_defaults_are_the_reference_backends_and_nulls_mean_default():
    params = gp.parse_params({"model_name": "demo", "prompt_duration": 6, "top_k": None, "description": "",
                              "seed": -1, "some_future_field": [1]})
    assert params == gp.GaryParams(model_name="demo", prompt_duration=6, top_k=250, temperature=1.0, cfg_coef=3.0,
                                   description=None, seed=None)
    seeded = gp.with_seed(params, random.Random(1))
    assert 0 <= seeded.seed <= 99999 and gp.with_seed(seeded, random.Random(2)) == seeded
    assert gp.parse_params({"model_name": "m", "prompt_duration": 6.0, "seed": 0}).seed == 0  # 0 is a seed


def test_a_retry_keeps_what_it_does_not_change():
    stored = gp.GaryParams(model_name="demo", prompt_duration=4, top_k=100, cfg_coef=5.0, description="drums",
                           seed=7)
    again = gp.parse_params({"session_id": "s", "top_k": 150}, base=stored)
    assert (again.prompt_duration, again.top_k, again.cfg_coef, again.description, again.seed) == \
        (4, 150, 5.0, "drums", None)  # a retry draws a new seed unless one is given


@pytest.mark.parametrize(("body", "message"), [
    ([], "JSON object"), ({"prompt_duration": 4}, "model_name is required"),
    ({"model_name": "m"}, "prompt_duration is required"), ({"model_name": "m", "prompt_duration": True},
                                                           "prompt_duration must be an integer"),
    ({"model_name": "m", "prompt_duration": 4, "temperature": float("nan")}, "temperature must be a number"),
    ({"model_name": "m", "prompt_duration": 4, "top_k": 10**30}, "top_k must be within"),
])
def test_field_errors_name_the_field(body, message):
    with pytest.raises(gp.GaryError, match=message):
        gp.parse_params(body)


@pytest.mark.parametrize(("channels", "rate"), [(1, 32000), (2, 44100), (2, 48000), (1, 22050)])
def test_outputs_are_at_the_inputs_rate_and_channels(channels, rate):
    wav = torch.rand(channels, 10 * rate) * 0.5
    generated = torch.rand(1, 30 * 32000) * 4 - 2  # would clip
    processed = gp.assemble(gp.PROCESS, wav, rate, 4, generated, 32000)
    assert processed.shape == (channels, 30 * rate) and processed.abs().max() <= 1.0
    continued = gp.assemble(gp.CONTINUE, wav, rate, 4, generated, 32000)
    assert continued.shape == (channels, 6 * rate + 30 * rate)
    assert torch.equal(continued[:, :6 * rate], wav[:, :6 * rate])  # the kept input, untouched
    assert torch.equal(gp.prompt_slice(gp.CONTINUE, wav, rate, 4), wav[:, 6 * rate:])
    assert torch.equal(gp.prompt_slice(gp.PROCESS, wav, rate, 4), wav[:, :4 * rate])


def test_a_poll_always_says_what_is_happening():
    queued = gp.poll_response(status(QUEUED, position=0, estimate=42.4), seed=3, queued_total=1)
    assert queued["generation_in_progress"] and queued["queue_status"]["status"] == "queued"
    assert (queued["queue_status"]["position"], queued["queue_status"]["estimated_seconds"]) == (1, 42)
    waiting = gp.poll_response(status(RUNNING, stage="waiting for a prediction slot", position=2), seed=3,
                               queued_total=0)
    assert waiting["queue_status"]["status"] == "queued" and waiting["queue_status"]["position"] == 3
    assert waiting["queue_status"]["message"] == "waiting for a prediction slot: 2 predictions ahead"
    running = gp.poll_response(status(RUNNING, stage="generating", progress=0.456), seed=3, queued_total=0)
    assert running["progress"] == 45 and running["queue_status"]["status"] == "processing"
    done = gp.poll_response(status(COMPLETED, result={"audio_data": "UklG"}, estimate=None), seed=3,
                            queued_total=0)
    assert (done["status"], done["audio_data"], done["progress"], done["generation_in_progress"]) == \
        ("completed", "UklG", 100, False)
    failed = gp.poll_response(status("failed", error="boom", estimate=None), seed=3, queued_total=0)
    assert (failed["status"], failed["error"], failed["generation_in_progress"]) == ("failed", "boom", False)


def test_stored_inputs_are_bounded_in_count_bytes_and_time():
    now = [0.0]
    store = gp.InputStore(max_entries=3, max_bytes=4000, keep_seconds=60, clock=lambda: now[0])
    params = gp.GaryParams(model_name="m", prompt_duration=1)

    def entry(samples):
        return gp.StoredInput(gp.CONTINUE, bytes(4 * samples), params, now[0])  # 4 bytes a float sample

    for key in "abcd":
        store.put(key, entry(10))
    assert len(store) == 3 and store.get("a") is None  # the oldest went first
    store.put("big", entry(900))  # 3600 bytes: the others must make room
    assert store.held_bytes() <= 4000 and store.get("big") is not None
    store.put("huge", entry(2000))  # alone over the bound: not kept at all
    assert store.get("huge") is None
    shared = entry(100)
    store.put("retry-1", shared)
    store.put("retry-2", shared)  # a chain of retries shares its input: counted once
    assert store.held_bytes() == 400 + (3600 if store.get("big") else 0)
    now[0] = 61
    assert store.get("retry-1") is None and len(store) == 0


def test_session_ids_and_audio_read_null_or_empty_as_absent():
    assert gp.session_id({"session_id": ""}, required=False) is None and gp.session_id([], required=False) is None
    assert gp.audio_bytes({"audio_data": "UklGRg=="}) == b"RIFF"
    assert gp.audio_bytes({"audio_data": None}, required=False) is None
    for read, error in [(lambda: gp.session_id({}), "^session_id is required"),
                        (lambda: gp.session_id({"session_id": 5}), "^session_id must be a string"),
                        (lambda: gp.session_id({"session_id": "x" * 129}), "^session_id is longer than 128"),
                        (lambda: gp.audio_bytes({"audio_data": ""}), "^audio_data is required"),
                        (lambda: gp.audio_bytes({"audio_data": 5}), "^audio_data must be a base64 string of an audio")]:
        with pytest.raises(gp.GaryError, match=error):
            read()


def test_descriptions_are_stripped_and_a_retry_cannot_empty_the_model_name():
    assert gp.parse_params({"model_name": "m", "prompt_duration": 4, "description": "  drums "}).description == \
        "drums"
    assert gp.parse_params({"model_name": "m", "prompt_duration": 4, "description": "   "}).description is None
    stored = gp.GaryParams(model_name="demo", prompt_duration=4)
    with pytest.raises(gp.GaryError, match="^model_name is required"):
        gp.parse_params({"model_name": ""}, base=stored)
    with pytest.raises(gp.GaryError, match="^model_name must be a string"):
        gp.parse_params({"model_name": 5, "prompt_duration": 4})

"""train.py on Cog's own server in train mode (`--x-mode train`, COG_TRAIN_TYPE_STUB, /trainings): the fine-tuner's
inputs, a 3-clip dataset trained end to end, its output served by predict.py's setup, cancel, and bad datasets
refused with the problem named."""

import base64
import time
import uuid

import pytest
import requests

from tests.support.cog_server import CogServer, predict, wait_ready
from tests.support.datasets import clip_dataset
from tests.support.helpers import data_uri_bytes
from tests.support.webhooks import wait_final, wait_for, webhook_receiver

FINE_TUNER_INPUTS = ["dataset_path", "auto_labeling", "drop_vocals", "one_same_description", "epochs",
                     "updates_per_epoch", "batch_size", "optimizer", "lr", "lr_scheduler", "warmup", "cfg_p"]
OURS = ["method", "lora_rank", "lora_alpha", "seed"]
QUICK = {"auto_labeling": False, "epochs": 1, "updates_per_epoch": 12, "batch_size": 3, "optimizer": "adamw",
         "lr": 0.03, "warmup": 2, "seed": 3}


@pytest.fixture(scope="module")
def trainer(venv_env, demo_dir):
    server = CogServer(venv_env, {"COG_TRAIN_TYPE_STUB": "train.py:train"}, args=("--x-mode", "train"))
    server.start()
    yield server
    server.stop()


def data_uri(path) -> str:
    return "data:application/octet-stream;base64," + base64.b64encode(path.read_bytes()).decode()


def train(server: CogServer, timeout: float = 600, **inputs) -> requests.Response:
    wait_ready(server)
    return requests.post(f"{server.url}/trainings", json={"input": inputs}, timeout=timeout)


def test_the_training_schema_has_the_fine_tuners_inputs_and_ours(trainer):
    schema = requests.get(f"{trainer.url}/openapi.json", timeout=5).json()
    properties = schema["components"]["schemas"]["TrainingInput"]["properties"]
    assert sorted(properties, key=lambda name: properties[name]["x-order"]) == FINE_TUNER_INPUTS + OURS
    assert properties["optimizer"]["enum"] == ["dadam", "adamw"] and properties["method"]["default"] == "lora"
    assert {"/trainings", "/trainings/{training_id}", "/trainings/{training_id}/cancel"} <= set(schema["paths"])


@pytest.mark.parametrize("field,value", [("epochs", 0), ("batch_size", 65), ("cfg_p", 2.0)])
def test_out_of_range_settings_are_422(trainer, tmp_path, field, value):
    response = train(trainer, dataset_path=data_uri(clip_dataset(tmp_path)), **{field: value})
    assert response.status_code == 422 and field in response.text


@pytest.mark.parametrize("make,expected", [
    (lambda tmp: (tmp / "notes.pdf", b"%PDF-1.4"), "is not a zip, tar or tar.gz archive nor an audio file"),
    (lambda tmp: (tmp / "bad.zip", None), "no caption for clip0.wav, clip1.wav, clip2.wav"),
])
def test_a_bad_dataset_fails_the_training_naming_the_problem_and_the_server_trains_on(trainer, tmp_path, make,
                                                                                      expected):
    path, content = make(tmp_path)
    if content is None:
        path = clip_dataset(tmp_path, "bad.zip", captions=False)
    else:
        path.write_bytes(content)
    body = train(trainer, dataset_path=data_uri(path), **QUICK).json()
    assert body["status"] == "failed" and expected in body["error"], body.get("error")
    assert requests.get(f"{trainer.url}/health-check", timeout=5).json()["status"] == "READY"


def test_cancel_stops_a_training(trainer, tmp_path):
    with webhook_receiver() as (url, events):
        cancel_mid_training(trainer, tmp_path, url, events)


def cancel_mid_training(trainer, tmp_path, url, events) -> None:
    training_id = f"train-{uuid.uuid4().hex[:8]}"
    wait_ready(trainer)
    inputs = dict(QUICK, dataset_path=data_uri(clip_dataset(tmp_path)), updates_per_epoch=10000)
    response = requests.put(f"{trainer.url}/trainings/{training_id}", json={"input": inputs, "webhook": url},
                            headers={"Prefer": "respond-async"}, timeout=30)
    assert response.status_code == 202, response.text
    wait_for(events, lambda event: "update " in (event.get("logs") or ""), "with a training update", 120)
    assert requests.post(f"{trainer.url}/trainings/{training_id}/cancel", timeout=10).status_code == 200
    final = wait_final(events, timeout=120)
    assert final["status"] == "canceled"
    assert "update 10000/10000" not in final.get("logs", "")
    wait_ready(trainer, timeout=60)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["lora", "full"])
def test_a_3_clip_dataset_trains_end_to_end_and_its_output_serves(trainer, venv_env, tmp_path, method):
    started = time.monotonic()
    body = train(trainer, dataset_path=data_uri(clip_dataset(tmp_path)), method=method, **QUICK).json()
    seconds = time.monotonic() - started
    assert body["status"] == "succeeded", body.get("error")
    logs = body["logs"]
    assert "3 segments" in logs and "tokens/s" in logs and "ETA" in logs
    _, weights = data_uri_bytes(body["output"]["weights"])
    path = tmp_path / ("adapter.safetensors" if method == "lora" else "trained_model.th")
    path.write_bytes(weights)
    print(f"{method}: trained through /trainings in {seconds:.1f} s, output {len(weights) / 1e3:.0f} kB")
    server = CogServer(venv_env, {"COG_WEIGHTS": str(path), "JAM_PORT": "0"})
    server.start()
    try:
        response = predict(server, prompt="a pure tone at 220 hz", duration=1, seed=1)
        assert response.json()["status"] == "succeeded", response.json().get("error")
        setup_logs = requests.get(f"{server.url}/health-check", timeout=5).json()["setup"]["logs"]
        if method == "lora":
            assert "merged LoRA adapter adapter.safetensors" in setup_logs
    finally:
        server.stop()

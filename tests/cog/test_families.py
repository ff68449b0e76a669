"""Melody and stereo checkpoints through Cog's real server on predict.py (COG_WEIGHTS names the demo family)."""

import pytest

from tests.support.cog_server import CogServer, predict
from tests.support.families import melody_file
from tests.support.helpers import convert, data_uri_bytes, decode_wav

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def family_server(venv_env, demo_family):
    """kind -> a running Cog server on that demo family."""
    servers = {}

    def get(kind: str) -> CogServer:
        if kind not in servers:
            servers[kind] = CogServer(venv_env, {"COG_WEIGHTS": str(demo_family(kind)), "JAM_PORT": "0"}).start()
        return servers[kind]

    yield get
    for server in servers.values():
        server.stop()


def output(body: dict):
    assert body["status"] == "succeeded", body.get("error")
    return decode_wav(data_uri_bytes(body["output"])[1])[0]


def test_melody_predictions_are_reproducible_and_follow_the_melody(family_server, file_server):
    base, directory = file_server
    cog = family_server("melody")
    melody_file(directory / "a.wav")
    melody_file(directory / "b.wav", freqs=(220.0, 330.0, 247.0))
    runs = [predict(cog, prompt="piano", input_audio=f"{base}/{name}", duration=2, seed=5).json()
            for name in ("a.wav", "a.wav", "b.wav")]
    assert runs[0]["output"] == runs[1]["output"]  # same melody, prompt and seed: the same bytes
    assert runs[0]["output"] != runs[2]["output"]  # another melody: other music
    assert output(runs[0]).shape == (64000, 1)
    assert output(predict(cog, prompt="text alone works too", duration=1, seed=1).json()).shape == (32000, 1)


@pytest.mark.parametrize("suffix", ["mp3", "flac", "ogg", "m4a"])
def test_melody_inputs_in_every_accepted_format(family_server, file_server, suffix):
    base, directory = file_server
    convert(melody_file(directory / "m.wav"), directory / f"m.{suffix}")
    body = predict(family_server("melody"), prompt="piano", input_audio=f"{base}/m.{suffix}", duration=1,
                   seed=2).json()
    assert output(body).shape == (32000, 1)


def test_a_melody_beyond_one_window_follows_the_windowed_extension(family_server, file_server):
    base, directory = file_server
    melody_file(directory / "a.wav")
    body = predict(family_server("melody"), prompt="piano", input_audio=f"{base}/a.wav", duration=32,
                   seed=5).json()
    assert output(body).shape == (32 * 32000, 1)


def test_stereo_outputs_have_two_distinct_channels_and_mbd_says_why_not(family_server):
    cog = family_server("stereo")
    samples = output(predict(cog, prompt="wide", duration=2, seed=1).json())
    assert samples.shape == (64000, 2)
    assert abs(samples[:, 0] - samples[:, 1]).max() > 1e-3
    body = predict(cog, prompt="wide", duration=1, multi_band_diffusion=True).json()
    assert body["status"] == "failed" and "MultiBand Diffusion is trained on mono" in body["error"]

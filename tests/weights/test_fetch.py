"""weights.fetch knows every published MusicGen family; offline it fails at once with its clear message."""

import os
import subprocess
import sys

import pytest

from tests.support import ROOT
from weights.fetch import FAMILIES


def _fetch(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_ENDPOINT="http://127.0.0.1:9", PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "weights.fetch", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)


def test_every_published_family_is_named_with_what_it_needs():
    assert set(FAMILIES) == {"small", "medium", "large", "melody", "melody-large", "stereo-small", "stereo-medium",
                             "stereo-large", "stereo-melody", "stereo-melody-large"}
    listing = _fetch("--list").stdout
    assert "facebook/musicgen-stereo-melody-large + t5-base + htdemucs\n" in listing
    assert "facebook/musicgen-melody + t5-base + htdemucs (+ MBD with --mbd)" in listing
    assert "facebook/musicgen-stereo-small + t5-base\n" in listing


@pytest.mark.parametrize("model", ["stereo-melody"])
def test_fetch_of_a_new_family_offline_fails_with_the_clear_message(model):
    result = _fetch("--model", model)
    assert result.returncode == 1
    assert "Cannot reach the Hugging Face hub" in result.stderr and "use the demo checkpoint" in result.stderr
    assert not (ROOT / "weights" / f"musicgen-{model}").exists()


def test_mbd_is_refused_for_stereo_before_any_download():
    result = _fetch("--model", "stereo-small", "--mbd")
    assert result.returncode == 1
    assert "MultiBand Diffusion decodes mono audio" in result.stderr

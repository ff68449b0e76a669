"""The image build's Python steps, replayed as Cog 0.23.1 emits them into an externally managed Python, give an
image whose predictor imports and serves a prediction (scripts/rehearse_image.py)."""

import importlib.util

import pytest

from tests.support import ROOT


@pytest.mark.slow
@pytest.mark.timeout(1800)  # installs the image's packages, then up to 600 s each to start and to predict
def test_the_rehearsed_image_installs_imports_and_predicts(tmp_path):
    spec = importlib.util.spec_from_file_location("rehearse_image", ROOT / "scripts" / "rehearse_image.py")
    rehearse = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rehearse)
    python, env = rehearse.replay_build(tmp_path)
    assert not str(python).startswith(str(ROOT)), "the image Python is not this checkout's .venv"
    rehearse.copy_source(tmp_path / "src")
    assert not (tmp_path / "src" / "weights" / "demo").exists()
    figures = rehearse.serve_one_prediction(python, env, tmp_path / "src")
    assert figures["cog_torch_cuda"].split() == ["0.23.1", "2.14.1+cu130", "13.0"]
    assert figures["demo_built_at_boot"]
    assert figures["seconds"] == pytest.approx(2.0, abs=0.05) and figures["sample_rate"] == 32000

"""The prepared GPU check runs end to end on this CPU (`--device cpu --tiny`), importing only what the GPU
machine's image and the carried wheels give it (benchmarks.gpu.bare_image), so that a lease fails only on GPU things."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ROOT


def _wheel_names() -> set[str]:
    from benchmarks.gpu.bare_image import names

    return names(ROOT / "benchmarks" / "gpu" / "wheels.txt")


@pytest.mark.slow  # ~20 s idle, ~35 s on a busy 2-core machine
@pytest.mark.timeout(600)  # the check itself is given 400 s
def test_the_gpu_check_runs_on_the_cpu_with_only_the_carried_wheels(tmp_path: Path, demo_dir, venv_env):
    out = tmp_path / "gpu_check.json"
    done = subprocess.run([sys.executable, "-m", "benchmarks.gpu.bare_image", "benchmarks.gpu.check", "--device", "cpu",
                           "--tiny", "--out", str(out)], cwd=ROOT, env=venv_env, capture_output=True, text=True,
                          timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    sections = report["sections"]
    failed = {name: section.get("error") for name, section in sections.items() if not section.get("ok")}
    assert not failed, failed
    assert report["finished"] and report["device"] == "cpu"
    environment = sections["environment"]
    assert environment["stand_ins"] == {"xformers": True, "spacy": True, "av": True}
    assert all(environment["carried_wheels"].values()), environment["carried_wheels"]
    tests = sections["cuda_tests"]
    assert tests["tests"] >= 5 and tests["skipped_tests"] == tests["tests"]  # no CUDA here: collected, all skipped
    tiny = sections["tiny"]
    assert tiny["prediction"]["steps_per_second"] > 0 and tiny["prediction"]["runs"][0]["audio_finite"]
    assert tiny["stock_audiocraft"]["steps_per_second"] > 0
    assert set(tiny["sessions"]["by_count"]) == {"1", "2"}
    for figures in tiny["sessions"]["by_count"].values():
        assert figures["audio_seconds_per_wall_second"] > 0 and figures["first_chunk_seconds_max"] > 0
    assert tiny["step"]["static_eager_steps_per_second"] > 0


def test_the_bare_image_refuses_what_the_gpu_machine_lacks(venv_env, tmp_path: Path):
    """The simulation is real: a package of ours that is in neither list cannot be imported through it."""
    program = "import pytest\ntry:\n    import starlette\nexcept ModuleNotFoundError as e:\n    print('refused', e)\n"
    (tmp_path / "refusal_probe.py").write_text(program)
    env = {**venv_env, "PYTHONPATH": os.pathsep.join(p for p in (str(tmp_path), venv_env.get("PYTHONPATH", "")) if p)}
    done = subprocess.run([sys.executable, "-m", "benchmarks.gpu.bare_image", "refusal_probe"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert "refused" in done.stdout and "benchmarks/gpu/wheels.txt" in done.stdout, done.stdout + done.stderr


def test_the_wheel_list_is_what_the_fetch_script_and_the_docs_name():
    names = _wheel_names()
    assert {"audiocraft", "omegaconf", "julius", "librosa", "soundfile"} <= names
    assert not names & {"xformers", "spacy", "av", "torch", "torchaudio"}  # stand-ins, or the machine's own
    guide = (ROOT / "docs" / "development.md").read_text()
    assert "scripts/fetch_gpu_wheels.sh" in guide and "benchmarks/gpu_check.sh" in guide


def test_on_a_cpu_the_codec_thread_keeps_the_default_stream(engine):
    """The codec thread's own CUDA stream (engine.runtime.worker._on_stream) is a CUDA thing: a CPU engine makes none,
    and its jobs run as they always did (tests/engine/test_cuda.py covers the stream)."""
    assert engine.codec_worker.stream is None and engine.lm_worker.stream is None

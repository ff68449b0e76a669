"""Checkpoint loading: the two accepted layouts, refusal of pickled code, and the offline fetch message."""

import os
import shutil
import subprocess
import sys

import pytest
import torch

from engine.loading.checkpoint import resolve
from engine.loading.safe_load import CheckpointError, safe_load
from tests.support import ROOT


class _Exploit:
    """Unpickling this would run a shell command; a safe loader must refuse it."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_checkpoint_with_pickled_callable_is_refused(demo_dir, tmp_path):
    marker = tmp_path / "pwned"
    pkg = safe_load(demo_dir / "state_dict.bin")
    pkg["payload"] = _Exploit(str(marker))
    evil = tmp_path / "evil"
    shutil.copytree(demo_dir, evil)
    torch.save(pkg, evil / "state_dict.bin")

    from engine.loading.checkpoint import load_lm

    with pytest.raises(CheckpointError, match=r"Refusing to load .*not allowed: .*system"):
        load_lm(evil / "state_dict.bin", "cpu")
    assert not marker.exists()


def test_engine_load_of_a_malicious_checkpoint_reports_the_problem(demo_dir, tmp_path):
    evil = tmp_path / "evil"
    shutil.copytree(demo_dir, evil)
    torch.save({"xp.cfg": "{}", "best_state": {}, "x": _Exploit(str(tmp_path / "pwned"))}, evil / "state_dict.bin")
    from engine.core import Engine

    with pytest.raises(CheckpointError, match="Refusing to load"):
        Engine.load(evil, device="cpu")


def test_fine_tuner_single_file_loads_and_matches_release_layout(engine, demo_dir, tmp_path):
    """{'xp.cfg': DictConfig, 'model': lm_state} beside nothing else: codec from the default checkpoint."""
    from omegaconf import OmegaConf

    from engine.config import EngineConfig
    from engine.core import Engine
    from engine.work.batch import BatchRequest

    release = safe_load(demo_dir / "state_dict.bin")
    fine_tuned = tmp_path / "finetune" / "musicgen-finetuned.th"
    fine_tuned.parent.mkdir()
    torch.save({"xp.cfg": OmegaConf.create(release["xp.cfg"]), "model": release["best_state"]}, fine_tuned)

    files = resolve(fine_tuned)
    assert files.lm == fine_tuned and files.codec == demo_dir / "compression_state_dict.bin"
    tuned = Engine.load(fine_tuned, device="cpu", config=EngineConfig(weight_format=engine.weight_format))
    try:
        request = BatchRequest(prompt="house", duration=1, seed=21)
        ours = tuned.generate(request).wait().wav
        reference = engine.generate(request).wait().wav
        assert torch.equal(ours, reference)
    finally:
        tuned.close()


def test_missing_checkpoint_names_the_fix(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist.*weights.demo"):
        resolve(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no state_dict.bin"):
        resolve(tmp_path / "empty")


def test_weights_archive_over_http_is_downloaded_and_loaded(demo_dir, tmp_path):
    """COG_WEIGHTS may be a URL: here a tarball of the demo served by a local HTTP server."""
    import functools
    import http.server
    import tarfile
    import threading

    archive = tmp_path / "served" / "demo.tar"
    archive.parent.mkdir()
    with tarfile.open(archive, "w") as tar:
        tar.add(demo_dir, arcname="demo")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(archive.parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        files = resolve(f"http://127.0.0.1:{server.server_address[1]}/demo.tar")
        assert files.lm.is_file() and files.codec.is_file() and files.mbd is not None
        assert files.lm.parent.name == "demo"
    finally:
        server.shutdown()


def test_fetch_offline_fails_with_a_clear_message():
    env = dict(os.environ, HF_ENDPOINT="http://127.0.0.1:9", PYTHONPATH=str(ROOT))
    result = subprocess.run([sys.executable, "-m", "weights.fetch", "--model", "small"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "Cannot reach the Hugging Face hub" in result.stderr
    assert "use the demo checkpoint" in result.stderr
    assert not (ROOT / "weights" / "musicgen-small").exists()

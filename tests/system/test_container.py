"""The container path as `cog build` users take it: a lean build context, and an image that starts on its own."""

import fnmatch
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support import ROOT
from tests.support.cog_server import CogServer


def _dockerignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip().lstrip("/").rstrip("/") for line in lines if line.strip() and not line.startswith("#")]


def _excluded(relative: str, patterns: list[str]) -> bool:
    """Docker's rule, as far as these patterns need it: a path is out when it or one of its parents matches."""
    parts = relative.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    return any(fnmatch.fnmatch(prefix, pattern) for prefix in prefixes for pattern in patterns)


def test_the_build_context_leaves_out_the_venv_and_caches():
    patterns = _dockerignore_patterns()
    for path in (".venv/lib/python3.11/site-packages/torch/lib/libtorch.so", ".git/objects/ab/cd",
                 "engine/__pycache__/core.cpython-311.pyc", "__pycache__/predict.cpython-311.pyc",
                 ".pytest_cache/v/cache", ".hypothesis/examples/x"):
        assert _excluded(path, patterns), path
    for path in ("predict.py", "cog.yaml", "engine/core.py", "weights/musicgen-small/state_dict.bin",
                 "requirements.txt", ".cog/openapi_schema.json"):
        assert not _excluded(path, patterns), path
    sent = 0
    for directory, names, files in os.walk(ROOT):
        relative_dir = os.path.relpath(directory, ROOT)
        names[:] = [n for n in names if not _excluded(os.path.normpath(os.path.join(relative_dir, n)), patterns)]
        sent += sum((Path(directory) / f).stat().st_size for f in files
                    if not _excluded(os.path.normpath(os.path.join(relative_dir, f)), patterns))
    assert sent < 100 * 2**20, f"the build context would be {sent / 2**20:.0f} MB"


@pytest.mark.slow
@pytest.mark.timeout(600)  # a copy of the tree whose server builds the demo checkpoint at boot (300 s allowed)
def test_an_image_without_a_checkpoint_starts_with_the_demo(venv_env, tmp_path):
    tree = tmp_path / "src"
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for name in files:  # what a fresh clone holds: no weights/demo, no weights/DEFAULT
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, tree / name)
    assert not (tree / "weights" / "demo").exists()
    server = CogServer(dict(venv_env, PYTHONPATH=str(tree)), {"JAM_PORT": "0"}, root=tree)
    server.start(timeout=300)
    try:
        log = server.log_path.read_text()
        assert "No checkpoint in weights/ and no COG_WEIGHTS: building the random-weight demo checkpoint" in log
        assert "noise, not music" in log
        assert (tree / "weights" / "demo" / "state_dict.bin").is_file()
    finally:
        server.stop()

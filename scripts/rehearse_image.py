"""Rehearses the image build's Python steps, as Cog 0.23.1's generator emits them, then serves one prediction.

No Docker engine runs here, so the image itself cannot be built; what can break in it is the Python part (an
installer refused by PEP 668, a pin that does not resolve, a wheel built from source under Cog's CFLAGS, an import
that fails without the dev tools). This replays exactly that part:

1. The image's Python: a CPython 3.11 outside any virtualenv, with pip, marked externally managed as uv-installed
   Pythons are (Cog's CUDA 13 base). `uv python install`, which the image uses, downloads from GitHub, which this
   machine cannot reach, so the interpreter is a copy of this machine's 3.11. A bare `pip install` is checked to be
   refused there; otherwise the rehearsal would prove nothing.
2. Cog's generated requirements file (tools.cog_rules.generated_requirements), then every command of
   tools.cog_rules.image_python_steps in order, by bash, with the image's environment: the image Python first on
   PATH, uv at Cog's version, UV_SYSTEM_PYTHON=true, Cog's CFLAGS around Cog's own lines.
3. The source as `COPY . /src` gives it (the files git tracks, no checkpoint), imported by the image Python; Cog's
   server started on it builds the demo checkpoint at first boot; one prediction, its WAV decoded back.

    .venv/bin/python scripts/rehearse_image.py --work /tmp/rehearsal     # ~4 min here, ~6 GB in --work
"""

import argparse
import base64
import io
import logging
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import requests
import soundfile as sf

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.cog_server import CogServer  # noqa: E402
from tools import cog_rules  # noqa: E402

logger = logging.getLogger("rehearse_image")
MARKER = ("[externally-managed]\n"
          "Error=This Python is managed by uv (Cog's image): use uv pip with --break-system-packages.\n")


def make_image_python(prefix: Path) -> Path:
    """A standalone copy of the running CPython (stdlib and interpreter, no site-packages), with pip, then marked
    externally managed; returns its `python3`."""
    base = Path(sys.base_prefix)
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    (prefix / "bin").mkdir(parents=True)
    shutil.copy2(base / "bin" / version, prefix / "bin" / version)
    for alias in ("python3", "python"):
        (prefix / "bin" / alias).symlink_to(version)
    shutil.copytree(base / "lib" / version, prefix / "lib" / version, symlinks=True,
                    ignore=shutil.ignore_patterns("site-packages", "test", "__pycache__"))
    for library in base.glob("lib/libpython3*"):
        shutil.copy2(library, prefix / "lib" / library.name, follow_symlinks=False)
    (prefix / "lib" / version / "site-packages").mkdir()
    python = prefix / "bin" / "python3"
    subprocess.run([str(python), "-m", "ensurepip", "--default-pip"], check=True, capture_output=True)
    stdlib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('stdlib'))"],
                            check=True, capture_output=True, text=True).stdout.strip()
    Path(stdlib, "EXTERNALLY-MANAGED").write_text(MARKER)
    return python


def image_environment(python: Path, work: Path) -> dict:
    """What the build's RUN lines see: the image Python and uv first on PATH (never this machine's .venv)."""
    uv = shutil.which("uv", path=sysconfig.get_path("scripts"))
    if uv is None:
        raise SystemExit("uv is not installed in this environment (requirements-dev.txt pins it): run setup.sh")
    tools = work / "uv-bin"
    tools.mkdir(exist_ok=True)
    for name in ("uv", "uvx"):
        link = tools / name
        if not link.exists():
            link.symlink_to(Path(uv).parent / name)
    env = {key: value for key, value in os.environ.items() if not key.startswith(("VIRTUAL_ENV", "PYTHON", "UV_"))}
    env.update(PATH=f"{python.parent}{os.pathsep}{tools}{os.pathsep}/usr/bin{os.pathsep}/bin",
               UV_SYSTEM_PYTHON="true", UV_PYTHON=str(python), PIP_DISABLE_PIP_VERSION_CHECK="1",
               HOME=os.environ.get("HOME", str(work)))
    return env


def run_step(command: str, env: dict, cwd: Path, cflags: bool) -> None:
    logger.info("RUN %s", command)
    step_env = dict(env, CFLAGS=cog_rules.CFLAGS) if cflags else env
    subprocess.run(["bash", "-euo", "pipefail", "-c", command], env=step_env, cwd=cwd, check=True)


def replay_build(work: Path) -> tuple[Path, dict]:
    """Steps 1 and 2; returns the image Python and its environment."""
    config = cog_rules.load_config()
    python = make_image_python(work / "python")
    env = image_environment(python, work)
    refused = subprocess.run(["pip", "install", "--no-index", "six"], env=env, capture_output=True, text=True)
    if refused.returncode == 0 or "externally-managed-environment" not in refused.stderr:
        raise SystemExit(f"the image Python is not externally managed, so this rehearsal would prove nothing:\n"
                         f"{refused.stderr}")
    tmp = work / "tmp"
    tmp.mkdir()
    requirements = tmp / "requirements.txt"
    requirements.write_text("\n".join(cog_rules.generated_requirements(config)) + "\n")
    steps = cog_rules.image_python_steps(config, str(requirements), pip_cache=str(work / "pip-cache"))
    cog_lines = 2  # the requirements and the SDK: Cog's own lines, with its CFLAGS; build.run has none
    for index, command in enumerate(steps):
        run_step(command, env, tmp, cflags=index < cog_lines)
    return python, env


def copy_source(tree: Path) -> None:
    """What `COPY . /src` puts in the image from a clean checkout: the tracked files (no weights/demo)."""
    names = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for name in names:
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, tree / name)


def serve_one_prediction(python: Path, env: dict, tree: Path) -> dict:
    """Step 3: Cog's server from the image Python on the copied source; returns the prediction's figures."""
    imported = subprocess.run([str(python), "-c", "import predict, torch, audiocraft, cog; print(cog.__version__, "
                               "torch.__version__, torch.version.cuda)"],
                              cwd=tree, env=env, capture_output=True, text=True)
    if imported.returncode != 0:
        raise SystemExit(f"the predictor does not import in the image:\n{imported.stderr[-4000:]}")
    logger.info("image imports: cog %s", imported.stdout.strip())
    server = CogServer(dict(env, PYTHONPATH=str(tree)), {"JAM_PORT": "0"}, root=tree, python=str(python),
                       log_path=tree.parent / "cog-server.log")
    server.start(timeout=600)
    try:
        response = requests.post(f"{server.url}/predictions", timeout=600,
                                 json={"input": {"prompt": "rehearsal", "duration": 2, "seed": 7}}).json()
    finally:
        server.stop()
    if response.get("status") != "succeeded":
        raise SystemExit(f"the rehearsed image's prediction failed: {response.get('error')}\n"
                         f"{server.log_path.read_text()[-4000:]}")
    samples, rate = sf.read(io.BytesIO(base64.b64decode(response["output"].split(",", 1)[1])), always_2d=True)
    return {"cog_torch_cuda": imported.stdout.strip(), "seconds": samples.shape[0] / rate, "sample_rate": rate,
            "demo_built_at_boot": "building the random-weight demo checkpoint" in server.log_path.read_text()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="an empty or missing folder (~6 GB)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.work.exists() and any(args.work.iterdir()):
        raise SystemExit(f"{args.work} is not empty")
    args.work.mkdir(parents=True, exist_ok=True)
    python, env = replay_build(args.work)
    copy_source(args.work / "src")
    figures = serve_one_prediction(python, env, args.work / "src")
    logger.info("rehearsal passed: %s", figures)


if __name__ == "__main__":
    main()

"""cog.yaml against Cog 0.23.1's own rules (tools/cog_rules.py over the release's files): `cog build` accepts it,
picks the CUDA the pinned torch wheel is built for, and installs the same pins as the local .venv."""

import copy
import re
import shlex

import pytest
import torch

from tools import cog_rules, lock
from tools.cog_rules import ROOT, CogConfigError

CONFIG = cog_rules.load_config()
RUNTIME_LOCK = cog_rules.read_requirements(ROOT / CONFIG["build"]["python_requirements"])
DEV_LOCK = cog_rules.read_requirements(ROOT / "requirements-dev.txt")
NODEPS = cog_rules.read_requirements(ROOT / "requirements-nodeps.txt")


def test_cog_yaml_passes_cogs_schema_with_no_deprecated_key():
    assert cog_rules.schema_errors(CONFIG) == []
    assert cog_rules.deprecations(CONFIG) == []
    assert CONFIG["run"] == "predict.py:Predictor"


def test_the_checker_refuses_what_cog_refuses():
    """The previous cog.yaml (no cuda, `predict:`) and unknown keys fail here as they fail `cog build`."""
    old = copy.deepcopy(CONFIG)
    del old["build"]["cuda"], old["build"]["sdk_version"], old["run"]
    old["predict"] = "predict.py:Predictor"
    with pytest.raises(CogConfigError, match="doesn't know what CUDA version is compatible with torch==2.14.1"):
        cog_rules.resolve_cuda(old, RUNTIME_LOCK)
    assert cog_rules.deprecations(old) == ["predict (use run)"]
    both = dict(CONFIG, predict="predict.py:Predictor")
    assert cog_rules.schema_errors(both), "run and predict together are refused by the schema"
    typo = copy.deepcopy(CONFIG)
    typo["build"]["cuda_version"] = "13.0"
    assert any("cuda_version" in error for error in cog_rules.schema_errors(typo))
    unknown = copy.deepcopy(CONFIG)
    unknown["build"]["cuda"] = "10.2"
    with pytest.raises(CogConfigError, match="minimum supported CUDA version is 11"):
        cog_rules.resolve_cuda(unknown, RUNTIME_LOCK)


def test_cuda_is_cogs_choice_and_the_torch_wheels_own():
    choice = cog_rules.resolve_cuda(CONFIG, RUNTIME_LOCK)
    torch_pin = cog_rules.pinned_version(RUNTIME_LOCK, "torch")
    assert torch.__version__.split("+")[0] == torch_pin, "the tested torch is the image's torch"
    assert torch.version.cuda == choice.cuda, "cuda: must be the CUDA the pinned wheel is built for"
    # not in the matrix, so Cog warns and uses its base image without torch; the wheel comes from PyPI
    assert cog_rules.torch_cudas(torch_pin) == []
    assert choice.cog_base_image == "r8.im/cog-base:cuda13.0-python3.11"
    assert choice.cuda_base_image.startswith("nvidia/cuda:13.0.")


def test_the_image_installs_exactly_the_tested_pins():
    generated = cog_rules.generated_requirements(CONFIG)
    assert "torch==2.14.1" in generated and not any(line.startswith("--") for line in generated)
    assert not any(re.match(r"cog(let)?==", line) for line in generated), "Cog drops these with a warning"
    assert all(re.fullmatch(r"[A-Za-z0-9_.\-]+==[^\s]+", line) for line in generated), "every line is a pin"
    assert f"cog=={CONFIG['build']['sdk_version']}" in DEV_LOCK, "the SDK tested here is the image's"
    assert f"uv=={cog_rules.UV_VERSION}" in DEV_LOCK, "the installer tested here is the image's"
    runtime_names = {line.split("==")[0].lower() for line in RUNTIME_LOCK}
    assert not runtime_names & {line.split("==")[0].lower() for line in DEV_LOCK}, "each package pinned once"
    assert lock.render_locks() == {name: (ROOT / name).read_text() for name in lock.LOCKS.values()}, (
        "a lock is not what .venv holds: run `python -m tools.lock`")


def test_build_run_lines_are_single_commands_with_the_images_installer():
    run = CONFIG["build"]["run"]
    assert run, "audiocraft and its --no-deps companions are installed by build.run"
    for command in run:
        assert isinstance(command, str) and "\n" not in command
        assert not re.search(r"&&|\|\||[;|`]|\$\(", command), f"one command per line: {command}"
        words = shlex.split(command)
        assert words[:4] == ["uv", "pip", "install", "--break-system-packages"], (
            f"the image's Python is uv-managed and externally managed: {command}")
    packages = [word for command in run for word in shlex.split(command)[4:] if not word.startswith("-")]
    assert packages == NODEPS, "build.run installs requirements-nodeps.txt's pins"
    assert "--no-deps" in run[0]

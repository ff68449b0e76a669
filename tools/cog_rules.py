"""What Cog 0.23.1's `cog build` does with cog.yaml, as far as this project's build needs it, from Cog's own files.

There is no Docker engine and no cog CLI here, so the build is checked against Cog's rules instead: the config
schema, the deprecations, the CUDA choice of `validateAndCompleteCUDA` (pkg/config/config.go) and the Python steps
the Dockerfile generator emits (pkg/dockerfile/standard_generator.go), with their order and flags. The JSON files
in tools/cog-0.23.1/ are copies from that release (ORIGIN.md says from where); the Go logic is restated here in the
few branches this project meets, and errors carry Cog's own wording so a failure reads as `cog build` would say it.
"""

import json
import re
import typing as tp
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
COG_VERSION = "0.23.1"
DATA = Path(__file__).resolve().parent / f"cog-{COG_VERSION}"
UV_VERSION = "0.9.26"  # standard_generator.go UVVersion: the uv every image of this Cog release carries
# standard_generator.go CFlags: set around Cog's own pip lines (note -S: a C extension built from source fails)
CFLAGS = "-O3 -funroll-loops -fno-strict-aliasing -flto -S"
MANAGED_PACKAGES = ("cog", "coglet")  # filterManagedPackages: dropped from requirements, installed by Cog itself
MIN_CUDA_MAJOR = 11  # config.go MinimumMajorCudaVersion


class CogConfigError(ValueError):
    """cog.yaml as `cog build` would refuse it."""


def load_config(root: Path = ROOT) -> dict:
    return yaml.safe_load((root / "cog.yaml").read_text())


def _json(name: str) -> tp.Any:
    return json.loads((DATA / name).read_text())


def schema_errors(config: dict) -> list[str]:
    """Cog validates cog.yaml against its JSON schema (draft-07) before anything else."""
    import jsonschema

    validator = jsonschema.Draft7Validator(_json("config_schema_v1.0.json"))
    return [f"{'.'.join(map(str, error.absolute_path)) or '(top level)'}: {error.message}"
            for error in validator.iter_errors(config)]


def deprecations(config: dict) -> list[str]:
    """validate.go checkDeprecatedFields: fields that still work but warn (and fail under strict deprecations)."""
    build = config.get("build") or {}
    found = []
    if config.get("predict"):
        found.append("predict (use run)")
    if (config.get("concurrency") or {}).get("max") is not None:
        found.append("concurrency.max (use @cog.concurrent)")
    if build.get("python_packages"):
        found.append("build.python_packages (use build.python_requirements)")
    if build.get("pre_install"):
        found.append("build.pre_install (use build.run)")
    return found


# -- versions as pkg/util/version compares them ----------------------------------------------------------------
def _parts(version: str) -> tuple[int, int, tp.Optional[int]]:
    numbers = version.split("+", 1)[0].split(".")
    return int(numbers[0]), int(numbers[1]) if len(numbers) > 1 else 0, int(numbers[2]) if len(numbers) > 2 else None


def matches(left: str, right: str) -> bool:
    """version.Matches: same major and minor, and the same patch where both have one."""
    a, b = _parts(left), _parts(right)
    return a[:2] == b[:2] and (a[2] is None or b[2] is None or a[2] == b[2])


def read_requirements(path: Path) -> list[str]:
    """requirements.ReadRequirements: non-comment lines, inline comments cut (continuations are not used here)."""
    lines = (line.strip() for line in path.read_text().splitlines())
    return [line.split("#", 1)[0].strip() for line in lines if line and not line.startswith("#")]


def pinned_version(requirements: list[str], package: str) -> tp.Optional[str]:
    for line in requirements:
        match = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([^\s;]+)", line)
        if match and match.group(1).lower() == package:
            return match.group(2)
    return None


# -- the CUDA choice -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CudaChoice:
    cuda: str
    cudnn: str
    cog_base_image: str  # base.go BaseImageName: Cog's base image (torch preinstalled only for matrix versions)
    cuda_base_image: str  # the plain CUDA image Cog falls back to when its own base image is missing
    warnings: tuple[str, ...]


def torch_cudas(torch_version: str) -> list[str]:
    """compatibility.go cudasFromTorch: the CUDA versions Cog's matrix lists for this torch."""
    return [entry["CUDA"] for entry in _json("torch_compatibility.json")
            if entry["CUDA"] is not None and matches(torch_version, entry["Torch"].split("+", 1)[0])]


def resolve_cuda(config: dict, requirements: list[str]) -> CudaChoice:
    """config.go validateAndCompleteCUDA, torch branch: raises CogConfigError where `cog build` stops."""
    build = config.get("build") or {}
    cuda = str(build.get("cuda") or "")
    torch_version = pinned_version(requirements, "torch")
    if torch_version is None:
        raise CogConfigError("torch version must be specified when using CUDA")
    warnings = []
    if cuda:
        major, minor = cuda.split(".")[:2] if "." in cuda else (cuda, "")
        if not (major.isdigit() and minor.isdigit()):
            raise CogConfigError(f"CUDA version {cuda!r} must include both major and minor versions")
        if int(major) < MIN_CUDA_MAJOR:
            raise CogConfigError(f"minimum supported CUDA version is {MIN_CUDA_MAJOR}, requested {cuda!r}")
    cudas = torch_cudas(torch_version)
    if not cuda:
        if not cudas:
            raise CogConfigError(f"cog doesn't know what CUDA version is compatible with torch=={torch_version}. ... "
                                 "you need to set the 'cuda' option in cog.yaml to set what version to use.")
        cuda = max(cudas, key=_parts)
    elif not any(_parts(c)[:2] == _parts(cuda)[:2] for c in cudas):
        warnings.append(f"Cog doesn't know if CUDA {cuda} is compatible with PyTorch {torch_version}. "
                        "This might cause CUDA problems.")
    images = [image for image in _json("cuda_compatibility.json") if matches(cuda, image["CUDA"])]
    if not images:
        raise CogConfigError(f"CUDA {cuda} is not supported by Cog")
    cudnn = max((image["CuDNN"] for image in images), key=_parts)
    newest = max((image for image in images if image["CuDNN"] == cudnn),
                 key=lambda image: (_parts(image["CUDA"]), image["Ubuntu"]))
    python = ".".join(str(build.get("python_version", "")).split(".")[:2])
    tag = f"cuda{'.'.join(cuda.split('.')[:2])}-python{python}" + (f"-torch{torch_version}" if cudas else "")
    return CudaChoice(cuda=cuda, cudnn=cudnn, cog_base_image=f"r8.im/cog-base:{tag}",
                      cuda_base_image=f"nvidia/cuda:{newest['Tag']}", warnings=tuple(warnings))


# -- the image's Python steps --------------------------------------------------------------------------------------
def generated_requirements(config: dict, root: Path = ROOT) -> list[str]:
    """The requirements file Cog writes into the image (PythonRequirementsForArch, then filterManagedPackages):
    torch pins that the matrix knows for this CUDA get its index URL; cog and coglet are dropped."""
    requirements = read_requirements(root / config["build"]["python_requirements"])
    cuda = resolve_cuda(config, requirements).cuda
    index_urls, lines = [], []
    for line in requirements:
        name = re.split(r"[=<>!~\[; ]", line, maxsplit=1)[0].lower()
        if name in MANAGED_PACKAGES:
            continue
        if name == "torch":
            version = pinned_version([line], "torch")
            known = [entry for entry in _json("torch_compatibility.json") if entry["CUDA"] is not None
                     and matches(entry["Torch"].split("+", 1)[0], version) and _parts(entry["CUDA"]) <= _parts(cuda)]
            if known:
                best = max(known, key=lambda entry: (_parts(entry["CUDA"]), _parts(entry["Torch"])))
                line = f"torch=={best['Torch'].split('+', 1)[0]}"
                index_urls += [f"--extra-index-url {best['ExtraIndexURL']}"] if best["ExtraIndexURL"] else []
        lines.append(line)
    return sorted(set(index_urls)) + lines


def image_python_steps(config: dict, requirements_path: str, pip_cache: str = "/root/.cache/pip") -> list[str]:
    """The image's Python install commands in the generator's order (the CUDA >= 13 image's Python is uv-managed
    and externally managed, so every Cog line carries --break-system-packages): the requirements, the SDK, then
    build.run verbatim. `requirements_path` is where the generated requirements file lies, `pip_cache` pip's cache
    (Cog's cache mount in the image)."""
    sdk = (config.get("build") or {}).get("sdk_version")
    cog = f"cog=={sdk}" if sdk else "cog"
    steps = [f"uv run pip install --break-system-packages --cache-dir {pip_cache} -r {requirements_path}",
             f"uv pip install --break-system-packages --no-cache {cog}"]
    for item in (config.get("build") or {}).get("run") or []:
        command = (item["command"] if isinstance(item, dict) else item).strip()
        if "\n" in command:
            raise CogConfigError(f"One of the commands in 'run' contains a new line, which won't work: {command}")
        steps.append(command)
    return steps

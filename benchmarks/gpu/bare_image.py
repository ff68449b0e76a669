"""Runs a module as it would import on the GPU machine: only the image's packages and the carried wheels.

    python -m benchmarks.gpu.bare_image MODULE [ARGS...]      # e.g. benchmarks.gpu.check --device cpu --tiny

The GPU check runs where nothing can be installed but the wheels it carries (benchmarks/gpu/wheels.txt) on top of
the image's packages (benchmarks/gpu/image_packages.txt). Here every package of this project is installed, so a
missing wheel would only show on the GPU, in the few minutes a lease gives. This refuses, at import, any top-level
module whose distribution is in neither list, and serves the stand-ins of benchmarks/gpu/stubs in place of
xformers, spacy and av, exactly as gpu_check.sh does there; so `tests/system/test_gpu_check.py` proves the wheel set
here. Versions are not simulated (the image's transformers and huggingface_hub differ from our pins).
"""

import importlib.abc
import importlib.machinery
import importlib.metadata
import os
import re
import runpy
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
STUBS = HERE / "stubs"
ENV = "GPU_CHECK_BARE_IMAGE"  # set for child processes, which run through this module too
# Needed here only by our newer pins of packages the image has in older versions (huggingface_hub 2.x uses httpx2;
# the image's 1.x uses httpx, which it has): allowed, since the image's own versions do not import them.
VERSION_ARTIFACTS = {"httpx2", "httpcore2", "truststore"}


def names(path: Path) -> set[str]:
    lines = (line.split("#")[0].strip() for line in path.read_text().splitlines())
    return {normalize(line.split("==")[0]) for line in lines if line}


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def stub_names() -> set[str]:
    return {path.name for path in STUBS.iterdir() if (path / "__init__.py").is_file()}


class BareImageFinder(importlib.abc.MetaPathFinder):
    """Refuses top-level modules of distributions the GPU machine would not have; serves the stand-ins."""

    def __init__(self, allowed: set[str]) -> None:
        self.allowed = allowed
        self.stubs = stub_names()
        self.owners = importlib.metadata.packages_distributions()

    def find_spec(self, fullname, path=None, target=None):
        if "." in fullname:
            return None
        if fullname in self.stubs:
            return importlib.machinery.PathFinder.find_spec(fullname, [str(STUBS)])
        owners = self.owners.get(fullname, [])
        if owners and not any(normalize(owner) in self.allowed for owner in owners):
            raise ModuleNotFoundError(f"No module named {fullname!r} on the GPU machine: {', '.join(owners)} is "
                                      "neither in its image nor in benchmarks/gpu/wheels.txt", name=fullname)
        return None


def install() -> None:
    allowed = names(HERE / "image_packages.txt") | names(HERE / "wheels.txt") | VERSION_ARTIFACTS
    sys.meta_path.insert(0, BareImageFinder(allowed))
    os.environ[ENV] = "1"


def main() -> None:
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    install()
    module, sys.argv = sys.argv[1], sys.argv[1:]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()

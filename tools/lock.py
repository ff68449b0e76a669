"""Writes the pinned requirement files from the direct ones and the environment they were tested in.

The image and the local `.venv` must install the same versions, transitive ones included: Cog's build installs
`build.python_requirements` with pip and nothing else, so that file has to be the whole runtime closure. The direct
requirements are edited by hand; the locks are written from what is installed in `.venv` (the tested set):

    requirements.in        -> requirements.txt        runtime: what `cog build` installs (no cog: build.sdk_version)
    requirements-dev.in    -> requirements-dev.txt    tests, lint, the clients the tests drive, and the Cog SDK,
                                                      only what the runtime lock does not already pin

    python -m tools.lock          # rewrite both locks from .venv
    python -m tools.lock --check  # exit 1 when a lock differs from what .venv holds

Each package is pinned exactly once across the two locks. After changing a `.in` file: install the new pin into
`.venv` (`.venv/bin/pip install pkg==x.y`), run this tool and commit both files.
"""

import argparse
import importlib.metadata as metadata
import sys
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
LOCKS = {"requirements.in": "requirements.txt", "requirements-dev.in": "requirements-dev.txt"}
HEADER = "# Written by `python -m tools.lock` from {source} and the tested .venv; edit {source}, not this file.\n"


def direct_requirements(path: Path) -> list[Requirement]:
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [Requirement(line) for line in lines if line]


def closure(roots: list[Requirement]) -> dict[str, str]:
    """Canonical name -> installed version of every distribution `roots` need on this platform, extras included;
    raises when a root's pin is not what is installed (the lock would then describe an untested set)."""
    pins: dict[str, str] = {}
    todo = [(requirement, True) for requirement in roots]
    while todo:
        requirement, is_root = todo.pop()
        name = canonicalize_name(requirement.name)
        try:
            installed = metadata.distribution(requirement.name)
        except metadata.PackageNotFoundError:
            raise SystemExit(f"{requirement.name} is required but not installed in this environment") from None
        if is_root and installed.version not in requirement.specifier:
            raise SystemExit(f"{requirement} is asked for but {installed.version} is installed: install the pin")
        if name in pins:
            continue
        pins[name] = installed.version
        for line in installed.requires or []:
            dependency = Requirement(line)
            wanted = {""} | set(requirement.extras)
            if dependency.marker is None or any(dependency.marker.evaluate({"extra": e}) for e in wanted):
                todo.append((dependency, False))
    return pins


def render_locks() -> dict[str, str]:
    """Lock file name -> its text; later locks leave out what earlier ones pin."""
    pinned: set[str] = set()
    texts = {}
    for source, target in LOCKS.items():
        pins = closure(direct_requirements(ROOT / source))
        lines = [f"{metadata.distribution(name).metadata['Name']}=={version}"
                 for name, version in sorted(pins.items()) if name not in pinned]
        pinned |= set(pins)
        texts[target] = HEADER.format(source=source) + "\n".join(lines) + "\n"
    return texts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when a lock is not what .venv holds")
    args = parser.parse_args()
    stale = []
    for target, text in render_locks().items():
        path = ROOT / target
        if args.check:
            if not path.is_file() or path.read_text() != text:
                stale.append(target)
        else:
            path.write_text(text)
    if stale:
        sys.exit(f"stale: {', '.join(stale)}; run `python -m tools.lock` and commit the result")


if __name__ == "__main__":
    main()

"""The structure docs/architecture.md promises, checked on the source of every package and subpackage; and the
tests' own: tests/ mirrors the packages, and test modules and benchmarks share code through tests/support only.

Each rule is a function over a tree of sources, so that it is also run against a small tree that breaks it: a rule
that stops finding its modules (say, after a move into subpackages) fails its own check instead of passing quietly.
"""

import ast
import collections
from pathlib import Path

import pytest

from tests.support import ROOT

PACKAGES = ("engine", "streaming", "weights")
SCRIPTS = ("predict", "generate")  # the transports that are single files at the top of the repository
FACADE = "engine.api"
TRANSPORT_ROOTS = ("streaming", "weights", *SCRIPTS)
# The sans-I/O cores: the wire formats of each protocol, pure functions and models over messages.
PURE = ("protocol", "events", "params", "messages", "timeline", "wire")
IO_LIBRARIES = {"asyncio", "starlette", "uvicorn", "websockets", "aiortc", "av", "socketio", "httpx", "aiohttp"}
MODEL_LIBRARIES = {"audiocraft", "demucs"}
MAX_LINES = 400  # small modules with one job
LONG_REASON = "Why it is long:"  # a module over MAX_LINES says so in its docstring, with the reason
HARNESS = ("tests", "benchmarks")  # the code that runs the project rather than being it
SHARED = "tests.support"  # what test modules and benchmarks share: no test module is imported by another
TEST_DATA = "data"  # tests/data: files the tests read, no package


def sources(root: Path, packages: tuple[str, ...] = PACKAGES, scripts: tuple[str, ...] = SCRIPTS) -> dict[str, Path]:
    """Module name -> file, for the packages (recursively) and the top-level scripts under `root`."""
    found = {name: root / f"{name}.py" for name in scripts if (root / f"{name}.py").is_file()}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(root: Path, packages: tuple[str, ...] = PACKAGES,
            scripts: tuple[str, ...] = SCRIPTS) -> dict[str, set[str]]:
    """Module -> every module it imports (at the top or inside functions), project and third-party alike."""
    graph: dict[str, set[str]] = {}
    found = sources(root, packages, scripts)
    known = {str(path.relative_to(root).with_suffix("")).removesuffix("/__init__") for path in found.values()}
    for module, path in found.items():
        targets = graph.setdefault(module, set())
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets.add(node.module)
                targets.update(f"{node.module}.{alias.name}" for alias in node.names
                               if f"{node.module}.{alias.name}".replace(".", "/") in known)
            elif isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
    return graph


def project(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    tops = {*PACKAGES, *SCRIPTS}
    return {module: {t for t in targets if t.split(".")[0] in tops} for module, targets in graph.items()}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    graph = project(graph)
    visiting, done, found = [], set(), []

    def visit(module: str) -> None:
        visiting.append(module)
        for target in sorted(graph.get(module, ())):
            if target in visiting:
                found.append(visiting[visiting.index(target):] + [target])
            elif target not in done:
                visit(target)
        visiting.pop()
        done.add(module)

    for module in sorted(graph):
        if module not in done:
            visit(module)
    return found


def engine_reaching_out(graph: dict[str, set[str]]) -> dict[str, list[str]]:
    """Engine modules that import a transport or weights/: the engine serves them, never the reverse."""
    graph = project(graph)
    return {module: sorted(t for t in targets if t.split(".")[0] != "engine")
            for module, targets in graph.items()
            if module.split(".")[0] == "engine" and any(t.split(".")[0] != "engine" for t in targets)}


def reaching_past_the_facade(graph: dict[str, set[str]]) -> dict[str, list[str]]:
    """Everything outside the engine (transports, weights/) imports engine.api and nothing else of the engine."""
    graph = project(graph)
    return {module: sorted(t for t in targets if t.split(".")[0] == "engine" and t not in (FACADE, "engine"))
            for module, targets in graph.items()
            if module.split(".")[0] in TRANSPORT_ROOTS
            and any(t.split(".")[0] == "engine" and t not in (FACADE, "engine") for t in targets)}


def model_code_outside_the_engine(graph: dict[str, set[str]]) -> dict[str, list[str]]:
    """Transports that import the model's libraries (audiocraft, demucs) instead of asking the engine.
    weights/ builds checkpoints in audiocraft's own layout, so it may."""
    return {module: sorted(t for t in targets if t.split(".")[0] in MODEL_LIBRARIES)
            for module, targets in graph.items()
            if module.split(".")[0] in ("streaming", *SCRIPTS)
            and any(t.split(".")[0] in MODEL_LIBRARIES for t in targets)}


def impure_cores(graph: dict[str, set[str]]) -> dict[str, list[str]]:
    """Protocol cores (streaming/<protocol>/protocol.py and friends) that import an I/O library."""
    return {module: sorted(t for t in targets if t.split(".")[0] in IO_LIBRARIES)
            for module, targets in graph.items()
            if module.startswith("streaming") and module.rsplit(".", 1)[-1] in PURE
            and any(t.split(".")[0] in IO_LIBRARIES for t in targets)}


def long_modules(root: Path) -> dict[str, int]:
    """The project's modules, the tests', the benchmarks' and the tools' alike, over MAX_LINES without a reason."""
    long = {}
    for module, path in sources(root, (*PACKAGES, *HARNESS, "tools")).items():
        if "/cog-" in str(path):  # tools/cog-0.23.1: Cog's own source, read by the tests, not ours
            continue
        source = path.read_text()
        lines = source.count("\n")
        if lines > MAX_LINES and LONG_REASON not in (ast.get_docstring(ast.parse(source)) or ""):
            long[module] = lines
    return long


ENGINE_INSIDES = {"model", "config", "scheduler", "lm_worker", "codec_worker", "runtime", "predictions"}


def reaching_into_the_engine(root: Path) -> dict[str, set[str]]:
    """Transports that read the Engine's insides (`engine.model.sample_rate`) instead of its API (`describe()`)."""
    found = collections.defaultdict(set)
    for module, path in sources(root).items():
        if module.split(".")[0] not in ("streaming", *SCRIPTS):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in ENGINE_INSIDES:
                owner = node.value
                name = owner.attr if isinstance(owner, ast.Attribute) else getattr(owner, "id", "")
                if name == "engine":
                    found[module].add(f"engine.{node.attr}")
    return dict(found)


LIFECYCLE = {"open", "hold", "end", "attach"}  # SessionRegistry's: a session taken, kept, freed, handed over
# streaming.sessions.supervisor owns every connection's session; bar mode's HTTP routes hold theirs between requests
LIFECYCLE_OWNERS = {"streaming.sessions.supervisor", "streaming.sessions.registry", "streaming.bar.http",
                    "streaming.bar.session"}
OPENERS = {"streaming.sessions.supervisor", "streaming.bar.source"}  # Engine.open_session's only callers


def session_owners(root: Path) -> dict[str, set[str]]:
    """Modules other than the supervisor's that take, hold or free a session themselves."""
    found = collections.defaultdict(set)
    for module, path in sources(root).items():
        if not module.startswith("streaming"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                owner = node.func.value
                name = owner.attr if isinstance(owner, ast.Attribute) else getattr(owner, "id", "")
                if name == "registry" and node.func.attr in LIFECYCLE and module not in LIFECYCLE_OWNERS:
                    found[module].add(f"registry.{node.func.attr}")
                if node.func.attr == "open_session" and module not in OPENERS:
                    found[module].add("open_session")
    return dict(found)


def reaching_into_test_modules(root: Path) -> dict[str, list[str]]:
    """Test modules and benchmarks that import from tests/ anything but tests.support: a test module (its helpers
    belong in tests/support) or conftest (its fixtures are asked for, not imported)."""
    def private_to_tests(target: str) -> bool:
        return target.startswith("tests.") and target != SHARED and not target.startswith(f"{SHARED}.")

    return {module: sorted(filter(private_to_tests, targets))
            for module, targets in imports(root, HARNESS, ()).items() if any(map(private_to_tests, targets))}


def private_imports(root: Path) -> dict[str, list[str]]:
    """Benchmarks that import a private name of another module (`from module import _name`): what a benchmark
    needs is made public where it lives."""
    found = collections.defaultdict(list)
    for module, path in sources(root, ("benchmarks",), ()).items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                found[module] += [f"{node.module}.{alias.name}" for alias in node.names
                                  if alias.name.startswith("_") and not alias.name.startswith("__")]
    return {module: names for module, names in found.items() if names}


def unmirrored_test_folders(root: Path) -> list[str]:
    """Test folders without __init__.py (pytest would take two test files of one name for one module), and folders
    under tests/<package> that are no folder of that package (tests/ mirrors the packages)."""
    found = []
    for folder in sorted((root / "tests").rglob("*")):
        relative = folder.relative_to(root / "tests")
        hidden = any(part.startswith((".", "__")) for part in relative.parts)  # caches
        if not folder.is_dir() or relative.parts[0] == TEST_DATA or hidden:
            continue
        if not (folder / "__init__.py").is_file():
            found.append(f"tests/{relative}: no __init__.py")
        if relative.parts[0] in PACKAGES and not (root / relative).is_dir():
            found.append(f"tests/{relative}: mirrors no {relative}/")
    return found


def test_the_rules_see_every_subpackage():
    modules = sources(ROOT)
    packages = {module.rsplit(".", 1)[0] for module in modules if "." in module}
    assert {"engine.lm", "engine.runtime", "engine.codec", "engine.work", "engine.loading", "streaming.jam",
            "streaming.bar", "streaming.lyria", "streaming.webrtc", "streaming.gary", "streaming.sessions",
            "streaming.jobs", "streaming.app"} <= packages
    assert len(modules) > 90


def test_no_import_circle():
    assert circles(imports(ROOT)) == []


def test_the_engine_imports_no_transport_and_not_weights():
    assert engine_reaching_out(imports(ROOT)) == {}


def test_everything_outside_the_engine_reaches_it_through_its_facade_only():
    assert reaching_past_the_facade(imports(ROOT)) == {}


def test_transports_leave_the_model_libraries_to_the_engine():
    assert model_code_outside_the_engine(imports(ROOT)) == {}


def test_protocol_cores_do_no_io():
    assert impure_cores(imports(ROOT)) == {}


def test_modules_stay_small_or_say_why():
    assert long_modules(ROOT) == {}, f"split these by job, or say in the module docstring ({LONG_REASON!r}) why not"


def test_transports_use_the_engines_api_not_its_insides():
    assert reaching_into_the_engine(ROOT) == {}


def test_one_supervisor_owns_the_sessions_of_connections():
    """No transport shell takes, holds or frees a session itself: streaming/sessions/supervisor.py does, for all."""
    assert session_owners(ROOT) == {}


def test_test_modules_and_benchmarks_share_through_tests_support_only():
    assert reaching_into_test_modules(ROOT) == {}, f"move what they share into {SHARED}"


def test_benchmarks_import_no_private_name():
    assert private_imports(ROOT) == {}


def test_the_tests_mirror_the_packages():
    assert unmirrored_test_folders(ROOT) == []


BROKEN = {
    "engine/__init__.py": "",
    "engine/api.py": "from engine.work import session\n",
    "engine/work/__init__.py": "",
    "engine/work/session.py": "from streaming.jam import protocol\n",
    "streaming/__init__.py": "",
    "streaming/jam/__init__.py": "",
    "streaming/jam/protocol.py": "import asyncio\nfrom engine.work.session import x\nfrom streaming.jam import ws\n",
    "streaming/jam/ws.py": "from streaming.jam.protocol import y\nfrom audiocraft.data import audio_utils\n"
                           "def f(registry, engine):\n    registry.open()\n    return engine.model.sample_rate\n",
    "streaming/bar/deep/long.py": "x = 1\n" * (MAX_LINES + 1),
    "tools/long_tool.py": "x = 1\n" * (MAX_LINES + 1),
    "tests/__init__.py": "",
    "tests/conftest.py": "",
    "tests/support/__init__.py": "",
    "tests/support/clients.py": "",
    "tests/streaming/__init__.py": "",
    "tests/streaming/jam/__init__.py": "",
    "tests/streaming/jam/test_ws.py": "import tests.streaming.jam.test_protocol\nfrom tests.support.clients import a\n",
    "tests/streaming/jam/test_protocol.py": "from tests.conftest import ROOT\nfrom tests.support import b\n",
    "tests/streaming/nowhere/test_x.py": "",
    "tests/data/seed.py": "",
    "benchmarks/__init__.py": "",
    "benchmarks/bench.py": "from tests.streaming.jam.test_ws import c\n"
                           "from benchmarks.other import _private, __version__\n",
}


@pytest.fixture
def broken(tmp_path: Path) -> Path:
    for name, text in BROKEN.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return tmp_path


def test_every_rule_fails_on_a_tree_that_breaks_it(broken: Path):
    graph = imports(broken)
    assert ["streaming.jam.protocol", "streaming.jam.ws", "streaming.jam.protocol"] in circles(graph)
    assert engine_reaching_out(graph) == {"engine.work.session": ["streaming.jam", "streaming.jam.protocol"]}
    assert reaching_past_the_facade(graph) == {"streaming.jam.protocol": ["engine.work.session"]}
    assert impure_cores(graph) == {"streaming.jam.protocol": ["asyncio"]}
    assert model_code_outside_the_engine(graph) == {"streaming.jam.ws": ["audiocraft.data"]}
    assert long_modules(broken) == {"streaming.bar.deep.long": MAX_LINES + 1, "tools.long_tool": MAX_LINES + 1}
    assert session_owners(broken) == {"streaming.jam.ws": {"registry.open"}}
    assert reaching_into_the_engine(broken) == {"streaming.jam.ws": {"engine.model"}}
    assert reaching_into_test_modules(broken) == {"tests.streaming.jam.test_ws": ["tests.streaming.jam.test_protocol"],
                                                  "tests.streaming.jam.test_protocol": ["tests.conftest"],
                                                  "benchmarks.bench": ["tests.streaming.jam.test_ws"]}
    assert private_imports(broken) == {"benchmarks.bench": ["benchmarks.other._private"]}
    assert unmirrored_test_folders(broken) == ["tests/streaming/nowhere: no __init__.py",
                                               "tests/streaming/nowhere: mirrors no streaming/nowhere/"]

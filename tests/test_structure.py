"""The structure README's architecture section promises, checked on the source: no import circle among the
project's packages, the engine does not depend on `weights/` (which builds on the engine), and the transports
(predict.py, streaming/) reach the engine through its facade, engine/api.py, only."""

import ast
import collections
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("engine", "streaming", "weights")


def imports() -> dict[str, set[str]]:
    """Module -> the project modules it imports (at the top or inside functions)."""
    graph: dict[str, set[str]] = collections.defaultdict(set)
    sources = [(ROOT / "predict.py", "predict")]
    for package in PACKAGES:
        sources += [(path, package if path.stem == "__init__" else f"{package}.{path.stem}")
                    for path in (ROOT / package).glob("*.py")]
    for path, module in sources:
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module] if isinstance(node, ast.ImportFrom) and node.module else \
                [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
            graph[module].update(name for name in names if name.split(".")[0] in PACKAGES)
    return graph


def test_no_import_circle():
    graph = imports()
    visiting, done, circles = [], set(), []

    def visit(module: str) -> None:
        visiting.append(module)
        for target in sorted(graph.get(module, ())):
            if target in visiting:
                circles.append(visiting[visiting.index(target):] + [target])
            elif target not in done:
                visit(target)
        visiting.pop()
        done.add(module)

    for module in sorted(graph):
        if module not in done:
            visit(module)
    assert circles == [], circles


def test_the_engine_does_not_depend_on_weights():
    graph = imports()
    assert {module for module, targets in graph.items() if module.startswith("engine")
            for target in targets if target.split(".")[0] == "weights"} == set()


def test_transports_reach_the_engine_through_its_facade_only():
    graph = imports()
    transports = [module for module in graph if module == "predict" or module.startswith("streaming")]
    reaching_in = {module: sorted(target for target in graph[module]
                                  if target.startswith("engine") and target != "engine.api")
                   for module in transports}
    assert {module: targets for module, targets in reaching_in.items() if targets} == {}


MAX_LINES = 350  # README: small modules with one job
LONG_REASON = "Why it is long:"  # a module over MAX_LINES says so in its docstring, with the reason
SIZED = ("engine", "streaming")


def test_modules_stay_small_or_say_why():
    long = {}
    for package in SIZED:
        for path in sorted((ROOT / package).glob("*.py")):
            source = path.read_text()
            lines = source.count("\n")
            if lines > MAX_LINES and LONG_REASON not in (ast.get_docstring(ast.parse(source)) or ""):
                long[f"{package}/{path.name}"] = lines
    assert long == {}, f"split these by job, or say in the module docstring ({LONG_REASON!r}) why not"


LIFECYCLE = {"open", "hold", "end", "attach"}  # SessionRegistry's: a session taken, kept, freed, handed over
# streaming.supervisor owns every connection's session; bar mode's HTTP routes hold theirs between requests
LIFECYCLE_OWNERS = {"supervisor", "sessions", "bar_http", "bar_jam"}
OPENERS = {"supervisor", "bar_source"}  # Engine.open_session: the supervisor's, and a bar source it opens


def test_one_supervisor_owns_the_sessions_of_connections():
    """No transport shell takes, holds or frees a session itself: streaming/supervisor.py does, for all."""
    found = collections.defaultdict(set)
    for path in (ROOT / "streaming").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                owner = node.func.value
                name = owner.attr if isinstance(owner, ast.Attribute) else getattr(owner, "id", "")
                if name == "registry" and node.func.attr in LIFECYCLE and path.stem not in LIFECYCLE_OWNERS:
                    found[path.stem].add(f"registry.{node.func.attr}")
                if node.func.attr == "open_session" and path.stem not in OPENERS:
                    found[path.stem].add("open_session")
    assert dict(found) == {}

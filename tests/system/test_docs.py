"""The documentation holds together: links resolve, what it names exists, README stays an overview that starts with
the set-up commands (CI and people copy them from there), and history stays in CHANGELOG.md.

Each check is a function over text, so that it is also run on text that breaks it: a check that stops finding what
it looks for fails instead of passing quietly.
"""

import re
from pathlib import Path

from tests.support import ROOT

README, CHANGELOG, DOCS = ROOT / "README.md", ROOT / "CHANGELOG.md", ROOT / "docs"
MAX_README_LINES = 200
# README's first lines, unchanged: the set-up command and the fast suite's command
SETUP_COMMANDS = (
    "```bash\n"
    'bash scripts/setup.sh && .venv/bin/python -m generate --prompt "lo-fi hip hop beat" --duration 4 --out demo.wav\n'
    "```\n"
    "```bash\n"
    '.venv/bin/python -m pytest -m "not slow"\n'
    "```\n"
)
HISTORY = re.compile(r"\b[Ss]ession \d+\b|\b[Ii]ssue \d+")  # "Session 6", "(session 5)", "issue 17", "issue 16.3"
FENCE = re.compile(r"^```.*?^```[ \t]*$", re.M | re.S)
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t]*#*[ \t]*$", re.M)
# files of the repository named in prose: a top-level folder, a path, an extension (folders and files that setup or
# the fetcher write, like weights/demo/, have none and are not checked)
EXTENSIONS = "py|sh|json|cfg|yaml|txt|md|html|js|css"
PATH = re.compile(rf"(?<![\w./$-])((?:engine|streaming|benchmarks|tests|tools|scripts|weights|deploy|docs)/[\w./-]*"
                  rf"\.(?:{EXTENSIONS}))\b")
# dotted modules (and module.attribute), but not files such as engine.md
MODULE = re.compile(rf"(?<![\w./-])((?:engine|streaming|benchmarks|weights|tools)(?:\.(?!(?:{EXTENSIONS})\b)"
                    r"[A-Za-z_]\w*)+)")


# the environment variables the code reads: the project's own and Cog's (a request's ASGI environ is no concern here)
ENV_READ = re.compile(r"""(?:environ\.get|getenv|number)\(\s*["']((?:JAM|MUSICGEN|COG)_[A-Z0-9_]+)["']"""
                      r"""|environ\[\s*["']((?:JAM|MUSICGEN|COG)_[A-Z0-9_]+)["']\s*\](?!\s*=[^=])""")
CONFIGURATION = DOCS / "configuration.md"


def documents() -> list[Path]:
    return [README, CHANGELOG, *sorted(DOCS.rglob("*.md"))]


def current_documents() -> list[Path]:
    """The documents that describe the code as it is (CHANGELOG.md names what was, old paths included)."""
    return [README, *sorted(DOCS.rglob("*.md"))]


def without_code_blocks(text: str) -> str:
    return FENCE.sub("", text)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: its text as rendered (links as their text, no code or emphasis marks),
    lower-cased, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "").replace("*", "")
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Every heading's anchor, with GitHub's -1, -2 ... for repeated headings."""
    found, seen = set(), {}
    for heading in HEADING.findall(without_code_blocks(text)):
        base = slug(heading)
        found.add(f"{base}-{seen[base]}" if base in seen else base)
        seen[base] = seen.get(base, 0) + 1
    return found


def broken_links(path: Path, text: str) -> list[str]:
    """Relative links of `text` (the document at `path`) whose file is missing or whose #anchor is no heading of
    it. Links to other sites are not followed."""
    broken = []
    for target in LINK.findall(without_code_blocks(text)):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):
            continue
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        if not linked.exists():
            broken.append(f"{target}: no such file")
        elif anchor and (linked.suffix != ".md" or anchor not in anchors(linked.read_text())):
            broken.append(f"{target}: no heading #{anchor} in {linked.name}")
    return broken


def missing_paths(text: str, root: Path = ROOT) -> list[str]:
    """Repository files and modules named in `text` that do not exist (an old name, a typo)."""
    missing = [path for path in PATH.findall(text) if not (root / path).exists()]
    for name in MODULE.findall(text):
        parts = name.split(".")
        known = [i for i in range(1, len(parts) + 1) if (root / "/".join(parts[:i])).with_suffix(".py").is_file()
                 or (root / "/".join(parts[:i]) / "__init__.py").is_file()]
        if not known or max(known) < 2:
            missing.append(name)
        elif max(known) < len(parts):  # module.attribute: the module must define or import the name
            module = root / "/".join(parts[:max(known)])
            source = (module / "__init__.py" if module.is_dir() else module.with_suffix(".py")).read_text()
            if not re.search(rf"\b{re.escape(parts[max(known)])}\b", source):
                missing.append(name)
    return missing


def history(text: str) -> list[str]:
    return HISTORY.findall(text)


def variables_read(source: str) -> set[str]:
    return {read or indexed for read, indexed in ENV_READ.findall(source)}


def documented_variables(table: str) -> set[str]:
    """The names in the first cell of the configuration table's rows."""
    return {name for row in re.findall(r"^\| ([^|]+) \|", table, re.M) for name in re.findall(r"`([A-Z0-9_]+)`", row)}


def test_every_relative_link_resolves():
    broken = {path.relative_to(ROOT).as_posix(): broken_links(path, path.read_text()) for path in documents()}
    assert {name: links for name, links in broken.items() if links} == {}


def test_every_path_and_module_named_exists():
    missing = {path.relative_to(ROOT).as_posix(): missing_paths(path.read_text()) for path in current_documents()}
    assert {name: paths for name, paths in missing.items() if paths} == {}


def test_readme_is_short_and_starts_with_the_setup_commands():
    text = README.read_text()
    assert len(text.splitlines()) <= MAX_README_LINES
    title, blank, rest = text.split("\n", 2)
    assert title.startswith("# ") and blank == "" and rest.startswith(SETUP_COMMANDS)


def test_readme_maps_every_docs_page():
    linked = {(README.parent / target.partition("#")[0]).resolve() for target in LINK.findall(README.read_text())}
    assert [p.relative_to(ROOT).as_posix() for p in sorted(DOCS.rglob("*.md")) if p.resolve() not in linked] == []


def test_history_stays_in_the_changelog():
    found = {path.relative_to(ROOT).as_posix(): history(path.read_text()) for path in current_documents()}
    assert {name: words for name, words in found.items() if words} == {}
    assert history(CHANGELOG.read_text())  # the pattern still finds what it is for


def test_every_environment_variable_the_code_reads_is_in_the_configuration_table():
    sources = [*ROOT.glob("engine/**/*.py"), *ROOT.glob("streaming/**/*.py"), ROOT / "predict.py", ROOT / "generate.py"]
    read = set().union(*(variables_read(path.read_text()) for path in sources))
    assert {"JAM_PORT", "JAM_MAX_SESSIONS", "MUSICGEN_WEIGHT_FORMAT", "COG_WEIGHTS"} <= read
    assert sorted(read - documented_variables(CONFIGURATION.read_text())) == []


def test_every_check_fails_on_text_that_breaks_it(tmp_path: Path):
    page = tmp_path / "page.md"
    page.write_text("# A `code` heading: here\n## Twice\n## Twice\n```bash\n# not a heading\n```\n")
    assert anchors(page.read_text()) == {"a-code-heading-here", "twice", "twice-1"}
    text = ("[ok](page.md#twice-1) [gone](nowhere.md) [bad anchor](page.md#not-a-heading) [self](#twice) "
            "[site](https://example.com/x.md)\n```\n[in code](nowhere-either.md)\n```\n")
    assert broken_links(page, text) == ["nowhere.md: no such file", "page.md#not-a-heading: no heading "
                                        "#not-a-heading in page.md"]
    assert missing_paths("`streaming/jam_ws.py`, engine.scheduler, `engine/api.py`, engine.api.Engine, "
                         "engine.api.Nothing, weights/demo/, [engine](engine.md)") == [
        "streaming/jam_ws.py", "engine.scheduler", "engine.api.Nothing"]
    assert variables_read('environ.get("JAM_X", "1"), number("JAM_Y", "2"), os.environ["COG_Z"], '
                          'os.environ["JAM_SET"] = "1", environ.get("HTTP_AUTHORIZATION")') == {
        "JAM_X", "JAM_Y", "COG_Z"}
    assert documented_variables("| `JAM_A` / `JAM_B` | `1` |\n| limit | `JAM_C` |\n") == {"JAM_A", "JAM_B"}
    assert history("Session 6 (2026-12-02), issue 17, (session 5); sessions 4 at once") == [
        "Session 6", "issue 17", "session 5"]

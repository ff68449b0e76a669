"""FastRTC's "Connecting via API" WebRTC snippets, rendered as its page renders them.

tests/data/fastrtc_webrtc_template.txt is the body of `webrtcTemplate` from shared/seeds/002 (FastRTC's
docs/userguide/api.md, the version before trickle ICE), line for line as the seed shows it (the seed's rendering lost
the indentation, which JavaScript ignores). The page renders it with doT (`{{? }}`, `{{?? }}`, `{{??}}`, `{{?}}`,
`{{= }}`, whitespace kept) for a modality and a mode, and shows the ```javascript block: `render` does the same
here and `snippet` returns that block, the code a user copies."""

import re

from tests.support import DATA

TEMPLATE = DATA / "fastrtc_webrtc_template.txt"
TAG = re.compile(r"\{\{(\?\?|\?|=)(.*?)\}\}", re.S)
CONDITION = re.compile(r'^it\.(\w+) === "([^"]*)"$')


def _holds(expression: str, it: dict) -> bool:
    """The template's conditions: `it.name === "value"` joined by `||` (anything else fails loudly)."""
    terms = [CONDITION.match(term.strip()) for term in expression.split("||")]
    assert all(terms), f"a condition this renderer does not read: {expression!r}"
    return any(it[term.group(1)] == term.group(2) for term in terms)


def render(modality: str, mode: str) -> str:
    """The template for `modality` and `mode`, as doT renders it (the template literal's \\` read as `)."""
    it = {"modality": modality, "mode": mode}
    source = TEMPLATE.read_text().replace("\\`", "`")
    out: list[str] = []
    stack: list[list[bool]] = []  # per open conditional: [this branch is shown, a branch was taken]
    position = 0

    def showing() -> bool:
        return all(shown for shown, _ in stack)

    for tag in TAG.finditer(source):
        if showing():
            out.append(source[position:tag.start()])
        position = tag.end()
        kind, expression = tag.group(1), tag.group(2).strip()
        if kind == "=":
            assert expression.startswith("it."), expression
            if showing():
                out.append(it[expression[3:]])
        elif kind == "?" and expression:  # if
            holds = _holds(expression, it)
            stack.append([holds, holds])
        elif kind == "?":  # end if
            stack.pop()
        else:  # else if / else
            branch = stack[-1]
            holds = not branch[1] and (not expression or _holds(expression, it))
            branch[0], branch[1] = holds, branch[1] or holds
    assert not stack, "an unclosed conditional"
    out.append(source[position:])
    return "".join(out)


def snippet(modality: str, mode: str) -> str:
    """The ```javascript block of the rendered template: the code FastRTC's page tells users to copy."""
    (code,) = re.findall(r"```javascript\n(.*?)```", render(modality, mode), re.S)
    return code


"""What every protocol does first with a client's message: bound its size and parse it as one JSON object. The
fields are read next, by pydantic models built from engine.params' rules."""

import json
import typing as tp

MAX_MESSAGE_BYTES = 64 * 1024


class WireError(ValueError):
    """The message or a field of it is unusable; the text says which and why."""


def load_object(text: str, max_bytes: int = MAX_MESSAGE_BYTES) -> dict[str, tp.Any]:
    size = len(text.encode())
    if size > max_bytes:
        raise WireError(f"message too large: {size} bytes, the limit is {max_bytes}")
    try:
        message = json.loads(text)
    except json.JSONDecodeError as exc:
        raise WireError(f"message is not valid JSON: {exc.msg} at position {exc.pos}") from None
    except ValueError as exc:  # e.g. an integer literal longer than Python's digit limit
        raise WireError(f"message is not valid JSON: {exc}") from None
    if not isinstance(message, dict):
        raise WireError("message must be a JSON object")
    return message

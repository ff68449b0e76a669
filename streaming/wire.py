"""What both protocols do first with a client's text frame: bound its size and parse it as one JSON object."""

import json
import typing as tp

MAX_MESSAGE_BYTES = 64 * 1024


class WireError(ValueError):
    """The frame is not a JSON object within the size limit; the message says which."""


def load_object(text: str, max_bytes: int = MAX_MESSAGE_BYTES) -> dict[str, tp.Any]:
    size = len(text.encode())
    if size > max_bytes:
        raise WireError(f"message too large: {size} bytes, the limit is {max_bytes}")
    try:
        message = json.loads(text)
    except json.JSONDecodeError as exc:
        raise WireError(f"message is not valid JSON: {exc.msg} at position {exc.pos}") from None
    if not isinstance(message, dict):
        raise WireError("message must be a JSON object")
    return message

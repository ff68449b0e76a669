"""What every protocol does first with a client's message: bound its size and parse it as one JSON object. The
fields are read next, by pydantic models built from engine.params' rules and the field types here that more than one
protocol's messages share."""

import base64
import binascii
import json
import typing as tp

from pydantic import BeforeValidator, ValidationInfo

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


def _base64_audio(value: tp.Any, info: ValidationInfo) -> tp.Optional[bytes]:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ValueError(f"{info.field_name} must be a base64 string of an audio file, got {type(value).__name__}")
    try:
        return base64.b64decode(value, validate=True)
    except (ValueError, binascii.Error):
        raise ValueError(f"{info.field_name} is not valid base64") from None


# An audio file sent inside a JSON message, base64-encoded (/ws/jam's melody, bar mode's loops, the gary plugins'
# uploads); null or "" is none. Errors name the field as the protocol spells it.
Base64Audio = tp.Annotated[tp.Optional[bytes], BeforeValidator(_base64_audio)]

"""What both protocols do first with a client's message: bound its size, parse it as one JSON object, and read
numbers that are really numbers of a sane size (JSON allows integers of any length)."""

import json
import math
import typing as tp

MAX_MESSAGE_BYTES = 64 * 1024
MAX_EXACT_INTEGER = 2**53  # beyond it an integer has no exact float; no parameter needs more


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


def bounded_number(value: tp.Any, name: str, low: float, high: float, integer: bool = False,
                   low_open: bool = False) -> tp.Union[int, float]:
    """`value` as an int or float within [low, high] (or (low, high] when low_open); WireError names the field."""
    kind = "an integer" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise WireError(f"{name} must be {kind}, got {value!r:.40}")
    if isinstance(value, int) and abs(value) > MAX_EXACT_INTEGER:
        raise WireError(f"{name} must be within [{low:g}, {high:g}], got an integer of {len(str(abs(value)))} digits")
    if not math.isfinite(value) or (integer and not float(value).is_integer()):
        raise WireError(f"{name} must be {kind}, got {value!r}")
    if (value <= low if low_open else value < low) or value > high:
        bound = f"({low:g}, {high:g}]" if low_open else f"[{low:g}, {high:g}]"
        raise WireError(f"{name} must be within {bound}, got {value}")
    return int(value) if integer else float(value)

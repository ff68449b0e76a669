"""The one rule for who may use the sidecar: JAM_TOKEN, offered as a query parameter or a bearer header."""

import hmac
import typing as tp


def authorized(headers: tp.Mapping[str, str], query: tp.Mapping[str, str], token: tp.Optional[str],
               extra_header: tp.Optional[str] = None, extra_query: tp.Optional[str] = None) -> bool:
    """True when no token is configured, or one of the offered credentials equals it (plus a protocol's own key
    field, such as Lyria's API key)."""
    if token is None:
        return True
    offered = [query.get("token"), headers.get("authorization", "").removeprefix("Bearer ").strip() or None]
    if extra_header:
        offered.append(headers.get(extra_header))
    if extra_query:
        offered.append(query.get(extra_query))
    return any(hmac.compare_digest(candidate.encode(), token.encode()) for candidate in offered if candidate)

"""Who may reach the sidecar from a web browser: the one place for its Host, Origin, CORS and content-type rules.

Why: the sidecar is local-first (gary4juce calls http://localhost:8000, musicians leave JAM_TOKEN unset), and the
musician's browser visits other sites on the same machine. WebSockets are not covered by CORS, a "simple"
cross-origin POST (text/plain, a form) needs no preflight, and a DNS-rebinding page reaches 127.0.0.1 under a name
of its own. So `Guard`, an ASGI middleware around the whole sidecar app (HTTP and every WebSocket upgrade: /ws/jam,
Lyria, Socket.IO, FastRTC's), refuses before any route runs, at the cost of one refused request:

1. Host (DNS rebinding, as Ollama checks it): bound to a loopback address, a request whose Host names anything but
   `localhost` / `*.localhost` or a pattern of JAM_ALLOWED_HOSTS gets 403. An IP literal passes (a rebinding page
   always comes by a name), and so does a request without Host (HAProxy's HTTP/1.0 health check). Bound to another
   address (a container), every Host is served unless JAM_ALLOWED_HOSTS is set, which then says which are.
2. Origin (Ollama's OLLAMA_ORIGINS rule, python-engineio's same-origin default): a request or upgrade that carries an
   `Origin` which is neither the sidecar's own (the host and port it was sent to) nor matched by
   JAM_ALLOWED_ORIGINS gets 403 naming the setting. Native clients (gary4live's Node client, gary4juce, the seed's
   Python clients, google-genai, aiortc) send no Origin; the jam page sends its own.
3. CORS: an origin JAM_ALLOWED_ORIGINS allows gets Access-Control-Allow-Origin on its answers and its preflights
   answered; no other origin gets any CORS header.
4. JSON means JSON: a body on POST/PUT/PATCH/DELETE must be declared `application/json` (or `+json`), or on the form
   routes (magenta-retry's multipart API, `form_paths`) a form type; anything else gets 415.

Patterns are Ollama's: comma-separated, `*` matching any run of characters (`http://localhost:*`,
`https://*.example.com`, `*` for every origin).
"""

import ipaddress
import logging
import re
import typing as tp
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.responses import JSONResponse, Response

from streaming.app.config import ServerConfig

logger = logging.getLogger(__name__)

BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")
DEFAULT_PORTS = {"http": 80, "ws": 80, "https": 443, "wss": 443}
CORS_METHODS = "GET, POST, PUT, PATCH, DELETE, OPTIONS"
CORS_HEADERS = "Authorization, Content-Type, X-Goog-Api-Key"
PREFLIGHT_MAX_AGE = "600"
ORIGIN_REFUSED = ("origin {origin!r} may not use this server: a web page of another origin needs its origin in "
                  "JAM_ALLOWED_ORIGINS (comma-separated, * as a wildcard)")
HOST_REFUSED = ("host {host!r} is not served here: add it to JAM_ALLOWED_HOSTS (a bound-to-loopback sidecar serves "
                "localhost names and IP addresses only, so that a DNS-rebinding page reads nothing)")


def compile_patterns(patterns: tp.Iterable[str]) -> tp.Optional[re.Pattern]:
    """One regular expression for the patterns (`*`: any run of characters, the rest literal), None for none."""
    alternatives = [".*".join(re.escape(part) for part in pattern.split("*")) for pattern in patterns]
    return re.compile("|".join(alternatives), re.IGNORECASE) if alternatives else None


def split_host(value: str) -> tuple[str, tp.Optional[int]]:
    """A Host header's (host, port): `[::1]:8765` -> ("::1", 8765), `localhost` -> ("localhost", None)."""
    value = value.strip().lower()
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port = value.rpartition(":") if value.count(":") == 1 else (value, "", "")
    return host, int(port) if port.isdigit() else None


def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def is_loopback(host: str) -> bool:
    """A loopback name or address (what a bind address or a Host header may say)."""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def same_origin(origin: str, host_header: tp.Optional[str]) -> bool:
    """True when the page's origin is the host and port the request was sent to (the scheme is not compared: a
    TLS-terminating balancer in front of the sidecar is the same site)."""
    if not host_header:
        return False
    try:
        parts = urlsplit(origin)
        origin_port = parts.port or DEFAULT_PORTS.get(parts.scheme)
    except ValueError:
        return False
    host, port = split_host(host_header)
    return bool(parts.hostname) and parts.hostname == host and origin_port == (port or DEFAULT_PORTS.get(parts.scheme))


def exposure_warning(config: ServerConfig) -> tp.Optional[str]:
    """The warning for a sidecar reachable from other machines with no token (logged at start, shown by /health),
    None when it is bound to loopback or JAM_TOKEN is set."""
    if config.token is not None or is_loopback(config.host):
        return None
    return (f"JAM_TOKEN is unset and the sidecar listens on {config.host}: anyone who can reach this port can open "
            f"sessions on this GPU and submit jobs. Set JAM_TOKEN, or bind to 127.0.0.1 (JAM_HOST) on a "
            f"musician's own machine")


class Guard:
    """The ASGI middleware (module docstring); `form_paths` are the routes whose bodies are forms, not JSON."""

    def __init__(self, app: tp.Any, config: ServerConfig, form_paths: tp.Iterable[str] = ()) -> None:
        self.app = app
        self.origins = compile_patterns(config.allowed_origins)
        self.hosts = compile_patterns(config.allowed_hosts)
        self.host_checked = is_loopback(config.host) or self.hosts is not None
        self.form_paths = frozenset(form_paths)

    async def __call__(self, scope: dict, receive: tp.Callable, send: tp.Callable) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        refusal = self.refusal(scope, headers)
        if refusal is not None:
            status, message = refusal
            logger.info("refused %s %s: %s", scope["type"], scope.get("path"), message)
            await refuse(scope, receive, send, status, message)
            return
        origin = headers.get("origin")
        if origin is None or scope["type"] != "http" or same_origin(origin, headers.get("host")):
            await self.app(scope, receive, send)
            return
        if scope["method"] == "OPTIONS" and "access-control-request-method" in headers:
            await Response(status_code=204, headers={
                **cors_headers(origin), "Access-Control-Allow-Methods": CORS_METHODS,
                "Access-Control-Allow-Headers": CORS_HEADERS, "Access-Control-Max-Age": PREFLIGHT_MAX_AGE,
            })(scope, receive, send)
            return

        async def send_with_cors(message: dict) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []),
                                                  *((k.lower().encode(), v.encode())
                                                    for k, v in cors_headers(origin).items())]}
            await send(message)

        await self.app(scope, receive, send_with_cors)

    def refusal(self, scope: dict, headers: Headers) -> tp.Optional[tuple[int, str]]:
        """(status, message) for a request the rules refuse, else None."""
        host_header = headers.get("host")
        if host_header and self.host_checked:
            host, _ = split_host(host_header)
            allowed = self.hosts is not None and (self.hosts.fullmatch(host) or self.hosts.fullmatch(host_header))
            if not (allowed or is_ip(host) or is_loopback(host)):
                return 403, HOST_REFUSED.format(host=host_header[:100])
        origin = headers.get("origin")
        if origin is not None and not same_origin(origin, host_header) and not (
                self.origins is not None and self.origins.fullmatch(origin.strip().rstrip("/"))):
            return 403, ORIGIN_REFUSED.format(origin=origin[:100])
        if scope["type"] == "http" and scope["method"] in BODY_METHODS and has_body(headers):
            return self.content_type_refusal(scope["path"], headers.get("content-type", ""))
        return None

    def content_type_refusal(self, path: str, content_type: str) -> tp.Optional[tuple[int, str]]:
        media_type = content_type.partition(";")[0].strip().lower()
        if path in self.form_paths:
            if media_type in FORM_TYPES:
                return None
            return 415, f"send this route's body as multipart/form-data, not {media_type or 'no content type'!r}"
        if media_type == "application/json" or (media_type.startswith("application/") and
                                                media_type.endswith("+json")):
            return None
        return 415, (f"send JSON bodies with Content-Type: application/json, not "
                     f"{media_type or 'no content type'!r}")


def has_body(headers: Headers) -> bool:
    length = headers.get("content-length")
    return "transfer-encoding" in headers or (length is not None and length.strip() not in ("", "0"))


def cors_headers(origin: str) -> dict[str, str]:
    return {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}


async def refuse(scope: dict, receive: tp.Callable, send: tp.Callable, status: int, message: str) -> None:
    """The refusal as a JSON answer (`error`, and `detail` as magenta-retry's clients read it); a WebSocket upgrade
    gets it as its HTTP answer where the server supports that (uvicorn does), else a 403 close."""
    response = JSONResponse({"error": message, "detail": message}, status_code=status)
    if scope["type"] == "http" or "websocket.http.response" in scope.get("extensions", {}):
        await response(scope, receive, send)  # Starlette sends a WebSocket scope's as its denial response
    else:
        await send({"type": "websocket.close", "code": 1008, "reason": message[:120]})

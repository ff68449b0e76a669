"""The sidecar's ASGI app: routes (/ws/jam, Lyria, WebRTC, the jam page, health, the gary plugins' HTTP API and
Socket.IO events, the model routes), the connection cap, auth at the door."""

import logging
import typing as tp
from concurrent.futures import Executor

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from streaming.app.auth import authorized
from streaming.app.capacity import Drain
from streaming.app.config import ServerConfig
from streaming.app.page import page_routes
from streaming.bar.http import generate_routes, jam_routes
from streaming.gary.http import gary_routes
from streaming.gary.protocol import InputStore
from streaming.gary.service import GaryService
from streaming.gary.socketio import socketio_server, with_socketio
from streaming.jam.ws import JamConnection
from streaming.jobs.table import JobTable
from streaming.lyria import protocol as lp
from streaming.lyria.ws import LyriaConnection
from streaming.sessions.recording_http import recording_routes
from streaming.sessions.registry import SessionRegistry
from streaming.webrtc.http import webrtc_routes

logger = logging.getLogger(__name__)

NOISE_NOTICE = "demo checkpoint with random weights: this audio is noise, not music"
CLOSE_POLICY = 1008
CLOSE_TRY_AGAIN = 1013


class ConnectionCount:
    """Open sockets, counted on the event loop thread (no locking needed there)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.active = 0

    def try_acquire(self) -> bool:
        if self.active >= self.limit:
            return False
        self.active += 1
        return True

    def release(self) -> None:
        self.active -= 1


def build_app(engine, config: ServerConfig, blocking: Executor, drain: Drain, jobs: JobTable,
              registry: SessionRegistry) -> tp.Any:
    """The ASGI app; `blocking` runs the transports' blocking engine calls (its owner shuts it down), `drain` is
    the replica's drain (its owner may start it from outside a request, as SIGTERM does), `jobs` the table of
    prediction jobs the DAW clients submit, `registry` the live sessions by id (their owner closes both)."""
    connections = ConnectionCount(config.max_connections)
    notice = NOISE_NOTICE if engine.is_demo else None
    drain.join(registry)  # while draining no dropped session is held; at its end the held ones close
    gary = GaryService(engine, jobs, draining=lambda: drain.active,
                       store=InputStore(max_bytes=config.retry_bytes))

    async def health(request: Request) -> JSONResponse:
        """Liveness. `status` is "ready" while the engine works (a value the gary plugins and the Darius tab
        accept; the engine is loaded before the sidecar serves, so it is never "initializing"), else
        "unhealthy" with the problem and a 503; `ok` and `warmed` as the Darius tab reads them."""
        state, described = engine.health(), engine.describe()
        body = {"ok": state.ok, "status": "ready" if state.ok else "unhealthy", "warmed": state.ok,
                "sessions": engine.sessions_open,
                "max_sessions": described["max_sessions"], "connections": connections.active,
                "max_connections": connections.limit, "model": described}
        if not state.ok:
            body["problem"] = state.problem
        return JSONResponse(body, status_code=200 if state.ok else 503)

    async def ready(request: Request) -> JSONResponse:
        """Readiness for balancers (liveness stays /health): 200 only while a new session can start here; while
        draining, what the drain still waits for (sessions, jobs) and for how long at most."""
        capacity = drain.capacity()
        body = capacity.describe()
        if drain.active:
            body["seconds_left"] = round(drain.seconds_left, 1)
        return JSONResponse(body, status_code=200 if capacity.ready else 503)

    async def start_drain(request: Request) -> JSONResponse:
        """With JAM_TOKEN set, the token opens it; without, only this machine may (a preStop hook, an operator)."""
        local = request.client is not None and request.client.host in ("127.0.0.1", "::1")
        if not authorized(request.headers, request.query_params, config.token) or (config.token is None
                                                                                   and not local):
            return JSONResponse({"error": "unauthorized: send JAM_TOKEN as a Bearer token (without JAM_TOKEN, "
                                          "drain from the replica's own host)"}, status_code=401)
        drain.start()
        if request.query_params.get("wait") in ("1", "true"):  # a preStop hook: return once the jams are over
            await drain.done.wait()
        return JSONResponse({**drain.capacity().describe(), "seconds_left": drain.seconds_left,
                             "drained": drain.done.is_set()})

    async def serve(websocket: WebSocket, connection: tp.Callable[[], tp.Any], **auth_fields: str) -> None:
        await websocket.accept()
        if not authorized(websocket.headers, websocket.query_params, config.token, **auth_fields):
            reason = "API key not valid: send JAM_TOKEN as the API key" if auth_fields else "missing or wrong token"
            await websocket.close(CLOSE_POLICY, reason)
            return
        if not connections.try_acquire():
            await websocket.close(CLOSE_TRY_AGAIN, f"too many connections (limit {connections.limit})")
            return
        live = connection()
        drain.join(live)
        try:
            await live.run()
        finally:
            drain.leave(live)
            connections.release()

    async def jam(websocket: WebSocket) -> None:
        await serve(websocket, lambda: JamConnection(websocket, engine, config, blocking, registry, notice))

    async def lyria(websocket: WebSocket) -> None:
        await serve(websocket, lambda: LyriaConnection(websocket, engine, config, blocking, registry),
                    extra_header="x-goog-api-key",
                    extra_query="key")

    routes = [Route("/health", health), Route("/ready", ready), Route("/admin/drain", start_drain, methods=["POST"]),
              WebSocketRoute("/ws/jam", jam), WebSocketRoute(lp.PATH, lyria),
              *webrtc_routes(engine, config, blocking, notice, drain, registry),
              *gary_routes(gary, engine, config, registry),
              *recording_routes(engine, registry, config.token), *page_routes(),
              *generate_routes(engine, jobs, notice, config.token, draining=lambda: drain.active,
                               selected=lambda: registry.model),
              *jam_routes(engine, registry, blocking, notice, config.token)]
    return with_socketio(socketio_server(gary, config, connections), Starlette(routes=routes))

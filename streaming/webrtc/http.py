"""WebRTC signalling in FastRTC's wire format: `POST /webrtc/offer` (a new peer, a resumed one, or a trickled ICE
candidate) and `POST /webrtc/input` (steering a peer by id). The peers themselves are streaming.webrtc.peer's."""

import logging
import typing as tp
from concurrent.futures import Executor

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from engine.api import CapacityError
from streaming.app.auth import authorized
from streaming.app.capacity import Drain
from streaming.app.config import ServerConfig
from streaming.jam import protocol as jp
from streaming.sessions.registry import SessionError, SessionRegistry
from streaming.webrtc import protocol as wp
from streaming.webrtc.peer import Peer

logger = logging.getLogger(__name__)


def webrtc_routes(engine, config: ServerConfig, blocking: Executor, notice: tp.Optional[str],
                  drain: Drain, registry: SessionRegistry) -> list[Route]:
    """`POST /webrtc/offer` and `POST /webrtc/input`; sessions come from the engine's slots, shared with the
    WebSocket transports, and are registered by id (an offer may resume a held one); `blocking` runs their
    blocking engine calls; every peer hears the drain."""
    peers: dict[str, Peer] = {}

    def release(peer: Peer) -> None:
        drain.leave(peer)
        if peers.get(peer.webrtc_id) is peer:
            del peers[peer.webrtc_id]

    async def offer(request: Request) -> JSONResponse:
        if not authorized(request.headers, request.query_params, config.token):
            return JSONResponse(wp.failed("unauthorized", detail="missing or wrong token: send JAM_TOKEN as "
                                                                 "?token= or an Authorization: Bearer header"))
        try:
            command = wp.parse_signal(await request.body())
        except wp.RequestFailed as exc:
            return JSONResponse(exc.body())
        if isinstance(command, wp.Candidate):
            return JSONResponse(await trickle(command))
        if command.webrtc_id in peers:
            return JSONResponse(wp.failed("connection_already_exists"))
        peer = Peer(command.webrtc_id, command, engine, blocking, notice, release, registry)
        peers[command.webrtc_id] = peer  # before any await: a second offer with this id is refused
        drain.join(peer)
        phase = "session_unavailable"
        try:
            await peer.start_session()
            phase = "invalid_request"
            sdp = await peer.answer(config.webrtc_connect_timeout)
        except BaseException as exc:  # a failed or cancelled offer still gives its slot back
            await peer.close(f"offer failed: {exc!r}")
            if not isinstance(exc, Exception):
                raise
            if isinstance(exc, CapacityError):
                return JSONResponse(wp.failed("concurrency_limit_reached", limit=exc.limit))
            if isinstance(exc, SessionError):
                return JSONResponse(wp.failed("unknown_session", detail=str(exc)))
            detail = str(exc) if phase == "session_unavailable" else f"the offer cannot be answered: {exc}"
            return JSONResponse(wp.failed(phase, detail=detail))
        if command.audio:
            logger.info("webrtc %s: answered (seed %d)", command.webrtc_id, peer.seed)
        else:
            logger.info("webrtc %s: answered an offer without audio; its data channel hears what to add",
                        command.webrtc_id)
        return JSONResponse(wp.answer(sdp))

    async def trickle(command: wp.Candidate) -> dict:
        peer = peers.get(command.webrtc_id)
        if peer is None:
            return wp.failed("unknown_connection")
        try:
            await peer.add_candidate(command.candidate)
        except LookupError:
            return wp.failed("unknown_connection")
        except (ValueError, TimeoutError) as exc:
            return wp.failed("invalid_candidate", detail=str(exc) or "the offer was never applied")
        return wp.success()

    async def steer(request: Request) -> JSONResponse:
        if not authorized(request.headers, request.query_params, config.token):
            return JSONResponse(wp.failed("unauthorized", detail="missing or wrong token"))
        try:
            command = wp.parse_input(await request.body())
        except wp.RequestFailed as exc:
            return JSONResponse(exc.body())
        peer = peers.get(command.webrtc_id)
        if peer is None:
            return JSONResponse(wp.failed("unknown_connection"))
        try:
            update = peer.controls.update(command.params)
        except jp.ProtocolError as exc:
            return JSONResponse(wp.failed("invalid_params", detail=str(exc)))
        try:
            acknowledgement = await peer.steer(update)
        except RuntimeError as exc:  # SessionClosed too
            return JSONResponse(wp.failed("update_failed", detail=str(exc)))
        peer.send(wp.log(acknowledgement))
        return JSONResponse(wp.success(data=acknowledgement))

    return [Route("/webrtc/offer", offer, methods=["POST"]), Route("/webrtc/input", steer, methods=["POST"])]

"""gary4juce's HTTP routes on the sidecar port, a thin shell over streaming.gary.service, plus the model routes
its Darius tab reads (streaming.gary.model_info). gary4juce's local mode calls http://localhost:8000 (run the sidecar
with JAM_PORT=8000); it sends no token, so these routes are open only while JAM_TOKEN is unset.

    GET  /api/models                          the loaded checkpoint, by size
    POST /api/juce/process_audio              {model_name, prompt_duration, audio_data, top_k, temperature,
    POST /api/juce/continue_music              cfg_coef, description, seed} -> {success, session_id, seed}
    POST /api/juce/retry_music                {session_id, ...the same but audio_data}
    GET  /api/juce/poll_status/{session_id}   progress, queue_status, then audio_data or error
    GET  /model/config, /model/assets/status, /model/checkpoints; POST /model/select
"""

import asyncio
import typing as tp

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from streaming.app.auth import authorized
from streaming.app.config import ServerConfig
from streaming.gary import model_info
from streaming.gary import protocol as gp
from streaming.gary.service import GaryService
from streaming.wire import WireError, load_object

UPLOADS_AT_ONCE = 4  # requests whose bodies are read and decoded at once (each may hold a few times 96 MiB)
UNAUTHORIZED = "unauthorized: send JAM_TOKEN as a Bearer token or ?token= (gary4juce sends none: unset JAM_TOKEN)"


async def read_json(request: Request, max_bytes: int = gp.MAX_BODY_BYTES) -> tp.Any:
    """The body as JSON, read in pieces and refused past `max_bytes` (uvicorn sets no body limit of its own)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise gp.GaryError(f"request body is {int(declared)} bytes; the limit is {max_bytes}", 413)
    pieces, size = [], 0
    async for piece in request.stream():
        size += len(piece)
        if size > max_bytes:
            raise gp.GaryError(f"request body is over the {max_bytes}-byte limit", 413)
        pieces.append(piece)
    try:
        return await asyncio.to_thread(lambda: load_object(b"".join(pieces).decode("utf-8", "replace"), max_bytes))
    except WireError as exc:
        raise gp.GaryError(f"the body: {exc}") from None


def failure(error: gp.GaryError) -> JSONResponse:
    return JSONResponse({"success": False, "error": str(error)}, status_code=error.status)


def gary_routes(service: GaryService, engine, config: ServerConfig, registry) -> list[Route]:
    """`registry` (streaming.sessions.registry) keeps magenta-retry's model selection for bar mode."""
    uploads = asyncio.Semaphore(UPLOADS_AT_ONCE)
    def allowed(request: Request) -> bool:
        return authorized(request.headers, request.query_params, config.token)

    def guarded(handler: tp.Callable[[Request], tp.Awaitable[JSONResponse]]):
        async def endpoint(request: Request) -> JSONResponse:
            if not allowed(request):
                return JSONResponse({"success": False, "ok": False, "error": UNAUTHORIZED}, status_code=401)
            try:
                return await handler(request)
            except gp.GaryError as exc:
                return failure(exc)
            except ClientDisconnect:
                return JSONResponse({"success": False, "error": "the client disconnected"}, status_code=400)
        return endpoint

    def submitter(kind: str):
        async def submit(request: Request) -> JSONResponse:
            async with uploads:
                body = await read_json(request)
                return JSONResponse(await asyncio.to_thread(service.submit, kind, body))
        return submit

    async def poll(request: Request) -> JSONResponse:
        return JSONResponse(service.poll(request.path_params["session_id"]))

    async def models(request: Request) -> JSONResponse:
        return JSONResponse(service.models())

    async def config_route(request: Request) -> JSONResponse:
        return JSONResponse(model_info.model_config(engine.describe(), engine.sessions_open, engine.health().ok,
                                                    registry.model))

    async def assets(request: Request) -> JSONResponse:
        return JSONResponse(model_info.assets_status())

    async def checkpoints(request: Request) -> JSONResponse:
        query = request.query_params
        return JSONResponse(model_info.checkpoints(query.get("repo_id"), query.get("revision")))

    async def select(request: Request) -> JSONResponse:
        body = await read_json(request, max_bytes=64 * 1024)
        answer, chosen = model_info.select(body, engine.describe(), engine.health().ok, engine.models())
        if answer["ok"] and not answer["dry_run"]:
            registry.model = chosen
        return JSONResponse(answer)

    return [Route("/api/models", guarded(models)),
            Route("/api/juce/process_audio", guarded(submitter(gp.PROCESS)), methods=["POST"]),
            Route("/api/juce/continue_music", guarded(submitter(gp.CONTINUE)), methods=["POST"]),
            Route("/api/juce/retry_music", guarded(submitter(gp.RETRY)), methods=["POST"]),
            Route("/api/juce/poll_status/{session_id}", guarded(poll)),
            Route("/model/config", guarded(config_route)), Route("/model/assets/status", guarded(assets)),
            Route("/model/checkpoints", guarded(checkpoints)),
            Route("/model/select", guarded(select), methods=["POST"])]

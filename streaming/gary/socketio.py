"""gary4live's Socket.IO events (the Max for Live device's socket.io-client, `transports: ['websocket']`), a thin
shell over streaming.gary.service, served at /socket.io/ on the sidecar port.

In:  process_audio_request / continue_music_request / retry_music_request ({audio_data, model_name, session_id,
     prompt_duration, top_k?, temperature?, cfg_coef?, description?, seed?}), update_cropped_audio ({session_id,
     audio_data}), cleanup_session_request ({session_id}), request_progress_status ({session_id}).
Out, to the requesting client only: audio_processed / music_continued / music_retried ({audio_data,
     session_id}), progress_update ({progress} 0-100), queue_status ({status, message, position, total_queued,
     estimated_seconds}), error ({message}), update_cropped_audio_complete ({session_id}).

A client's jobs are cancelled when it disconnects; each job is followed by one task that ends with it (jobs are
bounded in time by the job table). With JAM_TOKEN set, connect with `auth: {token}`, `?token=` or a Bearer header
(gary4live sends none).
"""

import asyncio
import logging
import typing as tp
from urllib.parse import parse_qs

import socketio

from streaming.app.auth import authorized
from streaming.app.config import ServerConfig
from streaming.gary import protocol as gp
from streaming.gary.service import GaryService
from streaming.jobs.table import COMPLETED, FINISHED

logger = logging.getLogger(__name__)

FOLLOW_SECONDS = 0.25  # how often a job's progress is looked at for its client
DONE_EVENTS = {gp.PROCESS: "audio_processed", gp.CONTINUE: "music_continued", gp.RETRY: "music_retried"}
SOCKETIO_OVERHEAD_BYTES = 1024 * 1024  # an event's framing and other fields beside its audio_data


def _credentials(environ: dict, auth: tp.Any) -> tuple[dict, dict]:
    headers = {"authorization": environ.get("HTTP_AUTHORIZATION", "")}
    query = {k: v[0] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
    if isinstance(auth, dict) and isinstance(auth.get("token"), str):
        query.setdefault("token", auth["token"])
    return headers, query


def socketio_server(service: GaryService, config: ServerConfig, connections: tp.Any) -> socketio.AsyncServer:
    """`connections` is the sidecar's open-socket cap (streaming.app.routes.ConnectionCount): a Socket.IO client takes
    one place in it, as a WebSocket does."""
    # Origins: streaming.app.guard decides for every path, this one too (same origin or JAM_ALLOWED_ORIGINS; Node
    # clients such as the Max device send no Origin and are let in), so engine.io's own check is off ([])
    sio = socketio.AsyncServer(async_mode="asgi", transports=["websocket"], cors_allowed_origins=[],
                               max_http_buffer_size=gp.MAX_BODY_BYTES + SOCKETIO_OVERHEAD_BYTES)
    followers: dict[str, set[asyncio.Task]] = {}

    @sio.event
    async def connect(sid: str, environ: dict, auth: tp.Any = None) -> None:
        headers, query = _credentials(environ, auth)
        if not authorized(headers, query, config.token):
            raise socketio.exceptions.ConnectionRefusedError("unauthorized: send JAM_TOKEN as auth.token")
        if not connections.try_acquire():
            raise socketio.exceptions.ConnectionRefusedError(f"too many connections (limit {connections.limit})")
        followers[sid] = set()

    @sio.event
    async def disconnect(sid: str, *reason: tp.Any) -> None:
        if sid not in followers:  # refused at connect: it holds no place
            return
        connections.release()
        for task in followers.pop(sid):
            task.cancel()
        cancelled = service.jobs.cancel_owner(sid)
        if cancelled:
            logger.info("gary4live client %s left: %d job(s) cancelled", sid[:8], cancelled)

    async def error(sid: str, message: str) -> None:
        await sio.emit("error", {"message": message}, to=sid)

    async def follow(sid: str, kind: str, job_id: str) -> None:
        """Relays a job's queue place and progress to its client, then its result or error."""
        shown: tp.Any = None
        pending = service.jobs.future(job_id)
        if pending is None:  # forgotten already (a cleanup_session_request raced it)
            await error(sid, f"session {job_id[:40]!r} was cleaned up before it finished")
            return
        future = asyncio.wrap_future(pending)
        while True:
            status = service.jobs.status(job_id)
            if status is None or status.state in FINISHED:
                break
            if status.waiting:
                update = ("queue_status", gp.queue_status(status, service.jobs.counts()["queued"]))
            else:
                update = ("progress_update", {"progress": gp.percent(status)})
            if update != shown:
                shown = update
                await sio.emit(update[0], update[1], to=sid)
            await asyncio.wait([future], timeout=FOLLOW_SECONDS)
        if status is not None and status.state == COMPLETED:
            await sio.emit("progress_update", {"progress": 100}, to=sid)
            await sio.emit(DONE_EVENTS[kind], {"audio_data": status.result["audio_data"], "session_id": job_id},
                           to=sid)
            service.jobs.discard(job_id)  # delivered; the stored input stays for a retry
        else:
            await error(sid, f"generation failed: {status.error if status else 'the job is gone'}")

    def requester(kind: str):
        async def handle(sid: str, data: tp.Any = None) -> None:
            try:
                answer = await asyncio.to_thread(service.submit, kind, data, sid)
            except gp.GaryError as exc:
                await error(sid, str(exc))
                return
            task = asyncio.create_task(follow(sid, kind, answer["session_id"]))
            tasks = followers.get(sid)
            if tasks is None:  # the client left while its request was decoded
                task.cancel()
                service.jobs.cancel_owner(sid)
                return
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        return handle

    for event, kind in (("process_audio_request", gp.PROCESS), ("continue_music_request", gp.CONTINUE),
                        ("retry_music_request", gp.RETRY)):
        sio.on(event, requester(kind))

    @sio.on("update_cropped_audio")
    async def update_cropped_audio(sid: str, data: tp.Any = None) -> None:
        try:
            key = await asyncio.to_thread(service.update_cropped, data)
        except gp.GaryError as exc:
            await error(sid, str(exc))
            return
        await sio.emit("update_cropped_audio_complete", {"session_id": key}, to=sid)

    @sio.on("cleanup_session_request")
    async def cleanup_session_request(sid: str, data: tp.Any = None) -> None:
        try:
            service.cleanup(data)
        except gp.GaryError as exc:
            await error(sid, str(exc))

    @sio.on("request_progress_status")
    async def request_progress_status(sid: str, data: tp.Any = None) -> None:
        try:
            status = service.jobs.status(gp.session_id(data))
        except gp.GaryError as exc:
            await error(sid, str(exc))
            return
        if status is not None:
            await sio.emit("progress_update", {"progress": gp.percent(status)}, to=sid)

    return sio


def with_socketio(sio: socketio.AsyncServer, app: tp.Any) -> socketio.ASGIApp:
    """`app` with Socket.IO answering at /socket.io/ (every other path goes to `app`)."""
    return socketio.ASGIApp(sio, other_asgi_app=app, socketio_path="socket.io")

"""magenta-retry's HTTP API on the sidecar port: `POST /generate` + `GET /progress` (gary4juce's Darius tab), and
the `/jam/*` routes of a bar session. Multipart forms in, JSON out, as that `app.py` answers them: errors as
`{"detail": "..."}` with its status codes (400 bad input, 404 unknown session, 408 no chunk within 30 s, 413 too
large, 429 no free slot or a full job queue, and 503 where this sidecar adds a case of its own: a draining replica's
`/generate`).
"""

import asyncio
import logging
import typing as tp
import uuid
from concurrent.futures import Executor, Future

from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from engine.api import CapacityError, EngineUnavailable, SessionClosed, random_seed
from streaming.app.auth import authorized
from streaming.bar import events as be
from streaming.bar import protocol as bp
from streaming.bar.generate import GenerateRequest, decode_loop, generate_work
from streaming.bar.session import BarSession, open_jam
from streaming.jam.protocol import ProtocolError
from streaming.jobs.table import COMPLETED, FAILED, FINISHED, InputTooLarge, JobTable, TableFull
from streaming.sessions.registry import SessionError

logger = logging.getLogger(__name__)

MAX_FORM_BYTES = bp.MAX_AUDIO_MESSAGE_BYTES + 64 * 1024  # one audio file and the text fields
WORK_SECONDS_PER_BAR_SECOND = 1.0  # the job table's estimate of work, in seconds of audio
NEXT_TIMEOUT_SECONDS = 30.0  # /jam/next waits this long for a chunk, then 408 (app.py's JamWorker default)


class HttpError(Exception):
    def __init__(self, status: int, detail: str, **extra: tp.Any) -> None:
        super().__init__(detail)
        self.status, self.detail, self.extra = status, detail, extra


def error_response(exc: HttpError) -> JSONResponse:
    return JSONResponse({"detail": exc.detail, **exc.extra}, status_code=exc.status)


async def applied(change: Future) -> None:
    """Waits for a change the source makes on its thread; one it refuses (ValueError) is the client's 400."""
    try:
        await asyncio.wrap_future(change)
    except ValueError as exc:
        raise HttpError(400, str(exc)) from None


async def read_form(request: Request, file_field: tp.Optional[str]) -> tuple[dict, tp.Optional[bytes]]:
    """The form's text fields and the named file's bytes (None when absent); 413 beyond MAX_FORM_BYTES."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > MAX_FORM_BYTES:
        raise HttpError(413, f"request too large: {int(length)} bytes, the limit is {MAX_FORM_BYTES}")
    try:
        form = await request.form(max_files=4, max_fields=64, max_part_size=MAX_FORM_BYTES)
    except Exception as exc:  # malformed multipart, or a part over the limit
        raise HttpError(400, f"could not read the form: {exc}") from None
    try:
        fields = {key: value for key, value in form.items() if isinstance(value, str)}
        data = None
        upload = form.get(file_field) if file_field else None
        if isinstance(upload, UploadFile):
            data = await upload.read(MAX_FORM_BYTES + 1)
            if len(data) > bp.MAX_AUDIO_MESSAGE_BYTES:
                raise HttpError(413, f"{file_field} is over {bp.MAX_AUDIO_MESSAGE_BYTES} bytes")
        return fields, data
    finally:
        await form.close()


def generate_routes(engine, jobs: JobTable, notice: tp.Optional[str], token: tp.Optional[str],
                    draining: tp.Callable[[], bool] = lambda: False,
                    selected: tp.Callable[[], tp.Optional[str]] = lambda: None) -> list[Route]:
    """`/generate` and `/progress` on the job table shared with the other poll APIs; while the replica drains
    (`draining()`), new generations are refused with 503 (the running ones finish: the drain waits for them).
    `selected()`: the adapter magenta-retry's /model/select chose (SessionRegistry.model)."""

    def check(request: Request) -> None:
        if not authorized(request.headers, request.query_params, token):
            raise HttpError(401, "missing or wrong token")

    async def generate(request: Request) -> JSONResponse:
        request_id = None
        try:
            check(request)
            if draining():
                raise HttpError(503, "this server is draining: send the request to another one")
            fields, data = await read_form(request, "loop_audio")
            request_id = fields.get("request_id") or str(uuid.uuid4())
            if data is None:
                raise HttpError(400, "loop_audio: a file is required", request_id=request_id)
            try:
                form = bp.read_form(bp.GenerateForm, fields)
                if "bpm" not in fields:
                    raise ProtocolError("bpm: field required")
                values, drop = form.model_dump(), form.intro_bars_to_drop
                checked = bp.bar_params(values, loop_rate=48000, bars_key="bars")  # the loop's rate comes later
            except ProtocolError as exc:
                raise HttpError(400, str(exc), request_id=request_id) from None
            seconds = (drop + checked.bars_per_chunk) * checked.clock.seconds_per_bar
            if seconds > bp.MAX_CHUNK_SECONDS:
                raise HttpError(400, f"intro_bars_to_drop: {drop} + {checked.bars_per_chunk} bars at "
                                     f"{checked.bpm:g} bpm are {seconds:.0f} s; at most "
                                     f"{bp.MAX_CHUNK_SECONDS:.0f} s can be generated at once",
                                request_id=request_id)
            job = GenerateRequest(values=values, intro_bars_to_drop=drop, loop=data, request_id=request_id)
            work = generate_work(engine, job, notice, selected())
            try:
                jobs.submit(work, work_seconds=seconds * WORK_SECONDS_PER_BAR_SECOND, input_bytes=len(data),
                            job_id=request_id)
            except TableFull as exc:
                raise HttpError(429, str(exc), request_id=request_id) from None
            except InputTooLarge as exc:
                raise HttpError(413, f"loop_audio: {exc}", request_id=request_id) from None
            except ValueError as exc:
                raise HttpError(400, f"request_id: {exc}", request_id=request_id) from None
            try:
                body = await asyncio.wrap_future(jobs.future(request_id))
                jobs.delivered(request_id)  # answered in this response: /progress needs it a moment more, no more
                return JSONResponse(body)
            except ProtocolError as exc:
                raise HttpError(400, str(exc), error=str(exc), request_id=request_id) from None
            except Exception as exc:
                raise HttpError(500, f"generation failed: {exc}", error=str(exc), request_id=request_id) from None
        except HttpError as exc:
            return error_response(exc)

    async def progress(request: Request) -> JSONResponse:
        try:
            check(request)
        except HttpError as exc:
            return error_response(exc)
        request_id = request.query_params.get("request_id", "")
        status = jobs.status(request_id) if request_id else None
        return JSONResponse(progress_body(status))

    return [Route("/generate", generate, methods=["POST"]), Route("/progress", progress)]


def progress_body(status) -> dict:
    """magenta-retry's progress answer: `n` of `total`, `percent`, `stage` (`done` and `error` end it)."""
    if status is None:
        return {"percent": 0, "stage": "pending"}
    if status.state == COMPLETED:
        return {"n": 100, "total": 100, "percent": 100, "stage": "done"}
    if status.state in FINISHED:
        return {"n": 100, "total": 100, "percent": 100, "stage": "error",
                "error": status.error or ("failed" if status.state == FAILED else "cancelled")}
    percent = int(round(100 * status.progress))
    body = {"n": percent, "total": 100, "percent": percent, "stage": status.stage}
    if status.position is not None:
        body["queue_position"] = status.position
    return body


def jam_routes(engine, registry, blocking: Executor, notice: tp.Optional[str],
               token: tp.Optional[str]) -> list[Route]:
    """magenta-retry's `/jam/*`: a bar session driven by HTTP pulls. It is held between requests for the
    registry's resume time (each request starts it again), so a client that stops calling frees its slot."""

    def check(request: Request) -> None:
        if not authorized(request.headers, request.query_params, token):
            raise HttpError(401, "missing or wrong token")

    def find(session_id: tp.Any):
        try:
            return registry.find(session_id, "bar")
        except SessionError:
            raise HttpError(404, "Session not found") from None

    def routed(handler: tp.Callable[[Request], tp.Awaitable[dict]]) -> tp.Callable:
        async def endpoint(request: Request) -> JSONResponse:
            try:
                check(request)
                return JSONResponse(await handler(request))
            except HttpError as exc:
                return error_response(exc)
            except ProtocolError as exc:
                return error_response(HttpError(400, str(exc)))
            except (SessionClosed, EngineUnavailable, RuntimeError) as exc:
                return error_response(HttpError(409 if isinstance(exc, SessionClosed) else 503, str(exc)))
        return endpoint

    async def decode(data: bytes) -> tuple:
        return await asyncio.get_running_loop().run_in_executor(blocking, decode_loop, data)

    async def start(request: Request) -> dict:
        fields, data = await read_form(request, "loop_audio")
        if data is None:
            raise HttpError(400, "loop_audio: a file is required")
        if "bpm" not in fields:
            raise HttpError(400, "bpm: field required")
        values = bp.read_form(bp.JamStartForm, fields).model_dump()
        try:
            jam = await open_jam(engine, registry, blocking, data, values, None)
        except CapacityError as exc:
            raise HttpError(429, "concurrency_limit_reached: all session slots are in use; try again later",
                            limit=exc.limit) from None
        except ValueError as exc:
            raise HttpError(400, str(exc)) from None
        if not keep(jam):
            raise HttpError(503, "this server does not hold sessions between requests (JAM_RESUME_SECONDS=0): use "
                                 "the WebSocket")
        return {"session_id": jam.session_id}

    async def next_chunk(request: Request) -> dict:
        jam = find(request.query_params.get("session_id"))
        bar = jam.state(BarSession)
        if not bar.running:
            raise HttpError(404, "Session not found")
        if jam.owner is not None:
            raise HttpError(409, "this session is played by a WebSocket: its chunks go there")
        jam.owner = request  # not held while waiting: the wait can be longer than the hold
        try:
            chunk = await bar.next(NEXT_TIMEOUT_SECONDS)
        finally:
            jam.owner = None
            keep(jam)
        if chunk is None:
            raise HttpError(408 if bar.running else 404, "Chunk not ready within timeout" if bar.running else
                            bar.failure or "Session not found")
        return {"chunk": be.chunk_body(chunk, notice)}

    async def consume(request: Request) -> dict:
        fields, _ = await read_form(request, None)
        jam = touched(fields.get("session_id"))
        index = bp.read_form(bp.ConsumeMessage, fields).chunk_index
        jam.state(BarSession).consume(index)
        return {"consumed": index}

    def touched(session_id: tp.Any):
        jam = find(session_id)
        if jam.owner is None and not keep(jam):
            raise HttpError(404, "Session not found: the server is no longer holding sessions (its drain is over)")
        return jam

    def keep(jam) -> bool:
        """Holds the session again until the client's next request (also while the replica drains: the client is
        still there, and the drain waits for its session); one the server no longer holds ends here."""
        if registry.hold(jam, between_requests=True):
            return True
        registry.end(jam)
        return False

    async def stop(request: Request) -> dict:
        try:
            body = await request.json()
        except ValueError:
            raise HttpError(400, "send JSON {\"session_id\": \"...\"}") from None
        jam = find(body.get("session_id") if isinstance(body, dict) else None)
        registry.end(jam)
        return {"stopped": True}

    async def update(request: Request) -> dict:
        fields, _ = await read_form(request, None)
        jam = touched(fields.get("session_id"))
        source = jam.session
        changes = bp.form_values(bp.Steering, {k: v for k, v in fields.items() if v != ""})  # empty: unchanged
        if not changes.get("styles"):  # app.py: an empty styles field keeps the styles
            changes.pop("styles", None)
            changes.pop("style_weights", None)
        if changes:
            await applied(source.update(bp.updated(source.params, changes)))
        return {"ok": True}

    async def reseed(request: Request) -> dict:
        fields, data = await read_form(request, "loop_audio")
        jam = touched(fields.get("session_id"))
        loop = None if data is None else await decode(data)
        await applied(jam.session.reseed(loop, seed=random_seed()))
        return {"ok": True}

    async def reseed_splice(request: Request) -> dict:
        fields, data = await read_form(request, "combined_audio")
        jam = touched(fields.get("session_id"))
        anchor = bp.read_form(bp.SpliceFields, fields).anchor_bars
        combined = None if data is None else await decode(data)
        jam.session.reseed_splice(anchor, combined)
        return {"ok": True, "anchor_bars": anchor}

    async def status(request: Request) -> dict:
        jam = touched(request.query_params.get("session_id"))
        return be.status_body(jam.state(BarSession))

    return [Route("/jam/start", routed(start), methods=["POST"]), Route("/jam/next", routed(next_chunk)),
            Route("/jam/consume", routed(consume), methods=["POST"]),
            Route("/jam/stop", routed(stop), methods=["POST"]), Route("/jam/update", routed(update), methods=["POST"]),
            Route("/jam/reseed", routed(reseed), methods=["POST"]),
            Route("/jam/reseed_splice", routed(reseed_splice), methods=["POST"]),
            Route("/jam/status", routed(status))]

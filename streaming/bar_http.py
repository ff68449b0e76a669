"""magenta-retry's HTTP API on the sidecar port: `POST /generate` + `GET /progress` (gary4juce's Darius tab), and
the `/jam/*` routes of a bar session. Multipart forms in, JSON out, as that `app.py` answers them: errors as
`{"detail": "..."}` with its status codes (400 bad input, 404 unknown session, 408 no chunk within 30 s, 413 too
large, 429 no free slot or a full job queue).
"""

import asyncio
import logging
import typing as tp
import uuid

from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from streaming import bar_protocol as bp
from streaming.auth import authorized
from streaming.bar_generate import GenerateRequest, generate_work
from streaming.jam_protocol import ProtocolError
from streaming.jobs import COMPLETED, FAILED, FINISHED, JobTable, TableFull

logger = logging.getLogger(__name__)

MAX_FORM_BYTES = bp.MAX_AUDIO_MESSAGE_BYTES + 64 * 1024  # one audio file and the text fields
WORK_SECONDS_PER_BAR_SECOND = 1.0  # the job table's estimate of work, in seconds of audio


class HttpError(Exception):
    def __init__(self, status: int, detail: str, **extra: tp.Any) -> None:
        super().__init__(detail)
        self.status, self.detail, self.extra = status, detail, extra


def error_response(exc: HttpError) -> JSONResponse:
    return JSONResponse({"detail": exc.detail, **exc.extra}, status_code=exc.status)


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


def generate_routes(engine, jobs: JobTable, notice: tp.Optional[str], token: tp.Optional[str]) -> list[Route]:
    """`/generate` and `/progress` on the job table shared with the other poll APIs."""

    def check(request: Request) -> None:
        if not authorized(request.headers, request.query_params, token):
            raise HttpError(401, "missing or wrong token")

    async def generate(request: Request) -> JSONResponse:
        request_id = None
        try:
            check(request)
            fields, data = await read_form(request, "loop_audio")
            request_id = fields.get("request_id") or str(uuid.uuid4())
            if data is None:
                raise HttpError(400, "loop_audio: a file is required", request_id=request_id)
            try:
                values = bp.form_values(fields, bp.GENERATE_DEFAULTS)
                if "bpm" not in fields:
                    raise ProtocolError("bpm: field required")
                drop = int(bp.number(values, "intro_bars_to_drop"))
                checked = bp.bar_params(values, loop_rate=48000, bars_key="bars")  # the loop's rate comes later
            except ProtocolError as exc:
                raise HttpError(400, str(exc), request_id=request_id) from None
            job = GenerateRequest(values=values, intro_bars_to_drop=drop, loop=data, request_id=request_id)
            seconds = (drop + checked.bars_per_chunk) * checked.clock.seconds_per_bar
            work = generate_work(engine, job, notice)
            try:
                jobs.submit(work, work_seconds=seconds * WORK_SECONDS_PER_BAR_SECOND, input_bytes=len(data),
                            job_id=request_id)
            except TableFull as exc:
                raise HttpError(429, str(exc), request_id=request_id) from None
            except ValueError as exc:
                raise HttpError(400, f"request_id: {exc}", request_id=request_id) from None
            try:
                return JSONResponse(await asyncio.wrap_future(jobs.future(request_id)))
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

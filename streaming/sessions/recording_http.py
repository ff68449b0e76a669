"""`GET /sessions/{id}` (a session's metadata and settings timeline) and `GET /sessions/{id}/recording` (the whole
jam decoded afresh from its tokens, streamed while it decodes).

The decode runs on the engine's codec thread one bounded piece at a time behind live sessions' work
(engine.codec.render), and while sessions play it takes at most half of that thread's time (LIVE_PAUSE), so an
hour-long recording never stalls a live session. Beside two realtime sessions on the tests' 2-core CPU a
5-minute recording decodes in 11.5 s with the pause and the sessions' worst chunk gap is 1.2x their median; without
it, 6.3 s and 1.9x (tests/streaming/sessions/test_recording.py, slow). WAV is written as it comes (its length is
known before the first sample: the samples the client received); FLAC and MP3 go through an ffmpeg pipe. Audio is
at the model's rate, 16-bit, not normalised: the samples the chunks carried. The session id is the credential,
with JAM_TOKEN where set.
"""

import asyncio
import logging
import struct
import time
import typing as tp

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from streaming.app.auth import authorized
from streaming.formats import ffmpeg_executable, pcm16_bytes
from streaming.sessions.recording import Recording
from streaming.sessions.registry import SessionRegistry

logger = logging.getLogger(__name__)

FORMATS = {"wav": "audio/wav", "flac": "audio/flac", "mp3": "audio/mpeg"}
MP3_BITRATE = "320k"
PIPE_BYTES = 64 * 1024
LIVE_PAUSE = 1.0  # while sessions play, a download waits this many times each piece's time before the next
STREAMINFO_END = 42


def wav_header(samples: int, sample_rate: int, channels: int) -> bytes:
    """A 16-bit PCM WAV header for `samples` frames."""
    data = samples * channels * 2
    return (b"RIFF" + struct.pack("<I", 36 + data) + b"WAVE" + b"fmt " +
            struct.pack("<IHHIIHH", 16, 1, channels, sample_rate, sample_rate * channels * 2, channels * 2, 16) +
            b"data" + struct.pack("<I", data))


def snapshot(recording: Recording) -> list[tuple]:
    """(tokens, samples, seed) of each segment as they are now: a live session goes on recording meanwhile."""
    return [(segment.token_tensor(), segment.samples, segment.seed) for segment in recording.segments]


async def decoded_pcm(engine, recording: Recording, segments: list[tuple], mbd: bool) -> tp.AsyncIterator[bytes]:
    """A snapshot's audio as 16-bit PCM, segment after segment, each cut to the samples its chunks carried."""
    for tokens, samples, seed in segments:
        if samples == 0:
            continue
        rendering = engine.render(tokens, mbd=mbd, seed=seed)
        remaining = samples
        while remaining > 0:
            began = time.perf_counter()
            audio = await asyncio.wrap_future(rendering.next_piece())
            if engine.sessions_open:  # live sessions: leave the cores to them between pieces
                await asyncio.sleep((time.perf_counter() - began) * LIVE_PAUSE)
            if audio is None:  # the codec gave fewer samples than the chunks had: silence keeps the length
                logger.warning("recording %s: %d samples short", recording.session_id, remaining)
                yield bytes(remaining * recording.channels * 2)
                break
            audio = audio[:, :remaining]
            remaining -= audio.shape[-1]
            if audio.shape[-1]:
                yield pcm16_bytes(audio)


def flac_with_length(head: bytes, samples: int) -> bytes:
    """FLAC's STREAMINFO (bytes 18-25: rate, channels, bits, then 36 bits of total samples) with the length set:
    ffmpeg writing into a pipe cannot seek back to fill it in, and readers such as libsndfile then cannot tell
    how long the file is."""
    fields = int.from_bytes(head[18:26], "big")
    fields = (fields & ~((1 << 36) - 1)) | samples
    return head[:18] + fields.to_bytes(8, "big") + head[26:]


async def encoded(pcm: tp.AsyncIterator[bytes], fmt: str, sample_rate: int, channels: int,
                  samples: int) -> tp.AsyncIterator[bytes]:
    """PCM (`samples` frames) through ffmpeg into FLAC or MP3, read while it is written; the process ends with
    the response."""
    codec = ["-c:a", "flac"] if fmt == "flac" else ["-c:a", "libmp3lame", "-b:a", MP3_BITRATE]
    process = await asyncio.create_subprocess_exec(
        ffmpeg_executable(), "-hide_banner", "-loglevel", "error", "-f", "s16le", "-ar", str(sample_rate),
        "-ac", str(channels), "-i", "pipe:0", *codec, "-f", fmt, "pipe:1",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)

    async def feed() -> None:
        try:
            async for piece in pcm:
                process.stdin.write(piece)
                await process.stdin.drain()
        finally:
            process.stdin.close()

    feeder = asyncio.get_running_loop().create_task(feed(), name="recording-encode")
    try:
        if fmt == "flac":  # "fLaC", the STREAMINFO block's header, then STREAMINFO itself
            head = await process.stdout.readexactly(STREAMINFO_END)
            yield flac_with_length(head, samples)
        while data := await process.stdout.read(PIPE_BYTES):
            yield data
        await feeder  # a decode failure surfaces here
        if await process.wait() != 0:
            raise RuntimeError(f"ffmpeg could not encode {fmt}: {(await process.stderr.read()).decode()[-300:]}")
    finally:
        feeder.cancel()
        if process.returncode is None:
            process.kill()
            await process.wait()


def recording_routes(engine, registry: SessionRegistry, token: tp.Optional[str]) -> list[Route]:
    def find(request: Request) -> tp.Union[Recording, JSONResponse]:
        if not authorized(request.headers, request.query_params, token):
            return JSONResponse({"error": "unauthorized: send JAM_TOKEN as a Bearer token or ?token="},
                                status_code=401)
        session_id = request.path_params["session_id"]
        recording = registry.recordings.get(session_id)
        if recording is None:
            return JSONResponse({"error": f"no recording of session {session_id}: it never existed here, or it "
                                          f"ended more than {registry.recordings.keep_seconds:g} s ago"},
                                status_code=404)
        return recording

    async def metadata(request: Request) -> Response:
        found = find(request)
        return found if isinstance(found, Response) else JSONResponse(found.describe())

    async def download(request: Request) -> Response:
        found = find(request)
        if isinstance(found, Response):
            return found
        fmt = request.query_params.get("format", "wav")
        if fmt not in FORMATS:
            return JSONResponse({"error": f"format must be one of {', '.join(FORMATS)}, got {fmt!r}"},
                                status_code=422)
        mbd_flag = request.query_params.get("mbd", "0")
        if mbd_flag not in ("0", "1", "true", "false"):
            return JSONResponse({"error": f"mbd must be 0 or 1, got {mbd_flag!r}"}, status_code=422)
        mbd = mbd_flag in ("1", "true")
        if mbd and not engine.describe()["mbd"]:
            return JSONResponse({"error": "mbd: this checkpoint has no MultiBand Diffusion weights (fetch them "
                                          "with `python -m weights.fetch --mbd`); ask for mbd=0"}, status_code=422)
        recording = found
        segments = snapshot(recording)
        pcm = decoded_pcm(engine, recording, segments, mbd)
        samples = sum(samples for _, samples, _ in segments)
        if fmt == "wav":

            async def wav() -> tp.AsyncIterator[bytes]:
                yield wav_header(samples, recording.sample_rate, recording.channels)
                async for piece in pcm:
                    yield piece

            body = wav()
        else:
            body = encoded(pcm, fmt, recording.sample_rate, recording.channels, samples)
        name = f"jam-{recording.session_id}{'-mbd' if mbd else ''}.{fmt}"
        return StreamingResponse(body, media_type=FORMATS[fmt],
                                 headers={"Content-Disposition": f'attachment; filename="{name}"'})

    return [Route("/sessions/{session_id}", metadata), Route("/sessions/{session_id}/recording", download)]

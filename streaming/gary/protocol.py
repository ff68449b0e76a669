"""The gary plugins' MusicGen continuation API, without I/O: request fields, the continuation semantics of their
reference backend (gary-localhost-installer, `services/gary/g4laudio.py`), the stored inputs retry reruns, and
the answers both transports render (gary4juce's poll JSON, gary4live's Socket.IO payloads).

Semantics, as g4laudio.py runs audiocraft's `generate_continuation` with `duration=30`:
- process_audio: the prompt is the first `prompt_duration` s of the input; the output is 30 s in total, the
  prompt (as the codec re-decodes it) included.
- continue_music: the prompt is the last `prompt_duration` s; the output is the input without those seconds,
  then the 30 s continuation (which starts with them, re-decoded).
- retry_music: the last process/continue (or retry) of a session again, from its stored input, with a new seed
  (or the one given) and any parameters given replacing the stored ones; it gets a new session id.
Outputs are 16-bit WAV at the input's sample rate and channel count; the generated part is scaled down only when
it would clip (g4laudio.py's writer scales the whole file: here the input a continuation keeps stays as it came).
Seeds: -1, null or absent pick one in 0..99999 (the plugins' range); the seed used is answered, and reported
again by every poll (`generation_seed`).
"""

import random
import time
import typing as tp
from dataclasses import dataclass, replace

import torch
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from engine.api import params as rules
from streaming import formats as audio
from streaming.jobs.state import machine_bytes
from streaming.jobs.table import COMPLETED, FAILED, QUEUED, RUNNING, JobStatus
from streaming.wire import Base64Audio

PROCESS, CONTINUE, RETRY = "process", "continue", "retry"
OUTPUT_SECONDS = 30  # what g4laudio.py asks of generate_continuation: 30 s in all, the prompt included
MAX_PROMPT_SECONDS = OUTPUT_SECONDS - 1  # the prompt must leave something to generate in the 30 s window
MAX_AUDIO_SECONDS = 300.0  # input audio (a continuation's input grows by 30 - prompt_duration s each time)
MAX_BODY_BYTES = 96 * 2**20  # a request body; 300 s of 48 kHz stereo 24-bit WAV is ~115 MB in base64: use 16-bit
SEED_RANGE = (0, 99999)  # random seeds, as the reference backend draws them (typeable on either machine)
MAX_SEED = rules.MAX_INT32
# the numbers of a request: the engine's sampling rules (engine.params), this API's own prompt, top_k and seed
PROMPT_SECONDS = rules.integer(1, MAX_PROMPT_SECONDS)
TOP_K = rules.integer(1, 10000)
SEED = rules.integer(-1, MAX_SEED)
MAX_SESSION_ID = 128
# the stored inputs retry reruns: at most this many, this many bytes (decoded float audio), this long
STORE_MAX_ENTRIES = 32
# JAM_RETRY_BYTES's default: 1/1024 of memory within 16..256 MiB (24 MiB on 24 GiB: four 30 s stereo inputs as
# uploaded); an input over it is not kept, and its retry answers so
STORE_MAX_BYTES = machine_bytes(1024, 16 * 2**20, 256 * 2**20)
STORE_KEEP_SECONDS = 3600.0  # the reference backend keeps a session an hour


RequestT = tp.TypeVar("RequestT", bound=BaseModel)


class GaryError(ValueError):
    """A request the API refuses; the text names the field. `status` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class GaryParams:
    model_name: str
    prompt_duration: int
    top_k: int = 250
    temperature: float = 1.0
    cfg_coef: float = 3.0
    description: tp.Optional[str] = None
    seed: tp.Optional[int] = None  # None: pick one


@dataclass(frozen=True)
class StoredInput:
    """What a retry needs: the input audio as the client sent it (its encoded file: kept as bytes, decoded again
    when a retry runs, so a stored input weighs what its upload did, not its float samples), how it was used, and
    the parameters."""

    kind: str  # PROCESS or CONTINUE
    audio: bytes  # the encoded file (WAV, FLAC, MP3...) from audio_data
    params: GaryParams
    created: float

    @property
    def nbytes(self) -> int:
        return len(self.audio)


# -- requests ----------------------------------------------------------------------------------------------------
def _blank_is_none(value: tp.Any) -> tp.Any:
    return None if value == "" else value


class GaryModel(BaseModel):
    """What the requests' models share: strict values (engine.params); unknown fields are ignored, as the
    reference backend ignores them."""

    model_config = ConfigDict(**rules.STRICT, frozen=True)


class Generation(GaryModel):
    """The generation fields of a process, continue or retry request; a null is an absent field (the default, or
    on a retry the stored value)."""

    model_name: tp.Optional[str] = None
    prompt_duration: tp.Optional[PROMPT_SECONDS] = None
    description: tp.Optional[rules.StyleText] = None  # the prediction's prompt
    seed: tp.Optional[SEED] = None
    top_k: tp.Optional[TOP_K] = None
    temperature: tp.Optional[rules.Temperature] = None
    cfg_coef: tp.Optional[rules.Guidance] = None


class SessionRef(GaryModel):
    """The session a request continues, retries or polls: null or "" is none."""

    session_id: tp.Annotated[tp.Optional[tp.Annotated[str, Field(max_length=MAX_SESSION_ID)]],
                             BeforeValidator(_blank_is_none)] = None


class Upload(GaryModel):
    """`audio_data`: the bytes of an audio file, base64-encoded; null or "" is none."""

    audio_data: Base64Audio = None


def _parse(model: type[RequestT], body: dict) -> RequestT:
    """`body` as `model`; GaryError names the field and what is wrong with it."""
    try:
        return rules.validate(model, body)
    except rules.ParamError as exc:
        raise GaryError(str(exc)) from None


def parse_params(body: tp.Any, base: tp.Optional[GaryParams] = None) -> GaryParams:
    """The generation fields of a request; with `base` (a retry), absent fields keep the stored values, but for
    the seed: a retry draws a new one unless one is given."""
    if not isinstance(body, dict):
        raise GaryError("the request must be a JSON object")
    given = _parse(Generation, body).model_dump(exclude_none=True)
    seed = given.pop("seed", None)
    params = replace(base or GaryParams(model_name="", prompt_duration=0), **given)
    if not params.model_name:
        raise GaryError("model_name is required: the path of a model from /api/models")
    if not params.prompt_duration:
        raise GaryError(f"prompt_duration is required: whole seconds, 1..{MAX_PROMPT_SECONDS}")
    return replace(params, description=(params.description or "").strip() or None,
                   seed=None if seed == -1 else seed)


def with_seed(params: GaryParams, rng: random.Random) -> GaryParams:
    """The parameters with the seed that will be used."""
    return params if params.seed is not None else replace(params, seed=rng.randint(*SEED_RANGE))


def audio_bytes(body: dict, required: bool = True) -> tp.Optional[bytes]:
    """`audio_data`'s bytes (None when absent, unless `required`)."""
    data = _parse(Upload, body).audio_data
    if data is None and required:
        raise GaryError("audio_data is required: a WAV file, base64-encoded")
    return data


def session_id(body: tp.Any, required: bool = True) -> tp.Optional[str]:
    """The request's session_id (None when absent or the body is no object, unless `required`)."""
    value = _parse(SessionRef, body if isinstance(body, dict) else {}).session_id
    if value is None and required:
        raise GaryError("session_id is required: the session_id of the continuation to retry")
    return value


# -- the continuation semantics ----------------------------------------------------------------------------------
def check_input(wav: torch.Tensor, sample_rate: int, params: GaryParams) -> None:
    seconds = wav.shape[-1] / sample_rate
    if seconds > MAX_AUDIO_SECONDS:
        raise GaryError(f"audio_data is {seconds:.1f} s long; at most {MAX_AUDIO_SECONDS:.0f} s are accepted")
    if params.prompt_duration > seconds:
        raise GaryError(f"prompt_duration ({params.prompt_duration} s) is longer than audio_data ({seconds:.2f} s)")


def prompt_slice(kind: str, wav: torch.Tensor, sample_rate: int, prompt_seconds: int) -> torch.Tensor:
    """The part of the input the model continues: its start (process) or its end (continue)."""
    samples = int(round(prompt_seconds * sample_rate))
    return wav[:, :samples] if kind == PROCESS else wav[:, wav.shape[-1] - samples:]


def _match_channels(wav: torch.Tensor, channels: int) -> torch.Tensor:
    if wav.shape[0] == channels:
        return wav
    mono = wav.mean(0, keepdim=True)
    return mono.expand(channels, -1).contiguous()


def assemble(kind: str, wav: torch.Tensor, sample_rate: int, prompt_seconds: int, generated: torch.Tensor,
             generated_rate: int) -> torch.Tensor:
    """The output: the generation (prompt included) at the input's rate and channels, scaled down if it would
    clip, after the input minus its prompt for a continuation (that part sample for sample as it came)."""
    out = _match_channels(audio.resample(generated.float(), generated_rate, sample_rate), wav.shape[0])
    out = out[:, :int(round(OUTPUT_SECONDS * sample_rate))]
    peak = out.abs().max().item() if out.numel() else 0.0
    out = out / peak if peak > 1.0 else out
    if kind == CONTINUE:
        keep = wav.shape[-1] - int(round(prompt_seconds * sample_rate))
        out = torch.cat([wav[:, :keep].float(), out], dim=-1)
    return out


# -- what the transports answer ----------------------------------------------------------------------------------
def queue_status(status: JobStatus, queued_total: int) -> dict:
    """gary4juce's `queue_status` (never empty while work is pending: the plugin declares a stall otherwise) and
    gary4live's `queue_status` event. `position` counts from 1 (the next job to start) while queued."""
    estimate = None if status.estimated_seconds is None else int(round(status.estimated_seconds))
    if status.waiting:
        ahead = status.position or 0
        message = (f"{status.stage}: {ahead} prediction{'s' if ahead != 1 else ''} ahead" if status.state == RUNNING
                   else f"queued: {ahead} job{'s' if ahead != 1 else ''} ahead")
        return {"status": "queued", "message": message, "position": ahead + 1, "total_queued": queued_total,
                "estimated_seconds": estimate, "estimated_time": None if estimate is None else f"~{estimate}s",
                "source": "musicgen-sidecar"}
    if status.state == RUNNING:
        return {"status": "processing", "message": f"{status.stage}…", "position": 0, "total_queued": queued_total,
                "estimated_seconds": estimate, "estimated_time": None if estimate is None else f"~{estimate}s",
                "source": "musicgen-sidecar"}
    if status.state == COMPLETED:
        return {"status": "completed", "message": "done", "source": "musicgen-sidecar"}
    return {"status": "failed", "message": status.error or status.state, "source": "musicgen-sidecar"}


def percent(status: JobStatus) -> int:
    return 100 if status.state == COMPLETED else int(status.progress * 100)


def poll_response(status: JobStatus, seed: tp.Optional[int], queued_total: int) -> dict:
    """gary4juce's `/api/juce/poll_status` body for one job."""
    pending = status.state in (QUEUED, RUNNING)
    body = {"success": True, "status": "processing" if status.state == RUNNING else status.state,
            "generation_in_progress": pending, "transform_in_progress": False, "progress": percent(status),
            "queue_status": queue_status(status, queued_total), "generation_seed": seed}
    if status.state == COMPLETED:
        body["audio_data"] = status.result["audio_data"]
    elif not pending:
        body["status"] = FAILED
        body["error"] = status.error or status.state
    return body


# -- stored inputs -----------------------------------------------------------------------------------------------
class InputStore:
    """The inputs retry reruns, by session id: bounded in count, bytes and age (oldest dropped first; the ages on
    every access). Used from one thread at a time (the transports call it under their own lock)."""

    def __init__(self, max_entries: int = STORE_MAX_ENTRIES, max_bytes: int = STORE_MAX_BYTES,
                 keep_seconds: float = STORE_KEEP_SECONDS, clock: tp.Callable[[], float] = time.monotonic) -> None:
        self.max_entries, self.max_bytes, self.keep_seconds = max_entries, max_bytes, keep_seconds
        self._clock = clock
        self._entries: dict[str, StoredInput] = {}

    def now(self) -> float:
        return self._clock()

    def put(self, key: str, stored: StoredInput) -> None:
        if stored.nbytes > self.max_bytes:
            return  # too big to keep: a retry of it answers that its input is gone
        self._entries.pop(key, None)
        self._entries[key] = stored
        self._expire()
        while len(self._entries) > self.max_entries or self.held_bytes() > self.max_bytes:
            self._entries.pop(next(iter(self._entries)))

    def get(self, key: str) -> tp.Optional[StoredInput]:
        self._expire()
        return self._entries.get(key)

    def drop(self, key: str) -> None:
        self._entries.pop(key, None)

    def held_bytes(self) -> int:
        # entries of one chain of retries share their bytes: count each once
        return sum({id(s.audio): s.nbytes for s in self._entries.values()}.values())

    def __len__(self) -> int:
        return len(self._entries)

    def _expire(self) -> None:
        now = self._clock()
        for key in [k for k, s in self._entries.items() if now - s.created > self.keep_seconds]:
            del self._entries[key]

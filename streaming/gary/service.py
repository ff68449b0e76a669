"""The one core both gary transports share (gary4juce's HTTP + poll, gary4live's Socket.IO): it turns a parsed
request into a job on the job table (streaming.jobs.table) that runs the continuation on the engine's prediction API,
keeps the inputs retry reruns (streaming.gary.protocol.InputStore), and answers polls.

Its methods block (base64 and audio decoding of bodies up to protocol.MAX_BODY_BYTES): the shells call them
on a worker thread, never on the event loop. Every failure a client can cause is a GaryError naming the field.
"""

import base64
import logging
import random
import secrets
import tempfile
import threading
import typing as tp
from pathlib import Path

from engine.api import BatchRequest
from streaming import formats as audio
from streaming.gary import model_info
from streaming.gary import protocol as gp
from streaming.jobs.table import DELIVERED_KEEP_SECONDS, InputTooLarge, JobContext, JobTable, TableFull

logger = logging.getLogger(__name__)

CROPPED = "cropped:"  # store key prefix of the audio a gary4live session was cropped to


class GaryService:
    def __init__(self, engine, jobs: JobTable, draining: tp.Callable[[], bool] = lambda: False,
                 store: tp.Optional[gp.InputStore] = None) -> None:
        """`draining` says when the replica drains: new jobs are refused then (the queued ones still run)."""
        self.engine, self.jobs, self.draining = engine, jobs, draining
        self.store = store or gp.InputStore()
        self._lock = threading.Lock()  # the store and the seeds
        self._seeds: dict[str, int] = {}  # session id -> seed, for polls; pruned with the job table
        self._rng = random.Random(secrets.randbits(64))

    # -- requests ------------------------------------------------------------------------------------------------
    def submit(self, kind: str, body: tp.Any, owner: tp.Optional[str] = None) -> dict:
        """process / continue / retry -> `{"success": true, "session_id", "seed"}` once queued."""
        if self.draining():
            raise gp.GaryError("this replica is draining: send the request to another one", 503)
        if kind == gp.RETRY:
            previous = gp.session_id(body)
            with self._lock:
                stored = self.store.get(previous)
            if stored is None:
                raise gp.GaryError(f"session_id {previous[:40]!r} has no stored input to retry: it is unknown, or "
                                   f"older than {self.store.keep_seconds:.0f} s; send continue_music again", 404)
            params = gp.parse_params(body, base=stored.params)
            kind, data = stored.kind, stored.audio
        else:
            params = gp.parse_params(body)
            data = self._input_audio(kind, body)
        wav, rate = self._decode(data)
        adapter = self._check_model(params)
        gp.check_input(wav, rate, params)
        if params.description:
            try:
                self.engine.check_prompt(params.description)
            except ValueError as exc:
                raise gp.GaryError(f"description: {exc}") from None
        with self._lock:
            params = gp.with_seed(params, self._rng)
        work = self._work(kind, wav, rate, params, adapter)
        try:
            job_id = self.jobs.submit(work, work_seconds=gp.OUTPUT_SECONDS - params.prompt_duration,
                                      input_bytes=wav.numel() * wav.element_size(), owner=owner)
        except TableFull as exc:
            raise gp.GaryError(str(exc), 503) from None
        except InputTooLarge as exc:
            raise gp.GaryError(f"audio_data: {exc}", 413) from None
        with self._lock:
            self.store.put(job_id, gp.StoredInput(kind, data, params, self.store.now()))
            self._remember_seed(job_id, params.seed)
        logger.info("gary %s job %s: prompt %d s, seed %d", kind, job_id[:8], params.prompt_duration, params.seed)
        return {"success": True, "session_id": job_id, "seed": params.seed}

    def poll(self, job_id: str) -> dict:
        status = self.jobs.status(job_id)
        if status is None:
            raise gp.GaryError(f"session_id {job_id[:40]!r} is unknown: results are kept "
                               f"{self.jobs.keep_seconds:.0f} s after they finish, {DELIVERED_KEEP_SECONDS:.0f} s "
                               "after a poll has carried them", 404)
        with self._lock:
            seed = self._seeds.get(job_id)
        answer = gp.poll_response(status, seed, self.jobs.counts()["queued"])
        if "audio_data" in answer:  # the result reaches its client: the table need not hold it for long now
            self.jobs.delivered(job_id)
        return answer

    def update_cropped(self, body: tp.Any) -> str:
        """gary4live's `update_cropped_audio`: the session's audio is now this (a continue without audio_data
        continues it)."""
        key = gp.session_id(body)
        data = gp.audio_bytes(body)
        self._decode(data)  # refused now, not when a continue uses it
        with self._lock:
            previous = self.store.get(key)
            params = previous.params if previous is not None else gp.GaryParams(model_name="", prompt_duration=1)
            self.store.put(CROPPED + key, gp.StoredInput(gp.CONTINUE, data, params, self.store.now()))
        return key

    def cleanup(self, body: tp.Any) -> None:
        """gary4live's `cleanup_session_request`: forget the session, cancelling its job if it still runs."""
        key = gp.session_id(body)
        with self._lock:
            self.store.drop(key)
            self.store.drop(CROPPED + key)
            self._seeds.pop(key, None)
        self.jobs.discard(key)

    def models(self) -> dict:
        return model_info.models_listing(self.engine.describe(), self.engine.models())

    # -- inside --------------------------------------------------------------------------------------------------
    def _input_audio(self, kind: str, body: dict) -> bytes:
        """The encoded input file: the body's audio_data, or a gary4live session's cropped audio."""
        data = gp.audio_bytes(body, required=kind == gp.PROCESS or not body.get("session_id"))
        if data is not None:
            return data
        with self._lock:
            cropped = self.store.get(CROPPED + gp.session_id(body))
        if cropped is None:
            raise gp.GaryError("audio_data is required: this session has no cropped audio to continue")
        return cropped.audio

    @staticmethod
    def _decode(data: bytes):
        try:
            piece = audio.decode_slice(data, max_file_seconds=gp.MAX_AUDIO_SECONDS)
        except audio.AudioInputError as exc:
            raise gp.GaryError(f"audio_data: {exc}") from None
        return piece.wav, piece.sample_rate

    def _check_model(self, params: gp.GaryParams) -> tp.Optional[str]:
        """The adapter `model_name` picks (None: the loaded checkpoint); GaryError when it names neither."""
        try:
            return model_info.chosen_adapter(params.model_name, self.engine.describe(), self.engine.models())
        except ValueError as exc:
            raise gp.GaryError(str(exc)) from None

    def _remember_seed(self, job_id: str, seed: int) -> None:
        self._seeds[job_id] = seed
        if len(self._seeds) > 2 * self.jobs.max_entries:  # forget the seeds of jobs the table has reaped
            for key in [k for k in self._seeds if self.jobs.status(k) is None]:
                del self._seeds[key]

    def _work(self, kind: str, wav, rate: int, params: gp.GaryParams,
              adapter: tp.Optional[str] = None) -> tp.Callable[[JobContext], dict]:
        def work(ctx: JobContext) -> dict:
            prompt = gp.prompt_slice(kind, wav, rate, params.prompt_duration)
            with tempfile.TemporaryDirectory(prefix="gary-") as folder:
                path = Path(folder) / "prompt.wav"
                path.write_bytes(audio.wav_bytes(prompt, rate, subtype="FLOAT"))
                request = BatchRequest(prompt=params.description, input_audio=path, continuation=True,
                                       duration=gp.OUTPUT_SECONDS - params.prompt_duration, top_k=params.top_k,
                                       temperature=params.temperature, classifier_free_guidance=params.cfg_coef,
                                       seed=params.seed, model=adapter)
                result = ctx.generate(request, span=(0.0, 0.95))
            ctx.stage("encoding", 0.96)
            out = gp.assemble(kind, wav, rate, params.prompt_duration, result.wav, result.sample_rate)
            return {"audio_data": base64.b64encode(audio.wav_bytes(out, rate)).decode("ascii")}

        return work

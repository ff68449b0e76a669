"""The engine: the one owner of the model, and the only API that predict.py, the sidecar, tests and benchmarks use.

    engine = Engine.load(source, config=EngineConfig.from_env())
    job = engine.generate(BatchRequest(...))            # progress, cancel(), wait() -> BatchResult
    session = engine.open_session(settings, seed)       # next_chunk() -> Future[Chunk], update(), close()
    rendering = engine.codec.render(tokens, mbd=False)        # next_piece() -> Future[audio | None]
    engine.health(), engine.describe(), engine.close()
    engine.models()                                     # the LoRA adapters served beside the base model

Inside, two worker threads touch the model: the LM thread (jobs, and between them batched decode steps of every
live stream) and the codec thread (encode, streaming decode, MultiBand Diffusion). Modules of this package reach
them through the attributes below; nothing outside `engine/` does.
"""

import logging
import threading
import typing as tp
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from engine.codec.melody import prefix_steps
from engine.codec.render import Rendering
from engine.config import MAX_PROMPT_TOKENS, EngineConfig
from engine.lm.precision import choose_weight_format
from engine.lm.static_step import choose_step_mode
from engine.loading.model import LoadedModel, load_model
from engine.loading.paths import WEIGHTS_DIR
from engine.params import RequestError, model_choice
from engine.runtime import memory
from engine.runtime.adapters import AdapterLibrary
from engine.runtime.admission import PredictionSlots
from engine.runtime.context import Runtime
from engine.runtime.host_memory import HostMemoryTrim
from engine.runtime.scheduler import Scheduler
from engine.runtime.worker import EngineUnavailable, Worker
from engine.work import batch, prediction
from engine.work.session import LiveSession, SessionSettings

logger = logging.getLogger(__name__)


class CapacityError(RuntimeError):
    """No new session can start here: every slot is taken (or the replica is draining); `limit` is the slot count."""

    def __init__(self, limit: int, reason: tp.Optional[str] = None) -> None:
        super().__init__(f"concurrency_limit_reached: {reason or f'all {limit} session slots are in use'}")
        self.limit = limit


class Description(tp.TypedDict):
    """What the model and the engine are (`Engine.describe()`): what transports size their audio and capacity
    from, and what /health shows. The sidecar reads these, never the engine's attributes."""

    checkpoint: str
    lm_dim: int  # with lm_layers, the MusicGen size: small 1024 x 24, medium 1536 x 48, large 2048 x 48
    lm_layers: int
    device: str
    sample_rate: int
    frame_rate: int
    channels: int
    melody: bool
    mbd: bool
    demo_noise: bool
    window_seconds: float  # the LM's context window
    keep_seconds: float  # the context kept when the window rolls on
    weight_format: str
    weight_format_reason: str
    step_mode: str
    step_mode_reason: str
    max_sessions: int
    max_styles: int
    decoder_rows: int
    rows_in_use: int
    decoder_weight_bytes: int
    cuda_graphs: tp.Optional[dict]
    streaming: bool
    streaming_unavailable: tp.Optional[str]


@dataclass(frozen=True)
class Health:
    ok: bool
    problem: tp.Optional[str]


class Engine:
    def __init__(self, model: LoadedModel, config: EngineConfig = EngineConfig()) -> None:
        self.model = model
        self.config = config
        self.weight_format, self.weight_format_reason = choose_weight_format(config.weight_format, model.device)
        self.step_mode, self.step_mode_reason = choose_step_mode(config.compile_step, model.device)
        lm = model.musicgen.lm
        delays = list(lm.pattern_provider.delays)
        # the window, the pattern's delays, and on melody models the chroma prefix
        max_steps = int(config.window_seconds * model.frame_rate) + max(delays) + 1 + prefix_steps(lm)
        if config.max_sessions is None:  # JAM_MAX_SESSIONS=auto
            config = self.config = replace(config, max_sessions=self._sessions_that_fit(max_steps))
        self.scheduler = Scheduler(lm, live_rows=config.session_rows, prediction_rows=config.prediction_rows,
                                   max_steps=max_steps,
                                   weight_format=self.weight_format,
                                   prefill_slice_steps=config.prefill_slice_steps, step_mode=self.step_mode,
                                   prediction_pad=config.prediction_pad)
        self.predictions = PredictionSlots(config.max_predictions)
        # both threads order their work by the realtime streams' deadlines (engine.runtime.deadlines)
        self.lm_worker = Worker("engine", background=self.scheduler, deadlines=self.scheduler.deadlines)
        # On a CPU the codec thread takes one core at most, leaving the LM thread its cores; a GPU runs both.
        # On CUDA it has its own stream, so codec and MBD kernels overlap LM steps (engine.runtime.worker._on_stream).
        self.codec_worker = Worker("codec", threads=1 if model.device == "cpu" else None,
                                   stream=torch.cuda.Stream(device=model.device) if model.device.startswith("cuda")
                                   else None, deadlines=self.scheduler.deadlines)
        self.host_memory = HostMemoryTrim(config.trim_seconds)
        self.runtime = Runtime(model, self.config, self.scheduler, self.lm_worker, self.codec_worker)
        # None when the step decoder runs this LM; else why not (predictions then use audiocraft's generate)
        self.streaming_unavailable: tp.Optional[str] = self.scheduler.unsupported
        self._sessions = 0
        self._sessions_lock = threading.Lock()
        self._admission_closed: tp.Optional[str] = None
        decoder = self.scheduler.decoder
        if decoder is None:
            logger.warning("%s: predictions use audiocraft's generate and live sessions are unavailable",
                           self.streaming_unavailable)
        else:
            logger.info("decoder weights: %s (%s); %.0f MB of weights, %.0f MB of KV cache for %d rows x %d steps",
                        self.weight_format, self.weight_format_reason, decoder.weight_bytes / 2**20,
                        decoder.cache_bytes / 2**20, decoder.max_rows, decoder.max_steps)
            logger.info("decode step: %s (%s)", self.step_mode, self.step_mode_reason)
        # LoRA adapters in the folder serve beside the base model (engine.runtime.adapters); made before the graphs
        # are captured, so a bank present at start is part of them
        self.adapters: tp.Optional[AdapterLibrary] = None
        if decoder is not None:
            folder = Path(config.adapters_dir) if config.adapters_dir else WEIGHTS_DIR / "adapters"
            self.adapters = AdapterLibrary(lm, decoder, folder, config.adapter_slots, config.adapter_max_rank,
                                           lambda fn: self.lm_worker.call(fn).result())
        if self._replays_graphs:
            with self.codec_worker.paused():  # every graph now, before any stream: none is captured while one plays
                self.lm_worker.call(self.scheduler.capturable.capture_all).result()

    def _sessions_that_fit(self, max_steps: int) -> int:
        lm = self.model.musicgen.lm
        free = memory.free_device_bytes(self.model.device)
        per_row = memory.row_bytes(lm, max_steps, MAX_PROMPT_TOKENS, self.weight_format)
        sessions = memory.sessions_that_fit(free, per_row, self.config.rows_per_session, self.config.prediction_rows)
        logger.info("JAM_MAX_SESSIONS=auto: %d sessions of %d rows (%.0f MB of KV cache a row) beside %d prediction "
                    "rows fit in the %.1f GB free, keeping %.0f GB of work space", sessions,
                    self.config.rows_per_session, per_row / 2**20, self.config.prediction_rows, free / 2**30,
                    memory.WORK_SPACE_BYTES / 2**30)
        return sessions

    @classmethod
    def load(cls, source: tp.Union[str, Path, None] = None, device: tp.Optional[str] = None,
             config: EngineConfig = EngineConfig()) -> "Engine":
        return cls(load_model(source, device), config)

    def close(self) -> None:
        self.lm_worker.close()
        self.codec_worker.close()
        self.host_memory.close()

    # -- what callers may ask --------------------------------------------------------------------------------------
    @property
    def is_demo(self) -> bool:
        return self.model.is_demo

    @property
    def sessions_open(self) -> int:
        return self._sessions

    @property
    def _replays_graphs(self) -> bool:
        return self.scheduler.capturable is not None and self.scheduler.capturable.graphs

    @property
    def rows_in_use(self) -> int:
        """Decoder rows held by sessions and predictions (a snapshot; the engine thread changes it)."""
        return self.config.rows - self.scheduler.rows_free

    def describe(self) -> Description:
        """What the model and engine are, for /health, the jam status and the page; `streaming` false with
        `streaming_unavailable` saying why when live sessions cannot run on this model."""
        decoder = self.scheduler.decoder
        return {**self.model.describe(), "window_seconds": self.config.window_seconds,
                "keep_seconds": self.config.keep_seconds, "weight_format": self.weight_format,
                "weight_format_reason": self.weight_format_reason,
                "step_mode": self.step_mode, "step_mode_reason": self.step_mode_reason,
                "max_sessions": self.config.max_sessions, "max_styles": self.config.max_styles,
                "decoder_rows": self.config.rows, "rows_in_use": self.rows_in_use,
                "decoder_weight_bytes": decoder.weight_bytes if decoder is not None else 0,
                "cuda_graphs": asdict(self.scheduler.capturable.stats) if self._replays_graphs else None,
                "streaming": self.streaming_unavailable is None,
                "streaming_unavailable": self.streaming_unavailable}

    def models(self) -> list[str]:
        """The LoRA adapters that serve here (the folder is scanned again: new files appear without a restart)."""
        return self.adapters.names() if self.adapters is not None else []

    def _acquire_adapter(self, model: tp.Optional[str]) -> int:
        """The slot of the adapter `model` names (engine.params.model_choice; 0: the base model), held until
        released; RequestError says why it cannot serve."""
        try:
            name = model_choice(model)
            if name is None:
                return 0
            if self.adapters is None:
                raise RequestError(f"model {name!r}: this checkpoint serves no adapters "
                                   f"({self.streaming_unavailable})")
            return self.adapters.acquire(name)
        except RequestError:
            raise
        except ValueError as exc:  # ParamError, UnknownModel, AdapterError
            raise RequestError(str(exc)) from None

    def health(self) -> Health:
        problem = self.lm_worker.problem or self.codec_worker.problem
        return Health(ok=problem is None, problem=problem)

    def stop_admitting(self, reason: str) -> None:
        """From now on open_session raises CapacityError with `reason` (a drain); open sessions play on."""
        with self._sessions_lock:
            self._admission_closed = reason

    def check_prompt(self, text: str) -> None:
        """Raises ValueError when the text conditioner cannot take `text` whole."""
        self.runtime.check_prompt(text)

    def check_settings(self, settings: SessionSettings) -> None:
        """Raises ValueError naming the style the text conditioner cannot take."""
        self.runtime.check_settings(settings)

    # -- predictions -------------------------------------------------------------------------------------------
    def generate(self, request: batch.BatchRequest, reference: bool = False) -> batch.BatchJob:
        """Validates and decodes on the caller's thread (RequestError), then queues the model work. `reference`
        runs audiocraft's own generate (as the step decoder's yardstick); models the step decoder does not
        support always do."""
        self._require_healthy()
        prepared = batch.prepare(request, self.runtime)
        if reference or self.streaming_unavailable is not None:
            if model_choice(request.model) is not None:
                raise RequestError("model: adapters serve on the step decoder only, not on audiocraft's generate")
            return prediction.start_reference(self.runtime, prepared)
        slot = self._acquire_adapter(request.model)
        try:
            job = self.predictions.admit(prediction.Prediction(self.runtime, prepared, adapter=slot))
        except BaseException:
            if slot:
                self.adapters.release(slot)
            raise
        if slot:
            job.future.add_done_callback(lambda _: self.adapters.release(slot))
        return job

    # -- live sessions -----------------------------------------------------------------------------------------
    def open_session(self, settings: SessionSettings, seed: int, prompt: tp.Optional[tuple[torch.Tensor, int]] = None,
                     melody: tp.Optional[tuple[torch.Tensor, int]] = None) -> LiveSession:
        """A live jam session; blocks until the engine has taken it. `prompt` (wav [C, T], rate) is audio to
        continue, `melody` (wav, rate) one to follow on melody models; `settings.model` names the LoRA adapter it
        plays with (None: the base model). Raises CapacityError when every slot is in use,
        ValueError for settings, a melody or a model the engine cannot take (RequestError for the model),
        EngineUnavailable when unhealthy."""
        self._require_healthy()
        if self.streaming_unavailable is not None:
            # the reason first: Lyria carries it in a close reason, which is cut at 120 characters
            raise EngineUnavailable(f"this model cannot stream live sessions: {self.streaming_unavailable}")
        self.check_settings(settings)
        slot = self._acquire_adapter(settings.model)
        with self._sessions_lock:
            refused = self._admission_closed is not None or self._sessions >= self.config.max_sessions
            if not refused:
                self._sessions += 1
        if refused:
            if slot:
                self.adapters.release(slot)
            raise CapacityError(self.config.max_sessions, self._admission_closed)
        released = threading.Event()

        def release() -> None:
            if not released.is_set():
                released.set()
                with self._sessions_lock:
                    self._sessions -= 1
                if slot:
                    self.adapters.release(slot)

        try:
            return LiveSession.open(self.runtime, settings, seed, on_close=release, prompt=prompt, melody=melody,
                                    adapter=slot)
        except BaseException:
            release()
            raise

    def render(self, tokens: torch.Tensor, mbd: bool = False, seed: int = 0) -> Rendering:
        """Tokens [K, n] generated earlier (a recording) decoded afresh, one bounded piece at a time on the codec
        thread behind live sessions' work; `mbd` decodes with MultiBand Diffusion (ValueError where the checkpoint
        has none), its noise from `seed`."""
        return Rendering(self.runtime, tokens, mbd, seed)

    def _require_healthy(self) -> None:
        health = self.health()
        if not health.ok:
            raise EngineUnavailable(f"the engine cannot take work: {health.problem}")

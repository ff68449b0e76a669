"""What the engine serves at once (sessions, styles, rows) and the sizes of what it takes in: read here, and only
here, so the decoder is sized from the same numbers every transport is held to.

The rules of each parameter (ranges of temperature, guidance, seeds, durations...) are engine/params.py's; it
reads MAX_STYLES and MAX_PROMPT_CHARS from here.
"""

import os
import typing as tp
from dataclasses import dataclass

from engine.lm.precision import AUTO, WEIGHT_FORMATS
from engine.lm.static_step import STEP_MODES
from engine.loading.model import EXTEND_STRIDE_SECONDS, MAX_WINDOW_SECONDS
from engine.runtime.host_memory import TRIM_SECONDS

MAX_STYLES = 4  # styles (prompts) blended in one session; each takes a decoder row, plus one unconditional row
MAX_PROMPT_TOKENS = 512  # T5 tokens per prompt or style (t5-base's trained length); longer ones are refused
MAX_PROMPT_CHARS = 4000  # a cheap bound checked before tokenizing (512 tokens of English fit well within it)
MAX_INPUT_AUDIO_SECONDS = 2 * 3600  # longer input_audio files are refused before anything is decoded
PREDICTION_ROWS = 2  # one conditional + one unconditional row
PREDICTION_PAD_MULTIPLE = 8  # see EngineConfig.prediction_pad
# The job bound. No job on the LM or codec thread runs a whole prediction: the LM thread's longest job is one
# decode step of the streams that want frames, with at most one prefill slice (`prefill_slice_steps`) or one
# melody prefix forward per stream; the codec thread's longest is one of an EnCodec decode of at most
# DECODE_EVERY_FRAMES + 29 frames, one MultiBand Diffusion piece on a `mbd_window_seconds` window (a U-Net pass of
# one band, or one band filter of its equaliser), or one segment of the stem separator (htdemucs' 7.8 s training
# segment) of a melody's chroma. With the demo checkpoints on this project's 2-vCPU machines, busy with other work,
# the longest such job measured 0.1-0.2 s on the LM thread and 0.3-1.4 s (a separator segment) on the codec
# thread; tests/engine/test_job_bound.py fails when a job of a 30 s MBD and a 40 s melody prediction beside a live
# session lasts longer than this. A real checkpoint's steps are longer by its size; the structure of the bound is
# the same.
JOB_BOUND_SECONDS = 2.0


class ConfigError(ValueError):
    """An environment variable with a value the engine cannot use; the message names it."""


@dataclass(frozen=True)
class EngineConfig:
    """Capacity and precision of one engine. The decoder has a row for every session at its most styles plus
    two for each concurrent prediction, so a full house of jams never blocks a prediction and vice versa."""

    max_sessions: tp.Optional[int] = 4  # None (JAM_MAX_SESSIONS=auto): as many as the GPU holds (engine.runtime.memory)
    max_styles: int = MAX_STYLES
    # predictions decoded at once (Cog's COG_MAX_CONCURRENCY); more wait in line for a free one
    max_predictions: int = 1
    # "auto" (chosen by the device: engine.lm.precision), "float32" (exact), "bfloat16", "float16", or "int8"
    weight_format: str = AUTO
    window_seconds: float = MAX_WINDOW_SECONDS
    keep_seconds: float = MAX_WINDOW_SECONDS - EXTEND_STRIDE_SECONDS  # context kept when the window rolls
    prefill_slice_steps: int = 64  # a long prefill runs in slices of this many steps between other streams' steps
    # MultiBand Diffusion decodes in windows of this many seconds, crossfaded over the overlap (engine.codec.mbd): a
    # window's U-Net pass is the longest piece of codec work, so this bounds it (docs/engine.md, "Job bound")
    mbd_window_seconds: float = 2.0
    mbd_overlap_seconds: float = 0.2
    # the decode step: "auto" (chosen by the device: engine.lm.static_step.choose_step_mode), "off" (eager forward),
    # "static" (capturable step; CUDA graphs on CUDA) or "compile" (the same through torch.compile)
    compile_step: str = AUTO
    # seconds between handing freed host memory back to the system (engine.runtime.host_memory); 0 turns it off
    trim_seconds: float = TRIM_SECONDS
    # LoRA adapters served beside the base model (engine.runtime.adapters): the folder scanned for *.safetensors,
    # how many are resident at once, and the highest rank they may have (the bank is preallocated at slots x rank)
    adapters_dir: tp.Optional[str] = None  # None: weights/adapters
    adapter_slots: int = 8
    adapter_max_rank: int = 16

    def __post_init__(self) -> None:
        if self.max_sessions is not None and self.max_sessions < 0:
            raise ConfigError("JAM_MAX_SESSIONS must be >= 0 (or auto)")
        if self.max_predictions < 1:
            raise ConfigError("MUSICGEN_MAX_PREDICTIONS (or COG_MAX_CONCURRENCY) must be >= 1")
        if not 1 <= self.max_styles <= MAX_STYLES:
            raise ConfigError(f"max_styles must be within 1..{MAX_STYLES}")
        if self.weight_format not in (AUTO, *WEIGHT_FORMATS):
            raise ConfigError(f"MUSICGEN_WEIGHT_FORMAT must be auto or one of {', '.join(WEIGHT_FORMATS)}, "
                              f"got {self.weight_format!r}")
        if self.compile_step not in STEP_MODES:
            raise ConfigError(f"MUSICGEN_COMPILE_STEP must be one of {', '.join(STEP_MODES)}, "
                              f"got {self.compile_step!r}")
        if self.trim_seconds < 0:
            raise ConfigError("MUSICGEN_TRIM_SECONDS must be >= 0 (0 turns the trim off)")
        if self.adapter_slots < 1 or self.adapter_max_rank < 1:
            raise ConfigError("MUSICGEN_ADAPTER_SLOTS and MUSICGEN_ADAPTER_MAX_RANK must be >= 1")
        if self.prefill_slice_steps < 1:
            raise ConfigError("prefill_slice_steps must be >= 1")
        if not 0 <= self.mbd_overlap_seconds < self.mbd_window_seconds:
            raise ConfigError("mbd_overlap_seconds must be >= 0 and shorter than mbd_window_seconds")

    @property
    def prediction_rows(self) -> int:
        return self.max_predictions * PREDICTION_ROWS

    @property
    def prediction_pad(self) -> int:
        """The row count of the predictions' shared forward (0: unpadded, when only one runs at a time). A matmul
        rounds a row by where it falls in the kernel's tiles: measured on this project's CPUs (oneDNN, float32 and
        bfloat16), a row's result depends on the number of rows and, past the last whole tile of 4, on its
        place; padded to a multiple of 8, it depends on neither, so no prediction's bytes depend on the others'."""
        if self.max_predictions == 1:
            return 0
        return -(-self.prediction_rows // PREDICTION_PAD_MULTIPLE) * PREDICTION_PAD_MULTIPLE

    @property
    def rows_per_session(self) -> int:
        return self.max_styles + 1

    @property
    def session_rows(self) -> int:
        if self.max_sessions is None:
            raise ValueError("max_sessions is auto: the engine sizes it from the device (engine.runtime.memory) first")
        return self.max_sessions * self.rows_per_session

    @property
    def rows(self) -> int:
        return self.session_rows + self.prediction_rows

    @classmethod
    def from_env(cls, environ: tp.Mapping[str, str] = os.environ) -> "EngineConfig":
        sessions = environ.get("JAM_MAX_SESSIONS", "4")
        try:
            max_sessions = None if sessions.strip().lower() == AUTO else int(sessions)
        except ValueError:
            raise ConfigError(f"JAM_MAX_SESSIONS must be an integer or auto, got {sessions!r}") from None
        predictions = environ.get("MUSICGEN_MAX_PREDICTIONS") or environ.get("COG_MAX_CONCURRENCY") or "1"
        try:
            max_predictions = int(predictions)
        except ValueError:
            raise ConfigError("MUSICGEN_MAX_PREDICTIONS / COG_MAX_CONCURRENCY must be an integer, "
                              f"got {predictions!r}") from None
        trim = environ.get("MUSICGEN_TRIM_SECONDS", str(TRIM_SECONDS))
        try:
            trim_seconds = float(trim)
        except ValueError:
            raise ConfigError(f"MUSICGEN_TRIM_SECONDS must be a number of seconds, got {trim!r}") from None
        adapters = {}
        for name, key in (("MUSICGEN_ADAPTER_SLOTS", "adapter_slots"),
                          ("MUSICGEN_ADAPTER_MAX_RANK", "adapter_max_rank")):
            if environ.get(name):
                try:
                    adapters[key] = int(environ[name])
                except ValueError:
                    raise ConfigError(f"{name} must be an integer, got {environ[name]!r}") from None
        return cls(max_sessions=max_sessions, max_predictions=max_predictions,
                   weight_format=environ.get("MUSICGEN_WEIGHT_FORMAT", AUTO),
                   compile_step=environ.get("MUSICGEN_COMPILE_STEP", AUTO), trim_seconds=trim_seconds,
                   adapters_dir=environ.get("MUSICGEN_ADAPTERS_DIR") or None, **adapters)

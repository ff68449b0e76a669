"""The engine as its transports see it: the one module predict.py and streaming/ import from the engine.

Everything else in engine/ (scheduler, workers, decoder, model, codec streaming) is the engine's own business;
tests/system/test_structure.py keeps it that way. `Engine` (engine/core.py) is the API itself; the rest are the types,
errors and limits a caller needs to speak to it. Every parameter rule and limit is engine.params': the protocols
build their message models from its field types, and answer a broken rule with its `describe`.
"""

from engine import params
from engine.codec.input_audio import (
    NORMALIZATION_STRATEGIES,
    OUTPUT_FORMATS,
    AudioInputError,
    AudioSlice,
    decode,
    decode_slice,
)
from engine.codec.loudness import LOUDNESS_HEADROOM_DB, normalize
from engine.codec.melody import WINDOW_SECONDS
from engine.config import MAX_PROMPT_CHARS, MAX_STYLES, PREDICTION_ROWS, EngineConfig
from engine.core import CapacityError, Description, Engine, Health

# weights/ (the demo builder and the fetcher) writes what the engine's loader reads, through the same names.
from engine.loading.hub import configure_offline_caches
from engine.loading.paths import DEFAULT_POINTER, DEMO_DIR, WEIGHTS_DIR, default_checkpoint
from engine.loading.separator import (
    HTDEMUCS_FILE,
    HTDEMUCS_URL,
    load_separator,
    providing_separator,
    save_separator,
    separator_path,
)
from engine.params import (
    MAX_DURATION_SECONDS,
    MAX_GUIDANCE,
    MAX_RAMP_SECONDS,
    MAX_SEED,
    MAX_TEMPERATURE,
    MAX_TOP_K,
    BatchRequest,
    RequestError,
    SamplingParams,
)
from engine.runtime.worker import EngineUnavailable
from engine.training.config import LR_SCHEDULERS, OPTIMIZERS, TrainingConfig
from engine.training.config import METHODS as TRAINING_METHODS
from engine.training.config import limits as training_limits
from engine.training.dataset import DatasetError, DatasetOptions
from engine.training.loop import TrainingCancelled
from engine.training.run import TrainingResult, fine_tune, merge_adapter_file
from engine.work.batch import BatchJob, BatchResult, GenerationCancelled, random_seed
from engine.work.chunk import Chunk, SessionClosed
from engine.work.live_input import DropTally, InputClock, InputReceipt
from engine.work.session import LiveSession
from engine.work.settings import SessionSettings
from engine.work.steering import Landing

__all__ = ["params", "LOUDNESS_HEADROOM_DB", "normalize", "NORMALIZATION_STRATEGIES",
           "OUTPUT_FORMATS", "AudioInputError", "AudioSlice", "decode",
           "decode_slice", "BatchJob", "BatchResult", "GenerationCancelled", "random_seed", "MAX_PROMPT_CHARS",
           "MAX_STYLES", "PREDICTION_ROWS", "EngineConfig", "CapacityError", "Description", "Engine", "Health", "Chunk",
           "LiveSession", "DropTally", "InputClock", "InputReceipt", "SessionClosed", "WINDOW_SECONDS",
           "MAX_DURATION_SECONDS", "MAX_GUIDANCE", "MAX_RAMP_SECONDS", "MAX_SEED", "MAX_TEMPERATURE", "MAX_TOP_K",
           "BatchRequest", "RequestError",
           "SamplingParams", "SessionSettings", "Landing", "EngineUnavailable", "configure_offline_caches",
           "DEFAULT_POINTER", "DEMO_DIR", "WEIGHTS_DIR", "default_checkpoint", "HTDEMUCS_FILE", "HTDEMUCS_URL",
           "load_separator", "providing_separator", "save_separator", "separator_path", "LR_SCHEDULERS", "OPTIMIZERS",
           "TrainingConfig", "TRAINING_METHODS", "training_limits", "DatasetError", "DatasetOptions",
           "TrainingCancelled", "TrainingResult", "fine_tune", "merge_adapter_file"]

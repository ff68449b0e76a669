"""The engine as its transports see it: the one module predict.py and streaming/ import from the engine.

Everything else in engine/ (scheduler, workers, decoder, model, codec streaming) is the engine's own business;
tests/test_structure.py keeps it that way. `Engine` (engine/core.py) is the API itself; the rest are the types,
errors and limits a caller needs to speak to it. Every parameter rule and limit is engine.params': the protocols
build their message models from its field types, and answer a broken rule with its `describe`.
"""

from engine import params
from engine.audio import NORMALIZATION_STRATEGIES, OUTPUT_FORMATS, AudioInputError, AudioSlice, decode, decode_slice
from engine.batch import BatchJob, BatchResult, GenerationCancelled, random_seed
from engine.chunk import Chunk, SessionClosed
from engine.config import MAX_PROMPT_CHARS, MAX_STYLES, PREDICTION_ROWS, EngineConfig
from engine.core import CapacityError, Engine, Health
from engine.jam import JamSession
from engine.melody import WINDOW_SECONDS
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
from engine.settings import JamSettings
from engine.steering import Placement
from engine.worker import EngineUnavailable

__all__ = ["params", "NORMALIZATION_STRATEGIES", "OUTPUT_FORMATS", "AudioInputError", "AudioSlice", "decode",
           "decode_slice", "BatchJob", "BatchResult", "GenerationCancelled", "random_seed", "MAX_PROMPT_CHARS",
           "MAX_STYLES", "PREDICTION_ROWS", "EngineConfig", "CapacityError", "Engine", "Health", "Chunk",
           "JamSession", "SessionClosed", "WINDOW_SECONDS", "MAX_DURATION_SECONDS", "MAX_GUIDANCE",
           "MAX_RAMP_SECONDS", "MAX_SEED", "MAX_TEMPERATURE", "MAX_TOP_K", "BatchRequest", "RequestError",
           "SamplingParams", "JamSettings", "Placement", "EngineUnavailable"]

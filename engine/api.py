"""The engine as its transports see it: the one module predict.py and streaming/ import from the engine.

Everything else in engine/ (scheduler, workers, decoder, model, codec streaming) is the engine's own business;
tests/test_structure.py keeps it that way. `Engine` (engine/core.py) is the API itself; the rest are the types,
errors and limits a caller needs to speak to it.
"""

from engine.audio import NORMALIZATION_STRATEGIES, OUTPUT_FORMATS, AudioInputError, AudioSlice, decode, decode_slice
from engine.batch import (
                          MAX_DURATION_SECONDS,
                          BatchJob,
                          BatchRequest,
                          BatchResult,
                          GenerationCancelled,
                          RequestError,
                          random_seed,
)
from engine.chunk import Chunk, SessionClosed
from engine.config import MAX_PROMPT_CHARS, MAX_STYLES, PREDICTION_ROWS, EngineConfig
from engine.core import CapacityError, Engine, Health
from engine.jam import JamSession
from engine.melody import WINDOW_SECONDS
from engine.settings import MAX_RAMP_SECONDS, JamSettings
from engine.steering import Placement
from engine.streams import MAX_GUIDANCE, MAX_TEMPERATURE, SamplingParams
from engine.worker import EngineUnavailable

__all__ = ["NORMALIZATION_STRATEGIES", "OUTPUT_FORMATS", "AudioInputError", "AudioSlice", "decode", "decode_slice",
           "MAX_DURATION_SECONDS", "BatchJob", "BatchRequest", "BatchResult", "GenerationCancelled", "RequestError",
           "random_seed", "MAX_PROMPT_CHARS", "MAX_STYLES", "PREDICTION_ROWS", "EngineConfig", "CapacityError",
           "Engine", "Health", "Chunk", "JamSession", "SessionClosed", "WINDOW_SECONDS", "MAX_RAMP_SECONDS",
           "JamSettings", "Placement", "MAX_GUIDANCE", "MAX_TEMPERATURE", "SamplingParams", "EngineUnavailable"]

"""What a client can steer in a jam session, validated on construction so a bad update never reaches a stream."""

import math
import typing as tp
from dataclasses import dataclass, field

from engine.params import ChunkSeconds, InputGain, InputMode, RampSeconds, SamplingParams, Styles, StyleWeights, checked
from engine.runtime.streams import Conditioning


@dataclass(frozen=True)
class SessionSettings:
    """Everything a client can steer. Validated on construction by the rules of engine.params, so a bad update
    never reaches the stream (the protocols check the same rules first, to answer in their own words)."""

    styles: tuple[str, ...]
    weights: tuple[float, ...]
    params: SamplingParams = SamplingParams(temperature=1.1, top_k=40, guidance=3.0)
    chunk_seconds: float = 2.0
    ramp_seconds: float = 0.0  # a change of styles glides over this long (0: instant); engine.work.steering
    # the player's live input (LiveSession.play_input): its gain, and whether it is mixed over the model's own
    # output for its span or replaces it (engine.work.live_input); taken up at the next injection
    input_gain: float = 1.0
    input_mode: str = "mix"
    # what the caller made these settings from (e.g. Lyria's prompts and config), handed back on every chunk
    # generated with them; the engine never reads it, and it takes no part in comparisons
    source: tp.Any = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "styles", checked(Styles, self.styles, "styles"))  # a list is kept as a tuple
        object.__setattr__(self, "weights", checked(StyleWeights, self.weights, "style weights"))
        if len(self.weights) != len(self.styles):
            raise ValueError(f"{len(self.weights)} style weights for {len(self.styles)} styles")
        if sum(self.weights) <= 0:
            raise ValueError("style weights must not all be zero")
        if not math.isfinite(sum(self.weights)):  # each is finite, their sum may not be: none could be normalised
            raise ValueError("style weights are too large: their sum is not a finite number")
        checked(ChunkSeconds, self.chunk_seconds, "chunk_seconds")
        checked(RampSeconds, self.ramp_seconds, "ramp_seconds")
        checked(InputGain, self.input_gain, "input_gain")
        checked(InputMode, self.input_mode, "input_mode")

    @property
    def conditioning(self) -> Conditioning:
        total = float(sum(self.weights))
        return Conditioning(list(self.styles), [w / total for w in self.weights])

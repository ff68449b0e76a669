"""What a client can steer in a jam session, validated on construction so a bad update never reaches a stream."""

import math
import typing as tp
from dataclasses import dataclass, field

from engine.params import ChunkSeconds, RampSeconds, SamplingParams, Styles, StyleWeights, checked, model_choice
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
    # the LoRA adapter the session plays with (engine.params.model_choice: None is the base model); chosen when the
    # session opens, for its whole life
    model: tp.Optional[str] = None
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
        object.__setattr__(self, "model", model_choice(self.model))  # "base", "models/x" -> None, "x"

    @property
    def conditioning(self) -> Conditioning:
        total = float(sum(self.weights))
        return Conditioning(list(self.styles), [w / total for w in self.weights])

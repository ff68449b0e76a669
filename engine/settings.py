"""What a client can steer in a jam session, validated on construction so a bad update never reaches a stream."""

import typing as tp
from dataclasses import dataclass, field

from engine.config import MAX_PROMPT_CHARS, MAX_STYLES
from engine.streams import Conditioning, SamplingParams, normalized_weights

MAX_RAMP_SECONDS = 60.0


@dataclass(frozen=True)
class JamSettings:
    """Everything a client can steer. Validated on construction, so a bad update never reaches the stream."""

    styles: tuple[str, ...]
    weights: tuple[float, ...]
    params: SamplingParams = SamplingParams(temperature=1.1, top_k=40, guidance=3.0)
    chunk_seconds: float = 2.0
    ramp_seconds: float = 0.0  # a change of styles glides over this long (0: instant); engine.steering
    # what the caller made these settings from (e.g. Lyria's prompts and config), handed back on every chunk
    # generated with them; the engine never reads it, and it takes no part in comparisons
    source: tp.Any = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not self.styles or any(not s.strip() for s in self.styles):
            raise ValueError("styles must name at least one non-empty style")
        if len(self.styles) > MAX_STYLES:
            raise ValueError(f"{len(self.styles)} styles given; at most {MAX_STYLES} can be blended")
        if any(len(s) > MAX_PROMPT_CHARS for s in self.styles):
            raise ValueError(f"a style is longer than {MAX_PROMPT_CHARS} characters")
        if len(self.weights) != len(self.styles):
            raise ValueError(f"{len(self.weights)} style weights for {len(self.styles)} styles")
        normalized_weights(self.weights)
        self.params.validate()
        if not 0 < self.chunk_seconds <= 10:
            raise ValueError("chunk length must be within (0, 10] seconds")
        if not 0 <= self.ramp_seconds <= MAX_RAMP_SECONDS:
            raise ValueError(f"style ramp must be within [0, {MAX_RAMP_SECONDS:g}] seconds")

    @property
    def conditioning(self) -> Conditioning:
        return Conditioning(list(self.styles), normalized_weights(self.weights))

"""What a jam session hands out: a chunk of audio with its tokens and the settings in force over it."""

from dataclasses import dataclass

import torch

from engine.work.settings import SessionSettings


class SessionClosed(RuntimeError):
    pass


@dataclass(frozen=True)
class Chunk:
    index: int
    audio: torch.Tensor  # [channels, samples]: `seconds` of new audio then `overlap_seconds` shared with the next
    sample_rate: int
    seconds: float
    overlap_seconds: float
    generation_seconds: float  # from the request to the chunk being ready
    frames: torch.Tensor  # [K, n] tokens that completed while this chunk was produced
    settings: SessionSettings  # in force at the chunk's first sample
    # settings that start inside the chunk: (seconds from its first sample, settings), in order
    changes: tuple[tuple[float, SessionSettings], ...] = ()
    start_seconds: float = 0.0  # the chunk's first sample on the stream's timeline (a restart starts it again)

    @property
    def real_time_factor(self) -> float:
        """Wall seconds per second of audio: below 1 is faster than real time."""
        return self.generation_seconds / self.seconds

"""Engine sessions as the engine tests drive them (tests/engine/work): the settings most cases play, a session's
chunks taken in order, what a client hears of them (each chunk without its overlap tail) and where two recordings
first differ (the A/B comparisons of live changes and live input)."""

import typing as tp

import torch

from engine.params import SamplingParams
from engine.work.session import SessionSettings

SETTINGS = SessionSettings(styles=("jazz", "hiphop"), weights=(1.0, 0.8),
                           params=SamplingParams(temperature=1.1, top_k=40, guidance=1.1), chunk_seconds=1.0)


def collect(session, count: int) -> list:
    """The session's next `count` chunks, in order."""
    return [session.next_chunk().result(timeout=120) for _ in range(count)]


def session_chunks(engine, count: int, seed: int, settings: SessionSettings = SETTINGS, **open_options: tp.Any
                   ) -> list:
    """Opens a session, takes `count` chunks, always closes it."""
    session = engine.open_session(settings, seed=seed, **open_options)
    try:
        return collect(session, count)
    finally:
        session.close()


def stitch(chunks) -> torch.Tensor:
    """What a client hears: each chunk without its overlap tail (the tail equals the next chunk's start)."""
    return torch.cat([c.audio[:, : c.audio.shape[-1] - int(round(c.overlap_seconds * c.sample_rate))]
                      for c in chunks], dim=-1)


def first_difference(a: torch.Tensor, b: torch.Tensor) -> int:
    """The first sample (over their common length) where two recordings [C, n] differ; -1 where none does."""
    n = min(a.shape[-1], b.shape[-1])
    different = (a[..., :n] != b[..., :n]).any(dim=0).nonzero()
    return int(different[0]) if len(different) else -1

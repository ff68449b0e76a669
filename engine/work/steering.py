"""Where a live change lands in a session's audio, and how style weights glide to a new blend.

Landing. An update reaches the LM thread between two decode steps and applies from the next one. MusicGen's
delay pattern samples codebook q of frame t at step t + 1 + delay[q], so at the step about to run (the stream's
`absolute_complete` frames are whole) the finest codebook of frame F = absolute_complete is the first token sampled
with the new settings, and the coarse codebook 0 (which carries most of what is heard) follows from frame
F + max(delays). The codec is not causal: a frame colours up to `lookahead_frames` (4) frames of audio before it,
but audio already decoded never changes, and F is always past the last frame handed to the codec, so the first
sample that can differ lies in [(F - lookahead) * hop, F * hop]: the placement (and a chunk's `changes`) names
(F - lookahead) * hop, the first sample the new settings can reach (measured on the demo checkpoint, the first
differing sample of an A/B pair falls a quarter frame after it), and they are fully in force from frame
F + max(delays) on, max(delays) + lookahead frames later (8 frames, 0.16 s, on MusicGen). That position is
fixed by the frames generated when the update is taken up, and it is reported back, so two sessions with the same
seed whose changes land on the same frames give the same audio to the sample.

Ramp. `ramp_seconds` > 0 glides the guidance weights linearly, one decode step at a time, from the blend in force
to the new one over round(ramp_seconds * frame_rate) steps, on the union of the old and new styles (each style a
decoder row); at its end the styles that fell to zero give their rows back. magenta-retry moves its style
embedding a fraction chunk/ramp of the remaining way once per chunk; this moves every step and ends on the target.
"""

import typing as tp
from dataclasses import dataclass


@dataclass(frozen=True)
class Landing:
    """Where new settings start in the audio the client receives."""

    chunk: int  # the first chunk with audio made under the new settings (`applies_from_chunk`)
    offset_seconds: float  # from that chunk's first new sample to where the new settings start
    stream_seconds: float  # the same place on the stream's timeline (from its first sample; a restart resets it)
    ramp_seconds: float = 0.0  # the glide that starts there (0: instant)


def place(sample: int, sample_rate: int, cut_samples: int, chunk: int, chunk_samples: int,
          next_samples: int, ramp_seconds: float = 0.0) -> Landing:
    """The chunk and offset of stream sample `sample`. The chunk in the making (or, when none is, the next one to
    be asked for) is `chunk`, starting at `cut_samples` with `chunk_samples` new samples; later chunks are
    `next_samples` long (the settings in force now)."""
    start, index, length = cut_samples, chunk, chunk_samples
    if sample >= start + length:
        later = (sample - start - length) // next_samples
        index += 1 + later
        start += length + later * next_samples
    return Landing(chunk=index, offset_seconds=max(0, sample - start) / sample_rate,
                   stream_seconds=sample / sample_rate, ramp_seconds=ramp_seconds)


@dataclass
class Ramp:
    """A linear glide of a stream's style weights over `steps` decode steps (`done` of them taken)."""

    start: list[float]
    end: list[float]
    steps: int
    done: int = 0

    @property
    def weights(self) -> list[float]:
        """The weights of the step about to run: the first step already moves, the last one is the target."""
        a = min(1.0, (self.done + 1) / self.steps)
        return [(1 - a) * s + a * e for s, e in zip(self.start, self.end, strict=True)]

    @property
    def finished(self) -> bool:
        return self.done >= self.steps


def union_blend(texts: tp.Sequence[str], weights: tp.Sequence[float], target_texts: tp.Sequence[str],
                target_weights: tp.Sequence[float]) -> tuple[list[str], list[float], list[float]]:
    """The styles a glide runs on (the current ones in place, new ones after them, so rows keep their context),
    with the current weights and the target's on them."""
    union = list(texts) + [t for t in dict.fromkeys(target_texts) if t not in texts]
    start = list(weights) + [0.0] * (len(union) - len(texts))
    end = [0.0] * len(union)
    for text, weight in zip(target_texts, target_weights, strict=True):
        end[union.index(text)] += weight
    return union, start, end


def kept_rows(texts: tp.Sequence[str], weights: tp.Sequence[float]) -> list[int]:
    """The style rows a finished glide keeps: those with weight."""
    return [i for i, (_, w) in enumerate(zip(texts, weights, strict=True)) if w > 0]

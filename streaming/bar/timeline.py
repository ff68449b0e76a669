"""Bar mode's pure parts: the bar clock, the loop's bar-aligned context, the style blend, and the spool that
output chunks are cut from. No engine, no sockets.

The timeline: chunk k spans samples [round(k*B*S), round((k+1)*B*S)) of one continuous stream at the target
rate, S = sr*60*beats_per_bar/bpm samples per bar, held as an exact fraction (the bpm as written in decimal:
93.5 is 187/2), so no number of chunks drifts from the bar grid and every chunk has its exact length.
"""

import math
import typing as tp
from dataclasses import dataclass
from fractions import Fraction

import torch


def exact_bpm(bpm: float) -> Fraction:
    """The bpm as the decimal the client wrote (93.5 -> 187/2, not the binary float's neighbour)."""
    return Fraction(str(float(bpm)))


@dataclass(frozen=True)
class BarClock:
    sample_rate: int
    bpm: Fraction
    beats_per_bar: int

    @property
    def samples_per_bar(self) -> Fraction:
        return Fraction(self.sample_rate * 60 * self.beats_per_bar) / self.bpm

    @property
    def seconds_per_bar(self) -> float:
        return float(Fraction(60 * self.beats_per_bar) / self.bpm)

    def at(self, bars: tp.Union[int, float, Fraction]) -> int:
        """The sample where bar `bars` (counted from 0, fractions allowed) begins."""
        return round(Fraction(bars) * self.samples_per_bar)

    def chunk_bounds(self, index: int, bars_per_chunk: int) -> tuple[int, int]:
        return self.at(index * bars_per_chunk), self.at((index + 1) * bars_per_chunk)


def tiled_tail(wav: torch.Tensor, samples: int) -> torch.Tensor:
    """The last `samples` samples of `wav` [C, n] repeated end to end (a loop played over and over), ending where
    the loop ends: a loop shorter than the window fills it from its own earlier repetitions."""
    if wav.shape[-1] == 0:
        return torch.zeros(wav.shape[0], samples)
    repeats = math.ceil(samples / wav.shape[-1])
    return wav.repeat(1, repeats)[:, wav.shape[-1] * repeats - samples:]


def loop_slice(loop: torch.Tensor, start: int, samples: int) -> torch.Tensor:
    """Samples [start, start + samples) of `loop` [C, n] played over and over from sample 0: the loop's audio
    under an output chunk, the reference its loudness is matched to."""
    if loop.shape[-1] == 0:
        return torch.zeros(loop.shape[0], samples)
    return loop[:, (start + torch.arange(samples)) % loop.shape[-1]]


def loop_context(loop: torch.Tensor, clock: BarClock, window_samples: int) -> tuple[torch.Tensor, int]:
    """The context a bar session continues from: `window_samples` of the tiled loop ending on the loop's end, a
    bar line (whole codec frames, so that its tokens end exactly where the audio does: a part frame would be
    padded and move the continuation's start off the bar line). Its last `bars` whole bars (the largest that fit,
    returned) are the loop's bar-aligned tail; what precedes them is left-filled from the loop before that tail,
    as the loop plays."""
    bars = max(1, int(Fraction(window_samples) / clock.samples_per_bar))
    return tiled_tail(loop, window_samples), bars


def spliced_context(recent: torch.Tensor, anchor: torch.Tensor, clock: BarClock, anchor_bars: float,
                    window_samples: int) -> torch.Tensor:
    """reseed_splice's context: the stream's own recent audio (ending on the bar line where the splice installs)
    with its last `anchor_bars` bars replaced by the last `anchor_bars` bars of `anchor` (the client's combined
    mix, tiled if shorter); the rest is kept. Both at the clock's rate; the result is `window_samples` long."""
    replaced = min(clock.at(max(float(anchor_bars), 0.0)), window_samples)
    kept = tiled_tail(recent, window_samples - replaced) if replaced < window_samples else recent[:, :0]
    return torch.cat([kept, tiled_tail(anchor, replaced)], dim=-1)


def style_blend(styles: tp.Sequence[str], weights: tp.Sequence[float], loop_weight: float,
                guidance: float) -> tuple[tuple[str, ...], tuple[float, ...], float]:
    """magenta-retry mixes one style embedding from the loop (weight `loop_weight`) and the texts. MusicGen
    continues the loop's audio whatever the weights (it is the context) and steers by text through weighted
    classifier-free guidance, so the loop's share is the guidance it takes away from the texts: the texts are
    blended by their weights at guidance * sum(text weights) / (loop_weight + sum(text weights)). No styles (or
    all weights 0): a pure continuation (guidance 0; the placeholder text is then never used)."""
    pairs = [(s, w) for s, w in zip(styles, weights, strict=True) if w > 0]
    if not pairs:
        return ("music",), (1.0,), 0.0
    text = sum(w for _, w in pairs)
    share = text / (max(loop_weight, 0.0) + text)
    return tuple(s for s, _ in pairs), tuple(w for _, w in pairs), guidance * share


class Spool:
    """The output stream at the target rate, appended piece by piece and cut into chunks by absolute sample
    index. It holds only what is not yet cut, plus `history` samples before the last cut (the recent audio a
    splice keeps), so its memory is bounded whatever the session's length.

    A seam (a new model stream after a reseed) starts at a chunk boundary: what was generated past it is dropped,
    but its first `crossfade` samples fade out under the new stream's first ones, so the seam does not click."""

    def __init__(self, channels: int, history: int, crossfade: int) -> None:
        self.history, self.crossfade = history, crossfade
        self._audio = torch.zeros(channels, 0)
        self._start = 0  # absolute index of _audio[:, 0]
        self._cut = 0  # absolute index where the next chunk begins
        self._fade_out: tp.Optional[torch.Tensor] = None  # the old stream past a seam, waiting for the new one

    @property
    def cut_at(self) -> int:
        """Absolute index where the next chunk begins."""
        return self._cut

    @property
    def end(self) -> int:
        """Absolute index one past the last sample appended."""
        return self._start + self._audio.shape[-1]

    def append(self, wav: torch.Tensor) -> None:
        if self._fade_out is not None and wav.shape[-1]:
            n = min(self._fade_out.shape[-1], wav.shape[-1])
            ramp = torch.linspace(0.0, 1.0, n + 2)[1:-1]
            head = self._fade_out[:, :n] * torch.cos(ramp * math.pi / 2) + wav[:, :n] * torch.sin(ramp * math.pi / 2)
            wav = torch.cat([head, wav[:, n:]], dim=-1)
            self._fade_out = None
        self._audio = torch.cat([self._audio, wav.float()], dim=-1)

    def cut(self, start: int, end: int) -> torch.Tensor:
        """Samples [start, end) (absolute); `start` is where the previous cut ended."""
        if start != self._cut or end > self.end or end < start:
            raise ValueError(f"cannot cut [{start}, {end}) from a spool holding [{self._cut}, {self.end})")
        piece = self._audio[:, start - self._start: end - self._start].clone()
        self._cut = end
        drop = max(0, end - self.history - self._start)
        self._audio, self._start = self._audio[:, drop:], self._start + drop
        return piece

    def recent(self) -> torch.Tensor:
        """Up to `history` samples of cut audio, ending where the last cut ended."""
        return self._audio[:, max(0, self._cut - self.history - self._start): self._cut - self._start]

    def seam(self) -> None:
        """A new stream goes on from the last cut: audio appended past it is dropped (faded out under the next)."""
        past = self._audio[:, self._cut - self._start:]
        self._fade_out = past[:, :self.crossfade] if self.crossfade and past.shape[-1] else None
        self._audio = self._audio[:, :self._cut - self._start]

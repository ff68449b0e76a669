"""Token streams: one endless or finite generation over a block of decoder rows.

A stream owns one row per style (conditional) plus one unconditional row. All its rows share the token history;
their logits combine as weighted classifier-free guidance:
    logits = uncond + guidance * sum_i w_i * (cond_i - uncond),   sum_i w_i = 1
which is audiocraft's CFG when there is one style (engine.lm.sampling computes it for all streams of a step at once).
Sampling draws from a counter keyed by the stream's seed, so a seeded stream is reproducible whatever else shares
the forward.
"""

import typing as tp
from dataclasses import dataclass, field

import torch

from engine.lm.pattern import DelayedFrames
from engine.lm.sampling import RowSettings
from engine.params import SamplingParams
from engine.work.steering import Ramp


@dataclass
class Conditioning:
    """What a stream is steered by: texts with weights, already normalised."""

    texts: list[str]
    weights: list[float]

    @property
    def rows(self) -> int:
        return len(self.texts) + 1


@dataclass
class Stream:
    """Generation state of one session or prediction; the scheduler maps it onto decoder rows."""

    conditioning: Conditioning
    params: SamplingParams
    seed: int  # with `draws`, all the randomness of the stream's sampling (engine.lm.sampling)
    frames: DelayedFrames
    keep_frames: int  # frames of context kept by a re-prefill
    target_frames: tp.Optional[int] = None  # finite streams (batch predictions) stop here
    window_frames: tp.Optional[int] = None  # a finite stream's window: each one ends as audiocraft's does
    rows: slice = field(default_factory=lambda: slice(0, 0))
    adapter: int = 0  # the LoRA adapter slot its rows run with (engine.runtime.adapters; 0: the base model)
    pending_prefill: int = 0  # sequence steps to feed (in slices of parallel forwards) before stepping
    prefilled: int = 0  # of those, steps already fed
    conditions_dirty: bool = True
    melody: tp.Optional[torch.Tensor] = None  # melody models: the chroma prefix [P, D] of the styled rows (None: none)
    prefix_dirty: bool = True  # melody models: the rows' prefix must be (re)computed before the next forward
    emitted_frames: int = 0  # frames handed to the consumer so far (absolute count)
    frame_offset: int = 0  # absolute index of frames.codes[..., 0]
    rollovers: int = 0
    draws: int = 0  # decode steps sampled so far: the host's copy of the stream's counter in engine.lm.sampling
    wanted_frames: int = 0  # the consumer wants steps until this many absolute frames are complete
    on_frames: tp.Optional[tp.Callable[["Stream"], None]] = None  # engine thread, after each step
    on_failed: tp.Optional[tp.Callable[["Stream", BaseException], None]] = None  # engine thread, once
    error: tp.Optional[BaseException] = None  # set when this stream failed and was dropped
    # a melody prediction beyond one window: the chroma prefix of each window, appended (on the LM thread) as the
    # codec thread analyses them; the stream waits at the end of a window until the next one's prefix is here
    window_prefixes: tp.Optional[list[torch.Tensor]] = None
    ramp: tp.Optional[Ramp] = None  # a glide of the style weights under way (engine.work.steering), one step at a time

    def wants_steps(self) -> bool:
        limit = self.target_frames if self.target_frames is not None else self.wanted_frames
        if self.window_prefixes is not None and len(self.window_prefixes) <= self.rollovers + 1:
            limit = min(limit, self.frame_offset + self.frames.end)
        return self.absolute_complete < limit

    @property
    def remaining_steps(self) -> int:
        """Decode steps until the consumer has what it asked for (a prefill slice counts as one step)."""
        limit = self.target_frames if self.target_frames is not None else self.wanted_frames
        return max(0, limit - self.absolute_complete) + (1 if self.pending_prefill else 0)

    @property
    def absolute_complete(self) -> int:
        return self.frame_offset + self.frames.complete_frames

    def done(self) -> bool:
        return self.target_frames is not None and self.absolute_complete >= self.target_frames

    def take_frames(self) -> torch.Tensor:
        """Complete frames [K, n] produced since the last call (the first row; all rows share tokens)."""
        start = self.emitted_frames - self.frame_offset
        end = self.frames.complete_frames
        if self.target_frames is not None:
            end = min(end, self.target_frames - self.frame_offset)
        # after a roll-over the kept prompt's last frames count as incomplete until the next steps: nothing new,
        # and nothing handed out twice
        end = max(start, end)
        chunk = self.frames.codes[0, :, start:end].clone()
        self.emitted_frames = self.frame_offset + end
        return chunk

    def row_settings(self, first_row: int) -> RowSettings:
        """What this stream's rows (from `first_row` of a run) contribute to a step's guidance and sampling: the
        weights of a glide under way, else the conditioning's."""
        weights = self.ramp.weights if self.ramp is not None else self.conditioning.weights
        return RowSettings(first_row=first_row, style_weights=tuple(weights), guidance=self.params.guidance,
                           temperature=self.params.temperature, top_k=self.params.top_k, top_p=self.params.top_p,
                           seed=self.seed)

    def accept_tokens(self, tokens: torch.Tensor) -> None:
        """Stores one step's sampled tokens [K]; a glide of the weights moves on, and ends on its targets."""
        self.frames.accept(tokens.view(1, -1))
        self.draws += 1
        if self.ramp is not None:
            self.ramp.done += 1
            if self.ramp.finished:
                self.conditioning = Conditioning(self.conditioning.texts, list(self.ramp.end))
                self.ramp = None

    def roll_window(self) -> None:
        """Keeps the last `keep_frames` complete frames as a prompt, to be re-prefilled in one forward. A finite
        stream's next window ends where audiocraft's windowed extension ends it (the window's length or the
        target), and a windowed melody moves on to the next window's prefix."""
        dropped = max(0, self.frames.complete_frames - self.keep_frames)
        assert self.emitted_frames >= self.frame_offset + dropped, "rolling past frames not yet consumed"
        self.frames.keep_last(self.keep_frames)
        self.frame_offset += dropped
        if self.target_frames is not None:
            self.frames.end = _window_end(self.target_frames - self.frame_offset, self.window_frames)
        self.pending_prefill = self.frames.step
        self.prefilled = 0
        self.rollovers += 1
        if self.window_prefixes is not None:
            self.melody = self.window_prefixes[self.rollovers]
            self.prefix_dirty = True


def _window_end(remaining: int, window_frames: tp.Optional[int]) -> int:
    """Where a finite stream's current window stops: audiocraft generates each window as a sequence of
    min(remaining, window) frames, its delayed codebooks padded at that end."""
    return remaining if window_frames is None else min(remaining, window_frames)


def window_offsets(total_frames: int, window_frames: int, keep_frames: int) -> list[int]:
    """The first frame of each window of a finite stream, as audiocraft's windowed extension (MusicGen.
    _generate_tokens) places them: one window when it fits, else windows every `window - keep` frames until one
    reaches the end."""
    stride = window_frames - keep_frames
    extra = max(0, total_frames - window_frames)
    return [k * stride for k in range(1 + -(-extra // stride))]


def new_stream(lm, conditioning: Conditioning, params: SamplingParams, seed: int, window_frames: int,
               keep_frames: int, prompt: tp.Optional[torch.Tensor] = None,
               target_frames: tp.Optional[int] = None, melody: tp.Optional[torch.Tensor] = None,
               adapter: int = 0) -> Stream:
    """A stream ready for the scheduler; `prompt` [K, P] are audio tokens to continue from, `melody` a chroma
    prefix (engine.codec.melody) on melody models."""
    delays = list(lm.pattern_provider.delays)
    frames = DelayedFrames(1, delays, lm.special_token_id, capacity=window_frames + max(delays) + 2,
                           device=next(lm.parameters()).device)
    empty = torch.zeros(1, len(delays), 0, dtype=torch.long, device=frames.codes.device)
    steps = frames.load_prompt(empty if prompt is None else prompt[None])
    frames.end = None if target_frames is None else _window_end(target_frames, window_frames)
    return Stream(conditioning=conditioning, params=params, seed=seed, frames=frames,
                  keep_frames=keep_frames, target_frames=target_frames, window_frames=window_frames,
                  pending_prefill=steps, melody=melody, adapter=adapter)

"""MusicGen's delayed codebook pattern, incrementally: codebook q of frame t is produced at step t + 1 + delay[q].

audiocraft builds the whole interleaved sequence up front for a known length; an endless stream cannot, so this
keeps the frames generated so far and derives each step's input and outputs from them. The step counter and the
frame count of a finite sequence live twice: as host integers (for the scheduler's decisions) and as device
tensors (for the step's input and the update of the codes), kept equal by every method, so a decode step reads
nothing back from the device.
"""

import typing as tp

import torch

_UNBOUNDED = 1 << 62  # the device-side end of an endless sequence


class DelayedFrames:
    """Frames [rows, K, capacity] of codes (-1 = not generated yet) with a step counter per stream."""

    def __init__(self, rows: int, delays: list[int], special_token: int, capacity: int, device="cpu") -> None:
        self.delays = torch.tensor(delays, dtype=torch.long, device=device)
        self.max_delay = max(delays)
        self.special_token = special_token
        self.codes = torch.full((rows, len(delays), capacity), -1, dtype=torch.long, device=device)
        self._codebooks = torch.arange(len(delays), device=device)
        self._step = 0  # index of the next sequence step to predict
        self._step_t = torch.zeros((), dtype=torch.long, device=device)
        self._end: tp.Optional[int] = None  # a finite stream's frame count: later frames are never generated
        self._end_t = torch.full((), _UNBOUNDED, dtype=torch.long, device=device)

    @property
    def step(self) -> int:
        return self._step

    @step.setter
    def step(self, value: int) -> None:
        self._step = value
        self._step_t.fill_(value)

    @property
    def end(self) -> tp.Optional[int]:
        return self._end

    @end.setter
    def end(self, value: tp.Optional[int]) -> None:
        self._end = value
        self._end_t.fill_(_UNBOUNDED if value is None else value)

    @property
    def complete_frames(self) -> int:
        """Frames whose every codebook is known."""
        complete = max(0, self.step - 1 - self.max_delay)
        return complete if self.end is None else min(complete, self.end)

    def load_prompt(self, prompt: torch.Tensor) -> int:
        """Writes prompt frames [rows, K, P]; returns how many sequence steps to prefill (P + 1)."""
        frames = prompt.shape[-1]
        self.codes[:, :, :frames] = prompt
        self.step = frames + 1
        return self.step

    def sequence_values(self, first: int, last: int) -> torch.Tensor:
        """The interleaved sequence for steps [first, last): [rows, K, last - first]."""
        return self._values(torch.arange(first, last, device=self.codes.device))

    def next_input(self) -> torch.Tensor:
        """The input of the step to predict ([rows, K]): the sequence value at `step - 1`, from the device counter."""
        return self._values((self._step_t - 1).view(1))[:, :, 0]

    def _values(self, steps: torch.Tensor) -> torch.Tensor:
        frame = steps.view(1, -1) - 1 - self.delays.view(-1, 1)  # [K, S]
        # as audiocraft's pattern, frames before the start and past a finite sequence's end are special tokens
        valid = (frame >= 0) & (frame < self._end_t)
        gathered = self.codes.gather(2, frame.clamp(min=0).unsqueeze(0).expand(self.codes.shape[0], -1, -1))
        return torch.where(valid.unsqueeze(0), gathered, torch.full_like(gathered, self.special_token))

    def accept(self, sampled: torch.Tensor) -> None:
        """Stores the tokens sampled for step `self.step` ([rows, K]); keeps codes already known (prompts).
        All K codebooks in one indexed write, at positions computed on the device."""
        frame = self._step_t - 1 - self.delays  # [K]
        valid = (frame >= 0) & (frame < self._end_t) & (frame < self.codes.shape[2])
        index = frame.clamp(0, self.codes.shape[2] - 1)
        current = self.codes[:, self._codebooks, index]  # [rows, K]
        self.codes[:, self._codebooks, index] = torch.where(valid & (current < 0), sampled, current)
        self._step += 1
        self._step_t.add_(1)

    def keep_last(self, frames: int) -> None:
        """Drops all but the last `frames` complete frames (and every incomplete one), keeping them as a prompt."""
        end = self.complete_frames
        start = max(0, end - frames)
        kept = self.codes[:, :, start:end].clone()
        self.codes.fill_(-1)
        self.load_prompt(kept)

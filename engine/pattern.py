"""MusicGen's delayed codebook pattern, incrementally: codebook q of frame t is produced at step t + 1 + delay[q].

audiocraft builds the whole interleaved sequence up front for a known length; an endless stream cannot, so this
keeps the frames generated so far and derives each step's input and outputs from them.
"""

import torch


class DelayedFrames:
    """Frames [rows, K, capacity] of codes (-1 = not generated yet) with a step counter per stream."""

    def __init__(self, rows: int, delays: list[int], special_token: int, capacity: int, device="cpu") -> None:
        self.delays = torch.tensor(delays, dtype=torch.long, device=device)
        self.max_delay = int(self.delays.max())
        self.special_token = special_token
        self.codes = torch.full((rows, len(delays), capacity), -1, dtype=torch.long, device=device)
        self.step = 0  # index of the next sequence step to predict
        self.end: int | None = None  # a finite stream's frame count: later frames are never generated

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
        steps = torch.arange(first, last, device=self.codes.device)
        frame = steps.view(1, -1) - 1 - self.delays.view(-1, 1)  # [K, S]
        valid = frame >= 0
        if self.end is not None:  # as audiocraft's pattern, a finite sequence is padded with special tokens
            valid &= frame < self.end
        gathered = self.codes.gather(2, frame.clamp(min=0).unsqueeze(0).expand(self.codes.shape[0], -1, -1))
        return torch.where(valid.unsqueeze(0), gathered, torch.full_like(gathered, self.special_token))

    def accept(self, sampled: torch.Tensor) -> None:
        """Stores the tokens sampled for step `self.step` ([rows, K]); keeps codes already known (prompts)."""
        frame = self.step - 1 - self.delays  # [K]
        for q in range(self.codes.shape[1]):
            t = int(frame[q])
            if 0 <= t < (self.codes.shape[2] if self.end is None else min(self.end, self.codes.shape[2])):
                known = self.codes[:, q, t] >= 0
                self.codes[:, q, t] = torch.where(known, self.codes[:, q, t], sampled[:, q])
        self.step += 1

    def keep_last(self, frames: int) -> None:
        """Drops all but the last `frames` complete frames (and every incomplete one), keeping them as a prompt."""
        end = self.complete_frames
        start = max(0, end - frames)
        kept = self.codes[:, :, start:end].clone()
        self.codes.fill_(-1)
        self.load_prompt(kept)

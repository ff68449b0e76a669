"""The demo families' inputs and yardsticks: a melody file, and audiocraft's own tokens for a prompt (what the
Replicate predictor would hand audiocraft), against which the engine's fast path is compared."""

import math
import typing as tp
from pathlib import Path

import soundfile as sf
import torch

from streaming import formats as audio


def melody_file(path: Path, freqs: tuple[float, ...] = (440.0, 660.0, 550.0), seconds: float = 3.0) -> Path:
    """A wav of one note per frequency, in turn."""
    rate = 32000
    t = torch.arange(int(seconds * rate)) / rate
    note = (t * len(freqs) / seconds).long().clamp(max=len(freqs) - 1)
    sf.write(path, (0.5 * torch.sin(2 * math.pi * torch.tensor(freqs)[note] * t)).numpy(), rate)
    return path


def audiocraft_tokens(engine, prompt: str, seconds: float, melody: tp.Optional[Path] = None) -> torch.Tensor:
    """Greedy tokens [K, frames] from audiocraft's own MusicGen API on the engine's model (on the LM thread, which
    owns it), given the whole melody file: what the Replicate predictor hands audiocraft."""
    musicgen = engine.model.musicgen

    def generate() -> torch.Tensor:
        musicgen.set_generation_params(use_sampling=False, top_k=250, duration=seconds, cfg_coef=3.0,
                                       extend_stride=18)
        if melody is None:
            return musicgen.generate([prompt], return_tokens=True)[1][0]
        wav, rate = audio.decode(melody)
        return musicgen.generate_with_chroma([prompt], wav[None], rate, return_tokens=True)[1][0]

    return engine.lm_worker.call(generate).result()

"""What the engine's work types may touch: a prediction, a live session and a rendering get this, not the Engine.

The Engine (engine/core.py) builds one at load and keeps the public API (admission, sessions, health) to itself;
the work types reach the model, the two worker threads and the scheduler only through these fields and methods,
so what they depend on is written here, typed, and nowhere else.
"""

import typing as tp
from dataclasses import dataclass

import torch

from engine.codec.melody import WINDOW_SECONDS, Piece, melody_pieces
from engine.config import MAX_PROMPT_TOKENS, EngineConfig
from engine.lm import conditions
from engine.loading.model import LoadedModel
from engine.params import SamplingParams, StyleText, checked
from engine.runtime.deadlines import Deadlines
from engine.runtime.scheduler import Scheduler
from engine.runtime.streams import Conditioning, Stream, new_stream
from engine.runtime.worker import Worker

if tp.TYPE_CHECKING:
    from engine.work.settings import SessionSettings


@dataclass(frozen=True)
class Runtime:
    model: LoadedModel
    config: EngineConfig
    scheduler: Scheduler
    lm_worker: Worker  # the LM thread: jobs, and between them batched decode steps
    codec_worker: Worker  # the codec thread: encode, streaming decode, MultiBand Diffusion

    @property
    def deadlines(self) -> Deadlines:
        """The realtime streams' deadlines the two workers and the scheduler order their work by."""
        return self.scheduler.deadlines

    @property
    def window_frames(self) -> int:
        return int(self.config.window_seconds * self.model.frame_rate)

    @property
    def keep_frames(self) -> int:
        return int(self.config.keep_seconds * self.model.frame_rate)

    def check_prompt(self, text: str) -> None:
        """Raises ValueError when the text conditioner cannot take `text` whole."""
        checked(StyleText, text, "the text")  # the cheap bound first (engine.params), then the tokens
        tokens = conditions.count_tokens(self.model.musicgen.lm, text)
        if tokens > MAX_PROMPT_TOKENS:
            raise ValueError(f"{tokens} text tokens; the text encoder takes at most {MAX_PROMPT_TOKENS}: shorten it")

    def check_settings(self, settings: "SessionSettings") -> None:
        for style in settings.styles:
            try:
                self.check_prompt(style)
            except ValueError as exc:
                raise ValueError(f"style {style[:40]!r}: {exc}") from None

    def new_stream(self, conditioning: Conditioning, params: SamplingParams, seed: int,
                   prompt: tp.Optional[torch.Tensor] = None, target_frames: tp.Optional[int] = None,
                   melody: tp.Optional[torch.Tensor] = None, adapter: int = 0) -> Stream:
        return new_stream(self.model.musicgen.lm, conditioning, params, seed, self.window_frames,
                          self.keep_frames, prompt, target_frames, melody, adapter)

    def melody_prefix_pieces(self, wav: torch.Tensor, sample_rate: int, duration_seconds: float = WINDOW_SECONDS,
                             offset_seconds: float = 0.0) -> Piece:
        """The chroma prefix of the window that starts `offset_seconds` into an output of `duration_seconds`, as
        bounded pieces to run on the codec thread (engine.runtime.worker.run_in_pieces): the stem separator must not
        hold that thread for a whole window. Raises ValueError on models without melody conditioning."""
        if not self.model.supports_melody:
            raise ValueError("this model cannot follow a melody (it has no chroma conditioner); use a melody "
                             "checkpoint")
        return melody_pieces(self.model.musicgen.lm, wav, sample_rate, duration_seconds, offset_seconds)

    def encode_now(self, wav: torch.Tensor, sample_rate: int) -> torch.Tensor:
        """Audio [C, T] -> tokens [K, frames] with the model's codec (codec thread only)."""
        from audiocraft.data.audio_utils import convert_audio

        musicgen = self.model.musicgen
        wav = convert_audio(wav, sample_rate, musicgen.sample_rate, musicgen.audio_channels)
        codes, _ = musicgen.compression_model.encode(wav[None].to(self.model.device))
        return codes[0]

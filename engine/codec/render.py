"""Tokens generated earlier -> audio, in bounded pieces on the codec thread (a jam's recording, decoded afresh).

A recording can be an hour of tokens; decoding it in one call would hold the codec thread, and with it every live
session's next chunk, for minutes. Here each piece is one job at BACKGROUND priority, so live sessions' decodes
(URGENT) go between pieces: EnCodec decodes `PIECE_FRAMES` frames per job (engine.codec.stream: equal to one
offline decode within its tested tolerance); MultiBand Diffusion runs one U-Net pass or band filter per job
(engine.codec.mbd) and gives each window's audio once the window is done. Its kind of piece is admitted to the
engine's deadlines (engine.runtime.deadlines) while the rendering lives, so realtime consumers raise their lead
before its first piece runs, and each piece starts only in the slack realtime streams leave.
"""

import typing as tp
import weakref
from concurrent.futures import Future

import torch

from engine.codec import mbd as diffusion
from engine.codec.mbd import SlicedDiffusion
from engine.codec.stream import StreamingCodecDecoder
from engine.runtime.deadlines import CODEC
from engine.runtime.worker import BACKGROUND

if tp.TYPE_CHECKING:
    from engine.runtime.context import Runtime

PIECE_FRAMES = 50
LABEL = "render"  # the kind of an EnCodec piece of a rendering (engine.runtime.deadlines)


class Rendering:
    """One token sequence [K, n] being decoded. `next_piece()` runs one bounded piece and resolves to the audio
    it made final ([C, samples], possibly empty), or to None once all of it was given; ask for the next piece only
    after the previous one resolved."""

    def __init__(self, runtime: "Runtime", tokens: torch.Tensor, mbd: bool, seed: int) -> None:
        model, config = runtime.model, runtime.config
        if mbd and model.mbd is None:
            raise ValueError("this checkpoint has no MultiBand Diffusion weights: fetch them with "
                             "`python -m weights.fetch --mbd`, or ask for mbd=0")
        self.worker = runtime.codec_worker
        self.tokens = tokens.long().to(model.device)
        self._next = 0  # the first frame not yet given to the codec
        self._finished = False
        self.codec: tp.Optional[StreamingCodecDecoder] = None
        self.diffusion: tp.Optional[SlicedDiffusion] = None
        if mbd:
            self.diffusion = SlicedDiffusion(
                model.mbd, seed, window_frames=int(config.mbd_window_seconds * model.frame_rate),
                overlap_frames=int(config.mbd_overlap_seconds * model.frame_rate))
            self.diffusion.push(self.tokens, last=True)
        else:
            self.codec = StreamingCodecDecoder(model.musicgen.compression_model)
        # admitted while it lives: released once all of it was given, or when the rendering is dropped unfinished
        labels = diffusion.LABELS if mbd else (LABEL,)
        self._release = weakref.finalize(self, runtime.deadlines.admit((CODEC, label) for label in labels))

    def next_piece(self) -> "Future[tp.Optional[torch.Tensor]]":
        label = self.diffusion.next_label if self.diffusion is not None else LABEL
        return self.worker.call(self._piece, priority=BACKGROUND, label=label)

    def _piece(self) -> tp.Optional[torch.Tensor]:
        if self._finished:
            self._release()
            return None
        if self.diffusion is not None:
            if not self.diffusion.done:
                self.diffusion.run_once()
            self._finished = self.diffusion.done
            return self.diffusion.take_final()
        if self._next >= self.tokens.shape[-1]:
            self._finished = True
            return self.codec.flush()
        frames = self.tokens[:, self._next: self._next + PIECE_FRAMES]
        self._next += frames.shape[-1]
        return self.codec.push(frames)

"""Decodes a growing token stream to audio chunk by chunk, equal to decoding the whole stream at once.

EnCodec's decoder is not causal: a frame's audio depends on a few frames after it (convolutions) and, through its
LSTM, on frames before it. Each call decodes the new frames together with `left_frames` of already-decoded context
and holds back the last `lookahead_frames`, whose audio still depends on frames not generated yet. The concatenated
output then matches an offline decode within a tolerance the tests measure (SNR, boundary jumps).
Stereo checkpoints work unchanged: their codec (audiocraft's InterleaveStereoCompressionModel) takes the 8 interleaved
codebooks [8, n] and decodes each channel's 4 with the mono EnCodec, so chunks are [2, samples]
(tests/engine/codec/test_stream.py also covers EnCodec's LSTM, whose memory the left context must span).
"""

import torch


class StreamingCodecDecoder:
    def __init__(self, codec, left_frames: int = 25, lookahead_frames: int = 4) -> None:
        self.codec = codec
        self.left_frames = left_frames
        self.lookahead_frames = lookahead_frames
        self.hop = int(round(codec.sample_rate / codec.frame_rate))
        self._tokens: torch.Tensor | None = None  # [K, n] the frames kept for context and lookahead
        self._decoded_until = 0  # absolute frame index up to which audio was emitted
        self._first_kept = 0  # absolute frame index of self._tokens[:, 0]

    def skip(self, frames: torch.Tensor) -> None:
        """Takes frames [K, n] as context only (an audio prompt the listener already has): no audio for them."""
        assert self._tokens is None, "skip only before the first push"
        self._tokens = frames[:, -self.left_frames:] if self.left_frames else frames[:, :0]
        self._decoded_until = frames.shape[-1]
        self._first_kept = frames.shape[-1] - self._tokens.shape[-1]

    def push(self, frames: torch.Tensor) -> torch.Tensor:
        """Adds frames [K, n]; returns audio [C, samples] for the frames that are now final."""
        self._tokens = frames if self._tokens is None else torch.cat([self._tokens, frames], dim=-1)
        final_until = self._first_kept + self._tokens.shape[-1] - self.lookahead_frames
        return self._decode_until(final_until, self._first_kept + self._tokens.shape[-1])

    def flush(self) -> torch.Tensor:
        """Audio for every remaining frame (the end of a finite stream)."""
        if self._tokens is None:
            return torch.zeros(self.codec.channels, 0)
        end = self._first_kept + self._tokens.shape[-1]
        return self._decode_until(end, end)

    def _decode_until(self, final_until: int, available_until: int) -> torch.Tensor:
        if final_until <= self._decoded_until:
            return torch.zeros(self.codec.channels, 0)
        context_start = max(self._first_kept, self._decoded_until - self.left_frames)
        window = self._tokens[:, context_start - self._first_kept: available_until - self._first_kept]
        with torch.no_grad():
            audio = self.codec.decode(window[None], None)[0]
        begin = (self._decoded_until - context_start) * self.hop
        end = (final_until - context_start) * self.hop
        out = audio[:, begin:end].float().cpu()
        self._decoded_until = final_until
        keep_from = max(self._first_kept, final_until - self.left_frames)
        self._tokens = self._tokens[:, keep_from - self._first_kept:]
        self._first_kept = keep_from
        return out

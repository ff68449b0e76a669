"""Loudness normalisation of generated audio, as audiocraft's writer applies it for the Replicate MusicGen models
(audio_write): the engine's, so that no transport imports audiocraft. Encoding stays the transports'
(streaming/formats.py)."""

import torch

from engine.codec.input_audio import NORMALIZATION_STRATEGIES

# audiocraft's defaults for its writer, which the Replicate MusicGen models use through audio_write.
LOUDNESS_HEADROOM_DB = 14.0
PEAK_CLIP_HEADROOM_DB = 1.0
RMS_HEADROOM_DB = 18.0


def normalize(wav: torch.Tensor, sample_rate: int, strategy: str) -> torch.Tensor:
    """audiocraft's normalisation, as the anchor model applies it (loudness with the tanh compressor)."""
    from audiocraft.data.audio_utils import normalize_audio

    if strategy not in NORMALIZATION_STRATEGIES:
        raise ValueError(f"normalization_strategy must be one of {', '.join(NORMALIZATION_STRATEGIES)}")
    wav = normalize_audio(wav.float(), normalize=True, strategy=strategy,
                          peak_clip_headroom_db=PEAK_CLIP_HEADROOM_DB, rms_headroom_db=RMS_HEADROOM_DB,
                          loudness_headroom_db=LOUDNESS_HEADROOM_DB, loudness_compressor=True,
                          log_clipping=False, sample_rate=sample_rate)
    return wav.clamp(-1.0, 1.0)

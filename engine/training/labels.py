"""Captions computed from the audio (the fine-tuner's `auto_labeling`), from what runs here without extra models.

The fine-tuner labels genre, mood and instruments with essentia's TensorFlow classifiers (downloaded at training
time) and tempo and key with librosa. Only the librosa part is computable offline in this image, so a caption gets
"<tempo> bpm, key of <pitch class>", computed as the fine-tuner computes them (beat tracking; the pitch class
whose chroma energy is largest).
"""

import numpy as np
import torch

PITCH_CLASSES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")


def describe_music(wav: torch.Tensor, sample_rate: int) -> str:
    """Tempo and key of audio [channels, samples], e.g. "120 bpm, key of A"."""
    import librosa

    mono = wav.float().mean(0).numpy().astype(np.float32)
    tempo, _ = librosa.beat.beat_track(y=mono, sr=sample_rate)
    bpm = int(round(float(np.atleast_1d(tempo)[0])))
    chroma = librosa.feature.chroma_stft(y=mono, sr=sample_rate)
    key = PITCH_CLASSES[int(np.argmax(chroma.sum(axis=1)))]
    return f"{bpm} bpm, key of {key}" if bpm > 0 else f"key of {key}"

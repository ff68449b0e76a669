"""Small training datasets as users upload them (an archive of audio files with `<name>.txt` captions beside them),
shared by the training tests and benchmarks/train_bench.py."""

import tarfile
import zipfile
from pathlib import Path

from tests.support.helpers import sine_wav

TONES = (220.0, 330.0, 440.0, 550.0, 660.0, 770.0, 880.0, 990.0)


def clip_folder(folder: Path, clips: int = 3, seconds: float = 6.0, rate: int = 44100, captions: bool = True,
                channels: int = 1) -> list[Path]:
    """`clips` tones of `seconds` each (44.1 kHz, as the fine-tuner resamples to) with a caption file each."""
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for index in range(clips):
        freq = TONES[index % len(TONES)]
        files.append(sine_wav(folder / f"clip{index}.wav", seconds, rate=rate, freq=freq, channels=channels))
        if captions:
            (folder / f"clip{index}.txt").write_text(f"a pure tone at {freq:.0f} hz\nsecond line is ignored\n")
    return files


def pack(folder: Path, archive: Path) -> Path:
    """Every file of `folder` into a zip, tar or tar.gz (by `archive`'s name), at the archive's root."""
    files = sorted(p for p in folder.iterdir() if p.is_file())
    if archive.name.endswith(".zip"):
        with zipfile.ZipFile(archive, "w") as zf:
            for path in files:
                zf.write(path, path.name)
    else:
        with tarfile.open(archive, "w:gz" if archive.name.endswith(".gz") else "w") as tar:
            for path in files:
                tar.add(path, path.name)
    return archive


def clip_dataset(tmp: Path, name: str = "dataset.zip", **kwargs) -> Path:
    """A packed dataset of `clip_folder(**kwargs)`."""
    clip_folder(tmp / "clips", **kwargs)
    return pack(tmp / "clips", tmp / name)

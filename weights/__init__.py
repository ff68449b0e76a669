"""Where checkpoints live, and the code that builds the demo checkpoint or fetches a real one.

A checkpoint directory holds audiocraft's release layout (``state_dict.bin`` + ``compression_state_dict.bin``)
and, optionally, ``hub/`` (a Hugging Face hub cache with the text encoder) and ``torch/`` (a torch hub cache
for demucs), so that loading never needs a network.
"""

from pathlib import Path

WEIGHTS_DIR = Path(__file__).resolve().parent
DEMO_DIR = WEIGHTS_DIR / "demo"
# Written by `python -m weights.fetch`: the name of the checkpoint directory loaded by default.
DEFAULT_POINTER = WEIGHTS_DIR / "DEFAULT"


def default_checkpoint() -> Path:
    """The checkpoint the predictor loads when no override is given: a fetched one if any, else the demo."""
    if DEFAULT_POINTER.is_file():
        return WEIGHTS_DIR / DEFAULT_POINTER.read_text().strip()
    return DEMO_DIR

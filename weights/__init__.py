"""Where checkpoints live, and the code that builds the demo checkpoint or fetches a real one.

A checkpoint directory holds audiocraft's release layout (``state_dict.bin`` + ``compression_state_dict.bin``)
and, optionally, ``hub/`` (a Hugging Face hub cache with the text encoder) and ``torch/`` (a torch hub cache
for demucs), so that loading never needs a network.
"""

from engine.api import DEFAULT_POINTER, DEMO_DIR, WEIGHTS_DIR, default_checkpoint

__all__ = ["DEFAULT_POINTER", "DEMO_DIR", "WEIGHTS_DIR", "default_checkpoint"]

"""Where checkpoints live on disk: the repository's `weights/` directory (weights/__init__.py explains its layout).

The engine reads these paths; `weights/` (the demo builder and the fetcher) writes there and builds on the engine.
"""

from pathlib import Path

WEIGHTS_DIR = Path(__file__).resolve().parents[2] / "weights"
DEMO_DIR = WEIGHTS_DIR / "demo"
# Written by `python -m weights.fetch`: the name of the checkpoint directory loaded by default.
DEFAULT_POINTER = WEIGHTS_DIR / "DEFAULT"


def default_checkpoint() -> Path:
    """The checkpoint the predictor loads when no override is given: a fetched one if any, else the demo."""
    if DEFAULT_POINTER.is_file():
        return WEIGHTS_DIR / DEFAULT_POINTER.read_text().strip()
    return DEMO_DIR

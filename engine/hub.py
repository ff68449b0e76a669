"""Points every hub lookup audiocraft makes (T5, demucs, MBD) at local caches, with the network off.

audiocraft resolves its parts by hub names (``t5-base``, ``htdemucs``...). huggingface_hub and torch read their
cache locations from the environment when first imported, so this must run before audiocraft is imported.
"""

import logging
import os
import sys
from pathlib import Path

from weights import WEIGHTS_DIR

logger = logging.getLogger(__name__)


def configure_offline_caches(checkpoint_dir: Path) -> None:
    """Use the checkpoint's own caches when it ships them, else the project-wide ones under weights/."""
    if "huggingface_hub" in sys.modules and os.environ.get("HF_HUB_CACHE") is None:
        logger.warning("huggingface_hub was imported before the offline caches were configured")
    hub = checkpoint_dir / "hub"
    torch_home = checkpoint_dir / "torch"
    os.environ["HF_HUB_CACHE"] = str(hub if hub.is_dir() else WEIGHTS_DIR / "hub")
    os.environ["TORCH_HOME"] = str(torch_home if torch_home.is_dir() else WEIGHTS_DIR / "torch")
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

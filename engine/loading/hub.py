"""Points every hub lookup audiocraft makes (T5, demucs, MBD) at local caches, with the network off.

audiocraft resolves its parts by hub names (``t5-base``, ``htdemucs``...). huggingface_hub reads its cache location
and offline flag from the environment when first imported, and transformers reads them from huggingface_hub's
constants on every lookup; torch hub reads TORCH_HOME on every call. So this sets the environment and, when
huggingface_hub is already imported, its constants too.
"""

import os
import sys
from pathlib import Path

from engine.loading.paths import WEIGHTS_DIR


def configure_offline_caches(checkpoint_dir: Path) -> None:
    """Use the checkpoint's own caches when it ships them, else the project-wide ones under weights/."""
    hub = checkpoint_dir / "hub"
    torch_home = checkpoint_dir / "torch"
    hub_cache = str(hub if hub.is_dir() else WEIGHTS_DIR / "hub")
    os.environ["HF_HUB_CACHE"] = hub_cache
    os.environ["TORCH_HOME"] = str(torch_home if torch_home.is_dir() else WEIGHTS_DIR / "torch")
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:
        constants.HF_HUB_CACHE = hub_cache
        constants.HF_HUB_OFFLINE = True

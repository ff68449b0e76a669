"""Fetches a real MusicGen checkpoint into weights/ where a network exists; everything then runs offline.

    python -m weights.fetch --model small [--mbd]

Writes weights/musicgen-<model>/ (state_dict.bin + compression_state_dict.bin), the T5 text encoder into the
project hub cache weights/hub/ under the name MusicGen's config uses (t5-base), for melody models the demucs
stem separator into weights/torch/, with --mbd the MultiBand Diffusion decoder, and points weights/DEFAULT at it.
"""

import argparse
import logging
import sys

from weights import DEFAULT_POINTER, WEIGHTS_DIR

logger = logging.getLogger(__name__)

MODELS = ("small", "medium", "melody", "large")
T5_FILES = ["config.json", "spiece.model", "tokenizer.json", "tokenizer_config.json", "model.safetensors"]
MBD_REPO, MBD_FILE = "facebook/multiband-diffusion", "mbd_musicgen_32khz.th"
HTDEMUCS_URL = "https://dl.fbaipublicfiles.com/demucs/hybrid_transformer/955717e8-8726e21a.th"
OFFLINE_ADVICE = (
    "Fetching needs a network that reaches the Hugging Face hub. On an offline machine, copy a checkpoint "
    "directory (state_dict.bin + compression_state_dict.bin) into weights/ and pass it with COG_WEIGHTS, or use "
    "the demo checkpoint (python -m weights.demo)."
)


class FetchError(RuntimeError):
    pass


def _check_reachable(repo_id: str) -> None:
    """Fails fast with one clear message instead of the hub client's minute of retries."""
    import urllib.error
    import urllib.request

    from huggingface_hub import constants

    url = f"{constants.ENDPOINT}/api/models/{repo_id}"
    try:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=10).close()
    except urllib.error.HTTPError:
        return  # the hub answered; the download itself reports auth or missing-file errors
    except OSError as exc:
        message = f"Cannot reach the Hugging Face hub at {constants.ENDPOINT} ({exc}). {OFFLINE_ADVICE}"
        raise FetchError(message) from None


def fetch(model: str, with_mbd: bool) -> None:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    target = WEIGHTS_DIR / f"musicgen-{model}"
    hub_cache = WEIGHTS_DIR / "hub"
    _check_reachable(f"facebook/musicgen-{model}")
    try:
        for name in ("state_dict.bin", "compression_state_dict.bin"):
            path = hf_hub_download(f"facebook/musicgen-{model}", name, cache_dir=hub_cache)
            target.mkdir(parents=True, exist_ok=True)
            link = target / name
            link.unlink(missing_ok=True)
            link.symlink_to(path)
        for name in T5_FILES:
            hf_hub_download("t5-base", name, cache_dir=hub_cache)
        if with_mbd:
            path = hf_hub_download(MBD_REPO, MBD_FILE, cache_dir=hub_cache)
            (target / MBD_FILE).unlink(missing_ok=True)
            (target / MBD_FILE).symlink_to(path)
        if model == "melody":
            import torch

            checkpoints = WEIGHTS_DIR / "torch" / "hub" / "checkpoints"
            checkpoints.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(HTDEMUCS_URL, str(checkpoints / HTDEMUCS_URL.rsplit("/", 1)[1]))
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as exc:
        message = f"Could not download musicgen-{model}: {type(exc).__name__}: {exc}. {OFFLINE_ADVICE}"
        raise FetchError(message) from None
    DEFAULT_POINTER.write_text(target.name + "\n")
    logger.info("fetched %s; weights/DEFAULT now points at it", target)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=MODELS, default="small")
    parser.add_argument("--mbd", action="store_true", help="also fetch the MultiBand Diffusion decoder")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        fetch(args.model, args.mbd)
    except FetchError as exc:
        logger.error("%s", exc)
        sys.exit(1)


if __name__ == "__main__":
    main()

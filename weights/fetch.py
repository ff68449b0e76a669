"""Fetches a real MusicGen checkpoint into weights/ where a network exists; everything then runs offline.

    python -m weights.fetch --model small [--mbd]
    python -m weights.fetch --list

Writes weights/musicgen-<model>/ (state_dict.bin + compression_state_dict.bin), the T5 text encoder into the
project hub cache weights/hub/ under the name MusicGen's config uses (t5-base), for melody models the htdemucs
stem separator into weights/torch/ (read by engine.codec.melody), with --mbd the MultiBand Diffusion decoder (mono
models only), and points weights/DEFAULT at it.
"""

import argparse
import logging
import sys
from dataclasses import dataclass

from weights import DEFAULT_POINTER, WEIGHTS_DIR

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Family:
    """What one published MusicGen needs beside its own two files."""

    channels: int  # 2: 8 interleaved codebooks decoded by a stereo wrapper of the mono 32 kHz EnCodec
    melody: bool  # prepends a chroma of the melody's stems: needs htdemucs

    @property
    def mbd_available(self) -> bool:
        return self.channels == 1  # MultiBand Diffusion decodes one 32 kHz channel

    def needs(self, model: str) -> str:
        parts = [f"facebook/musicgen-{model}", "t5-base"] + (["htdemucs"] if self.melody else [])
        return " + ".join(parts) + (" (+ MBD with --mbd)" if self.mbd_available else "")


FAMILIES = {
    "small": Family(1, False), "medium": Family(1, False), "large": Family(1, False),
    "melody": Family(1, True), "melody-large": Family(1, True),
    "stereo-small": Family(2, False), "stereo-medium": Family(2, False), "stereo-large": Family(2, False),
    "stereo-melody": Family(2, True), "stereo-melody-large": Family(2, True),
}
MODELS = tuple(FAMILIES)
T5_FILES = ["config.json", "spiece.model", "tokenizer.json", "tokenizer_config.json", "model.safetensors"]
MBD_REPO, MBD_FILE = "facebook/multiband-diffusion", "mbd_musicgen_32khz.th"
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

    family = FAMILIES[model]
    if with_mbd and not family.mbd_available:
        raise FetchError(f"MultiBand Diffusion decodes mono audio; musicgen-{model} is stereo and decodes with its "
                         "codec (drop --mbd)")

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
        if family.melody:
            import torch

            from engine.api import HTDEMUCS_FILE, HTDEMUCS_URL

            checkpoints = WEIGHTS_DIR / "torch" / "hub" / "checkpoints"
            checkpoints.mkdir(parents=True, exist_ok=True)
            # demucs names its files <signature>-<sha256 prefix>.th; the download is checked against that prefix
            torch.hub.download_url_to_file(HTDEMUCS_URL, str(checkpoints / HTDEMUCS_FILE),
                                           hash_prefix=HTDEMUCS_FILE.rsplit("-", 1)[1].split(".")[0])
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError, RuntimeError) as exc:  # RuntimeError: bad hash
        message = f"Could not download musicgen-{model}: {type(exc).__name__}: {exc}. {OFFLINE_ADVICE}"
        raise FetchError(message) from None
    DEFAULT_POINTER.write_text(target.name + "\n")
    logger.info("fetched %s; weights/DEFAULT now points at it", target)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=MODELS, default="small")
    parser.add_argument("--mbd", action="store_true", help="also fetch the MultiBand Diffusion decoder (mono)")
    parser.add_argument("--list", action="store_true", help="list the published families and what each needs")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.list:
        for name, family in FAMILIES.items():
            sys.stdout.write(f"{name:20} {family.needs(name)}\n")
        return
    try:
        fetch(args.model, args.mbd)
    except FetchError as exc:
        logger.error("%s", exc)
        sys.exit(1)


if __name__ == "__main__":
    main()

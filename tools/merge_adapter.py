"""Merges a LoRA adapter (what `method: lora` training returns) into its base checkpoint, writing the fine-tuner's
full `{'xp.cfg', 'model'}` file: for audiocraft, the fine-tuner's predictor, or any tool that knows no adapters.

    python -m tools.merge_adapter adapter.safetensors merged.th                 # base: the default checkpoint
    python -m tools.merge_adapter adapter.safetensors merged.th --base weights/musicgen-small

An adapter trained on other base weights is refused (its base fingerprint and the checkpoint's are printed).
"""

import argparse
import logging
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("adapter", type=Path, help="the adapter file (.safetensors)")
    parser.add_argument("out", type=Path, help="where to write the merged checkpoint")
    parser.add_argument("--base", default=None, help="base checkpoint (path or URL); default: weights/DEFAULT or demo")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from engine.api import merge_adapter_file

    try:
        path = merge_adapter_file(args.adapter, args.out, args.base)
    except ValueError as exc:  # AdapterError, CheckpointError: the message says what does not fit
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

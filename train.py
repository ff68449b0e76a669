"""Cog's training entry point (`train: "train.py:train"` in cog.yaml), with the inputs of the Replicate MusicGen
fine-tuner (sakemin/cog-musicgen-fine-tuner) so its users can switch, plus ours (method, lora_rank, lora_alpha,
seed). All the work is the engine's (engine/training, through engine/api.py); docs/training.md is the how-to.

The checkpoint trained is the one predictions serve: COG_WEIGHTS, else weights/DEFAULT or the demo. The output is
`TrainingOutput(weights=...)` as the fine-tuner returns it: `method: full` gives its `{'xp.cfg', 'model'}` file,
`method: lora` a small adapter file; either is a valid COG_WEIGHTS / `setup(weights)` for predict.py.
"""

import logging
import os
import shutil
import tempfile
import typing as tp

from cog import BaseModel, Input, Path

from engine.api import (
    LR_SCHEDULERS,
    OPTIMIZERS,
    TRAINING_METHODS,
    DatasetError,
    DatasetOptions,
    TrainingConfig,
    fine_tune,
    random_seed,
    training_limits,
)
from weights.demo import ensure_default_checkpoint

logger = logging.getLogger("train")
_previous_outputs: list[str] = []  # the last run's output folder, removed when the next run starts


class TrainingOutput(BaseModel):
    weights: Path


def train(
    dataset_path: Path = Input(
        description="Path to dataset directory. Input audio files will be chunked into multiple 30 second audio "
                    "files. Must be one of 'tar', 'tar.gz', 'gz', 'zip' types of compressed file, or a single "
                    "'wav', 'mp3', 'flac' file. Audio files must be longer than 5 seconds."),
    auto_labeling: bool = Input(
        description="Appending the tempo (bpm) and key librosa computes to each segment's caption.", default=True),
    drop_vocals: bool = Input(
        description="Dropping the vocal tracks from the audio files in dataset, by separating sources with Demucs "
                    "(htdemucs from local weights: `python -m weights.fetch --model melody` provides it).",
        default=False),
    one_same_description: tp.Optional[str] = Input(description="A description for all of audio data",
                                                   default=None),
    epochs: int = Input(description="Number of epochs to train for", default=3, **training_limits("epochs")),
    updates_per_epoch: int = Input(description="Number of iterations for one epoch", default=100,
                                   **training_limits("updates_per_epoch")),
    batch_size: int = Input(description="Batch size (one GPU; the fine-tuner's 16 fits musicgen-small).", default=16,
                            **training_limits("batch_size")),
    optimizer: str = Input(description="Type of optimizer.", default="dadam", choices=list(OPTIMIZERS)),
    lr: float = Input(description="Learning rate (1 for dadam, which adapts it; about 1e-4 for adamw).", default=1.0,
                      **training_limits("lr")),
    lr_scheduler: str = Input(description="Type of lr_scheduler", default="cosine", choices=list(LR_SCHEDULERS)),
    warmup: int = Input(description="Warmup of lr_scheduler", default=8, **training_limits("warmup")),
    cfg_p: float = Input(description="CFG dropout ratio", default=0.3, **training_limits("cfg_p")),
    method: str = Input(description="`lora`: train a small adapter on the frozen model (one GPU, a file of a few "
                                    "MB); `full`: train every weight of the LM.",
                        default="lora", choices=list(TRAINING_METHODS)),
    lora_rank: int = Input(description="Rank of the LoRA adapter (method lora).", default=16,
                           **training_limits("lora_rank")),
    lora_alpha: float = Input(description="LoRA scale numerator: updates are scaled by lora_alpha / lora_rank.",
                              default=16.0, **training_limits("lora_alpha")),
    seed: tp.Optional[int] = Input(description="Seed for batch order and dropout. If None, a random seed is used.",
                                   default=None, **training_limits("seed")),
) -> TrainingOutput:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for old in _previous_outputs:
        shutil.rmtree(old, ignore_errors=True)
    _previous_outputs.clear()
    seed = random_seed() % (2**31) if seed is None or seed < 0 else seed
    source = os.environ.get("COG_WEIGHTS") or None
    if source is None:
        ensure_default_checkpoint()
    out_dir = tempfile.mkdtemp(prefix="musicgen-training-")
    _previous_outputs.append(out_dir)
    config = TrainingConfig(epochs=epochs, updates_per_epoch=updates_per_epoch, batch_size=batch_size,
                            optimizer=optimizer, lr=lr, lr_scheduler=lr_scheduler, warmup=warmup, cfg_p=cfg_p,
                            seed=seed, method=method, lora_rank=lora_rank, lora_alpha=lora_alpha)
    options = DatasetOptions(one_same_description=one_same_description or None, auto_labeling=auto_labeling,
                             drop_vocals=drop_vocals)
    logger.info("training %s with seed %d", method, seed)
    try:
        result = fine_tune(Path(dataset_path), config, options, source=source, out_dir=Path(out_dir))
    except DatasetError as exc:
        raise ValueError(f"dataset: {exc}") from None
    logger.info("done: %d segments, cross-entropy %.3f -> %.3f, %.0f tokens/s", result.segments,
                result.cross_entropy_before, result.cross_entropy_after, result.stats.tokens_per_second)
    return TrainingOutput(weights=Path(result.path))

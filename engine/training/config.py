"""What a training run is asked to do, and the limits of each input: train.py builds its Cog inputs from these
limits (so an out-of-range value is Cog's 422) and `TrainingConfig.validate` enforces the same rules for any other
caller, in one place."""

import typing as tp
from dataclasses import asdict, dataclass

OPTIMIZERS = ("dadam", "adamw")
LR_SCHEDULERS = ("exponential", "cosine", "polynomial_decay", "inverse_sqrt", "linear_warmup")
METHODS = ("lora", "full")
# (ge, le) of each bounded input. batch_size: the fine-tuner's 16 is its 8-GPU default; one GPU holds it for
# musicgen-small with gradient checkpointing (benchmarks/gpu_check.sh measures it).
LIMITS: dict[str, tuple[float, float]] = {
    "epochs": (1, 100),
    "updates_per_epoch": (1, 10000),
    "batch_size": (1, 64),
    "lr": (0.0, 10.0),
    "warmup": (0, 10000),
    "cfg_p": (0.0, 1.0),
    "lora_rank": (1, 256),
    "lora_alpha": (0.0, 4096.0),
    "seed": (0, 2**31 - 1),
}
EXPONENTIAL_GAMMA = 0.99  # per update, when lr_scheduler is "exponential"
MAX_GRAD_NORM = 1.0  # audiocraft's optim.max_norm: clipping keeps lr=1 D-Adaptation from blowing up


def limits(name: str) -> dict[str, float]:
    """Cog Input keyword arguments (ge, le) for a bounded input."""
    low, high = LIMITS[name]
    return {"ge": low, "le": high}


@dataclass(frozen=True)
class TrainingConfig:
    """The fine-tuner's training inputs (same names, same defaults) and ours (method, lora_rank, lora_alpha)."""

    epochs: int = 3
    updates_per_epoch: int = 100
    batch_size: int = 16
    optimizer: str = "dadam"
    lr: float = 1.0
    lr_scheduler: str = "cosine"
    warmup: int = 8
    cfg_p: float = 0.3
    seed: int = 0
    method: str = "lora"
    lora_rank: int = 16
    lora_alpha: float = 16.0
    log_every: int = 10  # updates between progress lines (loss, tokens/s, ETA)

    @property
    def total_updates(self) -> int:
        return self.epochs * self.updates_per_epoch

    def validate(self) -> "TrainingConfig":
        """Raises ValueError naming the first input out of its range or choices."""
        for name, (low, high) in LIMITS.items():
            value = getattr(self, name)
            if not low <= value <= high:
                raise ValueError(f"{name} must be between {low:g} and {high:g}, got {value}")
        for name, choices in (("optimizer", OPTIMIZERS), ("lr_scheduler", LR_SCHEDULERS), ("method", METHODS)):
            if getattr(self, name) not in choices:
                raise ValueError(f"{name} must be one of {', '.join(choices)}, got {getattr(self, name)!r}")
        if self.lr <= 0:
            raise ValueError("lr must be above 0")
        return self

    def as_dict(self) -> dict[str, tp.Any]:
        return asdict(self)

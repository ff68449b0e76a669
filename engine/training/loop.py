"""The training loop: cached tokens in, trained weights out, the LM only (the codec and the text conditioner stay
frozen).

`full` trains every tensor of the engine's transformer (engine.lm.transformer, built in float32: its tensors are
the LM's own parameters' storage, so an update is an update of the LM; the K output heads, concatenated there, are
written back at the end). On a GPU the forward runs under bf16 autocast (fp16 where bf16 is not supported, with a
gradient scaler) with gradient checkpointing per layer, as audiocraft's solver runs it. Optimizers and learning-rate
schedules are audiocraft's own (D-Adaptation Adam, AdamW; cosine, polynomial decay, inverse sqrt, linear warmup),
with audiocraft's betas, weight decay and gradient clipping.

Every `log_every` updates the loss, tokens/s and the ETA are logged. `cancelled()` is asked between updates, so a
cancel stops within one update (Cog's own cancel also interrupts the thread).
"""

import logging
import math
import time
import typing as tp
from dataclasses import dataclass

import torch

from engine.lm.transformer import Transformer
from engine.training.config import EXPONENTIAL_GAMMA, MAX_GRAD_NORM, TrainingConfig
from engine.training.forward import TrainingForward

logger = logging.getLogger(__name__)


class TrainingCancelled(Exception):
    """The run was cancelled between two updates; nothing was written."""


@dataclass
class TokenSet:
    """The dataset's segments as codec tokens, computed once: codes[i] [K, T_i] and captions[i]."""

    codes: list[torch.Tensor]
    captions: list[str]

    @property
    def frames(self) -> int:
        return sum(c.shape[-1] for c in self.codes)


@dataclass
class TrainingStats:
    updates: int
    first_loss: float
    last_loss: float
    tokens_per_second: float
    seconds: float
    peak_memory_bytes: tp.Optional[int]


def trainable_tensors(transformer: Transformer) -> list[torch.Tensor]:
    """Every tensor of the engine's transformer (full fine-tuning), made leaves that require grad."""
    tensors = list(transformer.embeddings)
    for layer in transformer.layers:
        for norm in (layer.norm1, layer.norm_cross, layer.norm2):
            if norm is not None:
                tensors += [norm[0], norm[1]]
        for linear in (layer.qkv, layer.out, layer.cross_q, layer.cross_out, layer.ff1, layer.ff2):
            if linear is not None:
                tensors.append(linear.weight)
        if layer.cross_kv is not None:
            tensors.append(layer.cross_kv)
    if transformer.out_norm is not None:
        tensors += [transformer.out_norm[0], transformer.out_norm[1]]
    tensors.append(transformer.heads.weight)
    for tensor in tensors:
        tensor.requires_grad_(True)
    return tensors


@torch.no_grad()
def write_back(transformer: Transformer, lm) -> None:
    """Copies what the transformer does not share with the LM's parameters (the concatenated heads) into the LM."""
    card = lm.card
    for k, linear in enumerate(lm.linears):
        linear.weight.copy_(transformer.heads.weight[k * card:(k + 1) * card])


def _optimizer(tensors: list[torch.Tensor], config: TrainingConfig) -> torch.optim.Optimizer:
    from audiocraft.optim import DAdaptAdam

    # audiocraft's musicgen defaults (config/solver/musicgen/default.yaml: optim.adam)
    kwargs = {"betas": (0.9, 0.95), "weight_decay": 0.1, "eps": 1e-8}
    if config.optimizer == "dadam":
        return DAdaptAdam(tensors, lr=config.lr, **kwargs)
    return torch.optim.AdamW(tensors, lr=config.lr, **kwargs)


def _scheduler(optimizer: torch.optim.Optimizer, config: TrainingConfig):
    from audiocraft import optim

    total, warmup = config.total_updates, min(config.warmup, max(0, config.total_updates - 1))
    if config.lr_scheduler == "cosine":
        return optim.CosineLRScheduler(optimizer, warmup_steps=warmup, total_steps=total)
    if config.lr_scheduler == "polynomial_decay":
        return optim.PolynomialDecayLRScheduler(optimizer, warmup_steps=warmup, total_steps=total)
    if config.lr_scheduler == "inverse_sqrt":
        return optim.InverseSquareRootLRScheduler(optimizer, warmup_steps=warmup)
    if config.lr_scheduler == "linear_warmup":
        return optim.LinearWarmupLRScheduler(optimizer, warmup_steps=warmup)
    return torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=EXPONENTIAL_GAMMA)


def autocast_dtype(device: torch.device) -> tp.Optional[torch.dtype]:
    """bf16 on a GPU that has it, else fp16; none on a CPU (float32 there: bf16 autocast is slower without AMX)."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def batches(tokens: TokenSet, batch_size: int, generator: torch.Generator,
            device: torch.device) -> tp.Iterator[tuple[torch.Tensor, torch.Tensor, list[str]]]:
    """Endless batches (codes [B, K, T] zero-padded, real frames [B], captions), drawn as shuffled passes over the
    segments (audiocraft's `permutation_on_files`), so every segment is seen once per pass."""
    order: list[int] = []
    while True:
        picked = []
        while len(picked) < batch_size:
            if not order:
                order = torch.randperm(len(tokens.codes), generator=generator).tolist()
            picked.append(order.pop())
        frames = torch.tensor([tokens.codes[i].shape[-1] for i in picked])
        codes = torch.zeros(len(picked), tokens.codes[0].shape[0], int(frames.max()), dtype=torch.long)
        for row, i in enumerate(picked):
            codes[row, :, : frames[row]] = tokens.codes[i]
        yield codes.to(device), frames.to(device), [tokens.captions[i] for i in picked]


def run_updates(forward: TrainingForward, tensors: list[torch.Tensor], tokens: TokenSet, config: TrainingConfig,
                cancelled: tp.Callable[[], bool] = lambda: False) -> TrainingStats:
    """`config.total_updates` optimizer steps on `tensors` through `forward`; logs progress; stops on cancel."""
    device = forward.device
    generator = torch.Generator().manual_seed(config.seed)
    dropout = torch.Generator().manual_seed(config.seed + 1)
    optimizer = _optimizer(tensors, config)
    scheduler = _scheduler(optimizer, config)
    scaler = torch.amp.GradScaler("cuda") if forward.autocast_dtype == torch.float16 else None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    stream = batches(tokens, config.batch_size, generator, device)
    started = window_start = time.monotonic()
    window_tokens = total_tokens = 0
    first_loss = last_loss = math.nan
    for update in range(1, config.total_updates + 1):
        if cancelled():
            raise TrainingCancelled(f"cancelled after {update - 1} of {config.total_updates} updates")
        codes, frames, captions = next(stream)
        if torch.rand((), generator=dropout).item() < config.cfg_p:
            captions = [None] * len(captions)
        loss = forward.loss(codes, frames, captions)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"the loss is {loss.item()} at update {update}: lower lr (now {config.lr}) "
                                     "or use optimizer=dadam")
        optimizer.zero_grad(set_to_none=True)
        (scaler.scale(loss) if scaler else loss).backward()
        if scaler:
            scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(tensors, MAX_GRAD_NORM)
        if scaler:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        scheduler.step()
        last_loss = loss.item()
        first_loss = last_loss if update == 1 else first_loss
        step_tokens = int(frames.sum()) * codes.shape[1]
        window_tokens += step_tokens
        total_tokens += step_tokens
        if update % config.log_every == 0 or update == config.total_updates:
            now = time.monotonic()
            rate = window_tokens / max(now - window_start, 1e-9)
            eta = (now - started) / update * (config.total_updates - update)
            logger.info("update %d/%d (epoch %d) loss %.4f, %.0f tokens/s, ETA %.0f s", update, config.total_updates,
                        (update - 1) // config.updates_per_epoch + 1, last_loss, rate, eta)
            window_start, window_tokens = now, 0
    seconds = time.monotonic() - started
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    return TrainingStats(config.total_updates, first_loss, last_loss, total_tokens / max(seconds, 1e-9), seconds,
                         peak)


@torch.no_grad()
def mean_cross_entropy(forward: TrainingForward, tokens: TokenSet) -> float:
    """The loss of every segment under its own caption, averaged (what training lowers; no dropout)."""
    losses = []
    for codes, caption in zip(tokens.codes, tokens.captions, strict=True):
        codes = codes[None].to(forward.device)
        frames = torch.tensor([codes.shape[-1]], device=forward.device)
        losses.append(forward.loss(codes, frames, [caption]).item())
    return sum(losses) / len(losses)

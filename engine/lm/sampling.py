"""Guidance and sampling for every stream of a decode step at once, as pure tensor code on the device.

A decode step that reads a value back to the host waits for the GPU and cannot be one graph replay. So the per-step
work after the forward takes only device tensors built when a run of streams (or their settings) changes:
- classifier-free guidance of each stream as one small matmul over the run's rows: guided = uncond + guidance *
  sum_i w_i (cond_i - uncond), which is audiocraft's `uncond + (cond - uncond) * cfg_coef` bit for bit with one
  style (the weight 1.0 and the unconditional row's 0.0 leave the difference exact);
- audiocraft's sampling rules (greedy at temperature 0, else top-p, else top-k, else plain) as one mask over the
  probabilities sorted once, and an inverse-CDF draw;
- randomness from a counter-based hash of (stream seed, draw number, codebook) instead of a torch.Generator: a
  stream's draws depend on nothing but its seed and how many steps it has sampled, whatever shares the step, and
  the counter advances on the device, so replaying a step needs no host input.
"""

import typing as tp
from dataclasses import dataclass

import torch

GREEDY_BELOW = 1e-4  # temperatures below this decode greedily (0 is audiocraft's greedy decoding)
_MASK32 = 0xFFFFFFFF
_UNIFORM_BITS = 24  # float32 holds 24 bits exactly: uniforms on a grid of 2^-24 in [0, 1)


def _mul32(x: torch.Tensor, constant: int) -> torch.Tensor:
    """(x * constant) mod 2^32 for x < 2^32 in int64, in 16-bit halves so no product overflows."""
    low, high = x & 0xFFFF, x >> 16
    return (low * constant + (((high * constant) & 0xFFFF) << 16)) & _MASK32


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """MurmurHash3's 32-bit finaliser: every input bit flips about half of the output bits."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x85EBCA6B)
    x = x ^ (x >> 13)
    x = _mul32(x, 0xC2B2AE35)
    return x ^ (x >> 16)


def uniforms(seeds: torch.Tensor, draws: torch.Tensor, count: int) -> torch.Tensor:
    """[S] seeds and [S] draw numbers (int64) -> [S, count] float32 uniforms in [0, 1), one per codebook."""
    lanes = torch.arange(count, device=seeds.device, dtype=torch.long).view(1, -1)
    counter = (draws.view(-1, 1) * count + lanes) & _MASK32
    keyed = _mix32(_mix32(seeds.view(-1, 1) & _MASK32) ^ _mix32(counter ^ 0x9E3779B9))
    return (keyed >> (32 - _UNIFORM_BITS)).to(torch.float32) / float(1 << _UNIFORM_BITS)


def sample(logits: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor,
           draws: torch.Tensor) -> torch.Tensor:
    """logits [S, K, card] -> tokens [S, K] by audiocraft's rules, per stream: greedy where temperature <
    GREEDY_BELOW, else top-p where top_p > 0, else top-k where top_k > 0, else the whole distribution.
    `temperature`, `top_p` (float32), `top_k` (int64) are [S]; `draws` [S, K] uniforms in [0, 1)."""
    n_streams, n_codebooks, card = logits.shape
    scaled = logits.float() / temperature.clamp(min=GREEDY_BELOW).view(-1, 1, 1)
    probs = torch.softmax(scaled, dim=-1)
    ordered, order = probs.sort(dim=-1, descending=True, stable=True)
    rank = torch.arange(card, device=logits.device).view(1, 1, -1)
    top_p_cut = (ordered.cumsum(dim=-1) - ordered) > top_p.view(-1, 1, 1)
    top_k_cut = rank >= top_k.view(-1, 1, 1)
    cut = torch.where(top_p.view(-1, 1, 1) > 0, top_p_cut, (top_k.view(-1, 1, 1) > 0) & top_k_cut)
    kept = ordered.masked_fill(cut, 0.0)
    cumulative = kept.cumsum(dim=-1)
    target = draws.unsqueeze(-1) * cumulative[..., -1:]
    choice = torch.searchsorted(cumulative, target, right=True).clamp(max=card - 1)
    sampled = order.gather(-1, choice).squeeze(-1)
    greedy = logits.argmax(dim=-1)
    return torch.where((temperature < GREEDY_BELOW).view(-1, 1), greedy, sampled)


def guide(logits: torch.Tensor, mix: torch.Tensor, uncond_rows: torch.Tensor, row_uncond: torch.Tensor,
          guidance: torch.Tensor) -> torch.Tensor:
    """Weighted classifier-free guidance of S streams over R rows: logits [R, K, card] -> [S, K, card].

    `mix` [S, R] holds each stream's style weights on its conditional rows (0 elsewhere), `uncond_rows` [S] each
    stream's unconditional row, `row_uncond` [R] the unconditional row of the stream each row belongs to,
    `guidance` [S] the guidance weights (float32)."""
    n_rows, n_codebooks, card = logits.shape
    differences = (logits - logits[row_uncond]).view(n_rows, n_codebooks * card)
    weighted = (mix @ differences).view(-1, n_codebooks, card)
    return logits[uncond_rows] + guidance.view(-1, 1, 1) * weighted


@dataclass(frozen=True)
class RowSettings:
    """What one stream of a step contributes: its rows (relative to the run), weights and sampling settings."""

    first_row: int
    style_weights: tuple[float, ...]  # one per conditional row; the unconditional row follows them
    guidance: float
    temperature: float
    top_k: int
    top_p: float
    seed: int


class StepInputs:
    """The device tensors `guide` and `sample` need for one run of streams, built once per change of the run's
    layout or settings, plus each stream's draw counter, which advances on the device with every step."""

    def __init__(self, streams: tp.Sequence[RowSettings], draws: tp.Sequence[int], device: torch.device) -> None:
        n_rows = max(s.first_row + len(s.style_weights) + 1 for s in streams)
        mix = [[0.0] * n_rows for _ in streams]
        row_uncond = [0] * n_rows
        uncond_rows = []
        for index, stream in enumerate(streams):
            uncond = stream.first_row + len(stream.style_weights)
            for offset, weight in enumerate(stream.style_weights):
                mix[index][stream.first_row + offset] = weight
            row_uncond[stream.first_row: uncond + 1] = [uncond] * (uncond + 1 - stream.first_row)
            uncond_rows.append(uncond)

        def tensor(values, dtype) -> torch.Tensor:
            return torch.tensor(values, dtype=dtype, device=device)

        self.mix = tensor(mix, torch.float32)
        self.row_uncond = tensor(row_uncond, torch.long)
        self.uncond_rows = tensor(uncond_rows, torch.long)
        self.guidance = tensor([s.guidance for s in streams], torch.float32)
        self.temperature = tensor([s.temperature for s in streams], torch.float32)
        self.top_k = tensor([s.top_k for s in streams], torch.long)
        self.top_p = tensor([s.top_p for s in streams], torch.float32)
        self.seeds = tensor([s.seed for s in streams], torch.long)
        self.draws = tensor(list(draws), torch.long)


def guided_sample(logits: torch.Tensor, inputs: StepInputs) -> torch.Tensor:
    """One step's tokens [S, K] for a run's logits [R, K, card]; advances the run's draw counters in place."""
    guided = guide(logits.float(), inputs.mix, inputs.uncond_rows, inputs.row_uncond, inputs.guidance)
    draws = uniforms(inputs.seeds, inputs.draws, logits.shape[1])
    inputs.draws.add_(1)
    return sample(guided, inputs.temperature, inputs.top_k, inputs.top_p, draws)

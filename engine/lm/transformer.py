"""MusicGen's transformer on audiocraft's weights, its math written once: the decoder's eager forward
(engine.lm.decoder) and the capturable step (engine.lm.static_step) differ only in how they keep and read the caches,
which they pass in as attention callbacks.

LoRA adapters (engine.lm.lora) are applied here, in `layer`, to every projection they target: `lora` is None (the
base model), one adapter on all rows (training), or a bank of adapters each row picks from by an index tensor.

The weights are copied once into the compute dtype (engine.lm.precision: float32, bfloat16, float16 or int8 with
bf16 activations); the cross-attention key/value projection stays a plain tensor, used once per condition change.
"""

import typing as tp
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from engine.lm.precision import Linear, activation_dtype


class LoRA(tp.Protocol):
    """What `Transformer.layer` asks of an adapter source (engine.lm.lora.SingleAdapter, AdapterBank)."""

    def delta(self, index: int, target: str, h: torch.Tensor,
              adapters: tp.Optional[torch.Tensor]) -> tp.Optional[torch.Tensor]: ...


@dataclass(frozen=True)
class _Layer:
    norm1: tuple[torch.Tensor, torch.Tensor, float]
    qkv: Linear  # [3D, D]
    out: Linear  # [D, D]
    norm_cross: tp.Optional[tuple[torch.Tensor, torch.Tensor, float]]
    cross_q: tp.Optional[Linear]
    cross_kv: tp.Optional[torch.Tensor]  # [2D, D], used once per condition change
    cross_out: tp.Optional[Linear]
    norm2: tuple[torch.Tensor, torch.Tensor, float]
    ff1: Linear
    ff2: Linear
    activation: tp.Callable[[torch.Tensor], torch.Tensor]


def _norm(module, dtype) -> tuple[torch.Tensor, torch.Tensor, float]:
    return module.weight.detach().to(dtype), module.bias.detach().to(dtype), module.eps


class Transformer:
    def __init__(self, lm, weight_format: str) -> None:
        self.dtype = dtype = activation_dtype(weight_format)
        self.dim = lm.dim
        self.num_heads = lm.transformer.layers[0].self_attn.num_heads
        self.head_dim = self.dim // self.num_heads
        self.max_period = lm.transformer.max_period
        self.positional_scale = lm.transformer.positional_scale

        def w(t: torch.Tensor) -> torch.Tensor:
            return t.detach().to(dtype)

        def lin(t: torch.Tensor) -> Linear:
            return Linear(t, weight_format)

        self.embeddings = [w(emb.weight) for emb in lm.emb]
        self.layers: list[_Layer] = []
        for layer in lm.transformer.layers:
            cross = layer.cross_attention
            self.layers.append(_Layer(
                norm1=_norm(layer.norm1, dtype), qkv=lin(layer.self_attn.in_proj_weight),
                out=lin(layer.self_attn.out_proj.weight),
                norm_cross=_norm(layer.norm_cross, dtype) if cross is not None else None,
                cross_q=lin(cross.in_proj_weight[: self.dim]) if cross is not None else None,
                cross_kv=w(cross.in_proj_weight[self.dim:]) if cross is not None else None,
                cross_out=lin(cross.out_proj.weight) if cross is not None else None,
                norm2=_norm(layer.norm2, dtype), ff1=lin(layer.linear1.weight), ff2=lin(layer.linear2.weight),
                activation=layer.activation))
        self.out_norm = _norm(lm.out_norm, dtype) if lm.out_norm is not None else None
        self.heads = lin(torch.cat([linear.weight for linear in lm.linears]))  # all K output heads: [K*card, D]
        self.lora: tp.Optional[LoRA] = None

    @property
    def weight_bytes(self) -> int:
        """Bytes of weights one decode step reads (embeddings are gathered, not read whole)."""
        linears = [self.heads]
        for layer in self.layers:
            linears += [layer.qkv, layer.out, layer.ff1, layer.ff2]
            linears += [t for t in (layer.cross_q, layer.cross_out) if t is not None]
        return sum(linear.nbytes for linear in linears)

    def _positional(self, positions: torch.Tensor) -> torch.Tensor:
        """audiocraft's sinusoidal embedding (computed in float32 as its LM does, then cast)."""
        half = self.dim // 2
        adim = torch.arange(half, device=positions.device, dtype=torch.float32).view(1, 1, -1)
        phase = positions.float().unsqueeze(-1) / (self.max_period ** (adim / (half - 1)))
        return torch.cat([torch.cos(phase), torch.sin(phase)], dim=-1)

    def embed(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Tokens [R, K, S] at cache positions [R, S] -> the first layer's input [R, S, D]: the sum of the K
        codebook embeddings plus the sinusoidal position."""
        x = sum(F.embedding(tokens[:, k], self.embeddings[k]) for k in range(len(self.embeddings)))
        return x + self.positions(positions)

    def positions(self, positions: torch.Tensor) -> torch.Tensor:
        """The scaled sinusoidal embedding of cache positions [R, S] -> [R, S, D], in the activation dtype."""
        return (self.positional_scale * self._positional(positions)).to(self.dtype)

    def layer(self, index: int, x: torch.Tensor, self_attend: tp.Callable[..., torch.Tensor],
              cross_attend: tp.Callable[[torch.Tensor], torch.Tensor],
              adapters: tp.Optional[torch.Tensor] = None) -> torch.Tensor:
        """Transformer layer `index` on x [R, S, D] (pre-norm self-attention, cross-attention, feed-forward).
        `self_attend(q, k, v)` (each [R, H, S, Dh]) stores k
        and v and returns the attention over the row's cache; `cross_attend(q)` the attention over its
        condition. `adapters` [R] (long) is each row's adapter slot for a bank in `lora` (None: no row has one)."""
        layer = self.layers[index]
        n_rows, steps, _ = x.shape

        def project(target: str, h: torch.Tensor) -> torch.Tensor:
            y = getattr(layer, target)(h)
            delta = None if self.lora is None else self.lora.delta(index, target, h, adapters)
            return y if delta is None else y + delta

        h = F.layer_norm(x, (self.dim,), *layer.norm1[:2], eps=layer.norm1[2])
        qkv = project("qkv", h).view(n_rows, steps, 3, self.num_heads, self.head_dim)
        q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))  # [R, H, S, Dh]
        x = x + project("out", self_attend(q, k, v).transpose(1, 2).reshape(n_rows, steps, self.dim))
        if layer.cross_q is not None:
            h = F.layer_norm(x, (self.dim,), *layer.norm_cross[:2], eps=layer.norm_cross[2])
            q = project("cross_q", h).view(n_rows, steps, self.num_heads, self.head_dim).transpose(1, 2)
            x = x + project("cross_out", cross_attend(q).transpose(1, 2).reshape(n_rows, steps, self.dim))
        h = F.layer_norm(x, (self.dim,), *layer.norm2[:2], eps=layer.norm2[2])
        return x + project("ff2", layer.activation(project("ff1", h)))

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """The last layer's output [R, S, D] -> logits [R, S, K * card]: the output norm, then all K heads."""
        if self.out_norm is not None:
            x = F.layer_norm(x, (self.dim,), *self.out_norm[:2], eps=self.out_norm[2])
        return self.heads(x)

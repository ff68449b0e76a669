"""A step-level decoder for MusicGen's LM on audiocraft's loaded weights.

audiocraft's `LMModel.generate` recomputes the cross-attention keys/values of the text condition at every step,
grows its KV cache by concatenation, and serves one request at a time. This decoder reads the same weights and:
- keeps a preallocated self-attention KV cache of `max_steps` positions for `max_rows` rows;
- computes the cross-attention keys/values of a row's condition once, when the condition changes;
- runs one forward for any contiguous range of rows, each row at its own position, so several sessions (and the
  conditional/unconditional rows of classifier-free guidance) share every weight read;
- gives each row its own LoRA adapter, or none (`set_adapter`, engine.lm.lora), all in the same forward;
- keeps a per-row prefix of condition embeddings before the audio tokens (musicgen-melody's prepended chroma), whose
  keys/values are computed once by `set_prefix` and survive `reset`, so a window roll-over re-prefills only tokens.
Rows are slots; callers own the mapping from sessions to slots (see engine.runtime.scheduler). K (the number of
codebooks) is whatever the LM has: 4 for mono checkpoints, 8 interleaved left/right codebooks for stereo ones.
"""

import functools
import typing as tp

import torch
import torch.nn.functional as F

from engine.lm.lora import AdapterBank
from engine.lm.precision import WEIGHT_FORMATS
from engine.lm.supported import check_supported
from engine.lm.transformer import Transformer


class StepDecoder:
    """Incremental forward of MusicGen's transformer over slots of a preallocated cache."""

    def __init__(self, lm, max_rows: int, max_steps: int, weight_format: str = "float32",
                 max_condition_steps: int = 512, initial_condition_steps: int = 64) -> None:
        check_supported(lm)
        if weight_format not in WEIGHT_FORMATS:
            raise ValueError(f"weight format must be one of {', '.join(WEIGHT_FORMATS)}")
        self.transformer = transformer = Transformer(lm, weight_format)
        self.dtype = dtype = transformer.dtype
        self.weight_format = weight_format
        self.device = next(lm.parameters()).device
        self.num_codebooks = lm.num_codebooks
        self.card = lm.card
        self.dim = lm.dim
        self.num_heads = transformer.num_heads
        self.head_dim = transformer.head_dim
        self.max_rows = max_rows
        self.max_steps = max_steps
        self.max_condition_steps = max_condition_steps
        self.special_token_id = lm.special_token_id
        shape = (len(transformer.layers), max_rows, self.num_heads, max_steps, self.head_dim)
        self.keys = torch.zeros(shape, dtype=dtype, device=self.device)
        self.values = torch.zeros(shape, dtype=dtype, device=self.device)
        self.lengths = torch.zeros(max_rows, dtype=torch.long, device=self.device)
        # The cross-attention cache starts small and doubles (up to max_condition_steps) when a longer condition
        # arrives: most prompts are short, and a 512-step cache for every row would cost gigabytes on large models.
        self.cross_keys = self._cross_cache(min(initial_condition_steps, max_condition_steps))
        self.cache_version = 0  # counts reallocations of the caches
        self.cross_values = torch.zeros_like(self.cross_keys)
        self.cross_lengths = torch.ones(max_rows, dtype=torch.long, device=self.device)
        self.prefix_lengths = torch.zeros(max_rows, dtype=torch.long, device=self.device)
        # Host copies of `lengths`, `prefix_lengths` and `cross_lengths`, kept in step by every method that changes
        # them: no forward reads a length back from the device to size its attention or check its bounds.
        self.host_lengths = [0] * max_rows
        self.host_prefix_lengths = [0] * max_rows
        self.host_cross_lengths = [1] * max_rows
        # Models that prepend a condition (melody) expect a prefix on every row, the null one when there is none:
        # set it on a stream's rows before their first forward (rows keep their previous occupant's prefix).
        self.uses_prefix = len(lm.fuser.fuse2cond["prepend"]) > 0
        # Each row's LoRA adapter slot (engine.lm.lora.AdapterBank; 0: the base model), an input of every forward
        # like the lengths, with its host copy (a forward where every row has 0 skips the adapters entirely).
        self.adapter_rows = torch.zeros(max_rows, dtype=torch.long, device=self.device)
        self.host_adapter_rows = [0] * max_rows

    def attach_adapters(self, bank: tp.Optional["AdapterBank"]) -> None:
        """Serves `bank`'s adapters on the rows that pick one (`set_adapter`); a new input of the step, so a
        captured graph of it is captured again (cache_version)."""
        self.transformer.lora = bank
        self.cache_version += 1

    def set_adapter(self, rows: slice, slot: int) -> None:
        """Rows `rows` run with the adapter in `slot` of the attached bank from their next forward (0: none)."""
        if slot and not isinstance(self.transformer.lora, AdapterBank):
            raise ValueError("no adapter bank attached to this decoder")
        self.adapter_rows[rows] = slot
        self.host_adapter_rows[rows] = [slot] * (rows.stop - rows.start)

    def _cross_cache(self, steps: int) -> torch.Tensor:
        shape = (len(self.transformer.layers), self.max_rows, self.num_heads, steps, self.head_dim)
        return torch.zeros(shape, dtype=self.dtype, device=self.device)

    def _ensure_condition_capacity(self, steps: int) -> None:
        capacity = self.cross_keys.shape[3]
        if steps <= capacity:
            return
        if steps > self.max_condition_steps:
            raise ValueError(f"condition of {steps} tokens exceeds the limit of {self.max_condition_steps}")
        grown = min(self.max_condition_steps, max(steps, 2 * capacity))
        for name in ("cross_keys", "cross_values"):
            bigger = self._cross_cache(grown)
            bigger[:, :, :, :capacity] = getattr(self, name)
            setattr(self, name, bigger)
        self.cache_version += 1  # what a captured graph read is gone (engine.lm.static_step)

    def reserve_condition_capacity(self) -> None:
        """The cross cache at its largest now, so it is never reallocated later (CUDA graphs read it in place)."""
        self._ensure_condition_capacity(self.max_condition_steps)

    @property
    def weight_bytes(self) -> int:
        return self.transformer.weight_bytes

    @property
    def cache_bytes(self) -> int:
        """Bytes of the self- and cross-attention caches as allocated now."""
        tensors = (self.keys, self.values, self.cross_keys, self.cross_values)
        return sum(t.numel() * t.element_size() for t in tensors)

    # -- conditions -------------------------------------------------------------------------------------------
    def set_condition(self, row: int, embeds: torch.Tensor, mask: torch.Tensor) -> None:
        """Stores a row's cross-attention keys/values, computed once from its condition.

        `embeds` [T, D] and `mask` [T] are what audiocraft's conditioner gives for the row. Masked positions carry
        zero embeddings there (they contribute zero values); here they are dropped. A fully masked condition (the
        unconditional row of classifier-free guidance) keeps one zero position, which yields exactly zero output
        as audiocraft's all-zero keys and values do.
        """
        kept = embeds[mask.bool()]
        if kept.shape[0] == 0:
            kept = torch.zeros(1, self.dim, dtype=embeds.dtype, device=embeds.device)
        self._ensure_condition_capacity(kept.shape[0])
        kept = kept.to(self.dtype)
        steps = kept.shape[0]
        for index, layer in enumerate(self.transformer.layers):
            if layer.cross_kv is None:
                continue
            kv = F.linear(kept, layer.cross_kv).view(steps, 2, self.num_heads, self.head_dim)
            self.cross_keys[index, row, :, :steps] = kv[:, 0].transpose(0, 1)
            self.cross_values[index, row, :, :steps] = kv[:, 1].transpose(0, 1)
        self.cross_lengths[row] = steps
        self.host_cross_lengths[row] = steps

    def set_prefix(self, rows: slice, prefix: torch.Tensor) -> None:
        """Places prefix embeddings [R, P, D] (or one [P, D] for all rows) before the audio tokens of `rows`.

        This is audiocraft's ConditionFuser 'prepend' (musicgen-melody's chroma, see engine.codec.melody): the prefix
        takes positions 0 .. P-1, the audio step s position P + s, the prefix attends to itself causally and to the
        row's cross-attention condition, and its logits are never computed. So set the row's condition first. Computing
        it is one parallel forward of P steps; the row's audio context is cleared (it depended on the old prefix), so
        re-prefill the tokens to keep. Afterwards every step attends to P more keys per layer: per row and layer, 2*P*D
        more cached values read and 4*P*D more FLOPs (musicgen-melody: P = 235 chroma frames, D = 1536, 48 layers: 35 M
        values, 69 MB in fp16 per row and step, ~2% of its 3 GB of weights read by every step).
        """
        n_rows = rows.stop - rows.start
        prefix = prefix.to(self.device, self.dtype)
        if prefix.dim() == 2:
            prefix = prefix.unsqueeze(0).expand(n_rows, -1, -1)
        steps = prefix.shape[1]
        if steps >= self.max_steps:
            raise ValueError(f"prefix of {steps} steps leaves no room in a cache of {self.max_steps}")
        self.lengths[rows] = 0
        self.host_lengths[rows] = [0] * n_rows
        positions = torch.arange(steps, device=self.device).view(1, -1).expand(n_rows, -1)
        self._transform([rows], prefix + self.transformer.positions(positions))
        self.prefix_lengths[rows] = steps
        self.host_prefix_lengths[rows] = [steps] * n_rows

    def capacity(self, rows: slice) -> int:
        """How many audio steps `rows` can hold after their prefixes: the window a stream rolls over at."""
        return self.max_steps - max(self.host_prefix_lengths[rows])

    def check_step(self, rows: tp.Union[slice, tp.Sequence[int]]) -> None:
        """Raises what `forward` would for one more step on `rows`, from the host copies (no device read)."""
        ids = row_ids(rows)
        if self.uses_prefix and min(self.host_prefix_lengths[r] for r in ids) == 0:
            raise ValueError("this model prepends a melody: set_prefix on every row before decoding")
        if max(self.host_lengths[r] for r in ids) + 1 > self.max_steps:
            raise ValueError("KV cache full: re-prefill a shorter context before continuing")

    def advance_host(self, rows: tp.Union[slice, tp.Sequence[int]], steps: int) -> None:
        """Records on the host that `rows` grew by `steps` (the device lengths grew in the same call)."""
        for row in row_ids(rows):
            self.host_lengths[row] += steps

    def reset(self, rows: slice) -> None:
        """Forgets the audio context of `rows`; their conditions and prefixes stay, so the next forward (a
        re-prefill) continues right after the prefix, at the positions audiocraft would give it."""
        self.lengths[rows] = self.prefix_lengths[rows]
        self.host_lengths[rows] = self.host_prefix_lengths[rows]

    def relayout(self, sources: list[int]) -> None:
        """Row i takes the caches and condition of old row sources[i]: keeps live rows contiguous when streams
        come, go or change their number of styles (a new style row starts from a copy of another row's context).
        Only rows that move are copied, and only their filled part.

        All or nothing: every moving row is first gathered into new memory (where a GPU runs out of it), and
        only when all of it exists are the rows written, so a failed copy leaves every row as it was."""
        if len(sources) > self.max_rows:
            raise ValueError(f"{len(sources)} rows needed, the decoder has {self.max_rows}")
        moves = [(target, source) for target, source in enumerate(sources) if target != source]
        if not moves:
            return
        targets = torch.tensor([t for t, _ in moves], dtype=torch.long, device=self.device)
        index = torch.tensor([s for _, s in moves], dtype=torch.long, device=self.device)
        steps = max(self.host_lengths[s] for _, s in moves)
        cross_steps = max(self.host_cross_lengths[s] for _, s in moves)
        caches = [(self.keys, steps), (self.values, steps), (self.cross_keys, cross_steps),
                  (self.cross_values, cross_steps)]
        gathered = [cache[:, index, :, :length] for cache, length in caches]
        counters = [self.lengths, self.cross_lengths, self.prefix_lengths, self.adapter_rows]
        gathered_counters = [counter[index] for counter in counters]
        for (cache, length), rows in zip(caches, gathered, strict=True):
            cache[:, targets, :, :length] = rows
        for counter, rows in zip(counters, gathered_counters, strict=True):
            counter[targets] = rows
        for mirror in (self.host_lengths, self.host_prefix_lengths, self.host_cross_lengths, self.host_adapter_rows):
            moved = [mirror[source] for _, source in moves]
            for (target, _), value in zip(moves, moved, strict=True):
                mirror[target] = value

    # -- forward ----------------------------------------------------------------------------------------------
    def forward(self, rows: slice, tokens: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        """Appends `tokens` [R, K, S] to rows `rows` (contiguous slots) and returns logits [R, K, S, card], or
        only the last position's ([R, K, 1, card]) with `last_only`: a prefill needs no others, and the output
        heads are a large part of a step.

        Each row continues from its own cache length; S > 1 is a parallel prefill (causal within the call).
        """
        return self._forward([rows], tokens, last_only, pad_to=0)

    def step_streams(self, groups: list[slice], tokens: torch.Tensor, pad_to: int) -> torch.Tensor:
        """One step of several streams on any rows: tokens [R, K] for the rows of `groups` in order -> logits
        [R, K, card]. The weight matmuls run over all of them at once, on `pad_to` rows (zeros past R), and the
        attention of each group over its own rows as if it ran alone: a matmul may round differently with
        another number of rows, so with a fixed `pad_to` no stream's bytes depend on how many share the step."""
        return self._forward(groups, tokens.unsqueeze(-1), last_only=True, pad_to=pad_to)[:, :, 0]

    def _forward(self, groups: list[slice], tokens: torch.Tensor, last_only: bool, pad_to: int) -> torch.Tensor:
        n_rows, n_codebooks, steps = tokens.shape
        assert n_codebooks == self.num_codebooks
        if self.uses_prefix and min(min(self.host_prefix_lengths[rows]) for rows in groups) == 0:
            raise ValueError("this model prepends a melody: set_prefix on every row before decoding "
                             "(engine.codec.melody.melody_condition(lm, None, ...) without a melody)")
        lengths = torch.cat([self.lengths[rows] for rows in groups]) if len(groups) > 1 else self.lengths[groups[0]]
        positions = lengths.view(-1, 1) + torch.arange(steps, device=tokens.device).view(1, -1)
        x = self._transform(groups, self.transformer.embed(tokens, positions), pad_to)
        if last_only:
            x, steps = x[:, -1:], 1
        if pad_to > n_rows:
            x = torch.cat([x, x.new_zeros(pad_to - n_rows, *x.shape[1:])])
        logits = self.transformer.head(x)[:n_rows]
        return logits.view(n_rows, steps, n_codebooks, self.card).transpose(1, 2).float()

    def _attention(self, rows: slice, steps: int, device: torch.device) -> tuple:
        """A group's cache positions for `steps` new tokens and its attention sizes and masks, from the host copies
        of the lengths (nothing is read back from the device)."""
        host_lengths = self.host_lengths[rows]
        if max(host_lengths) + steps > self.max_steps:
            raise ValueError("KV cache full: re-prefill a shorter context before continuing")
        n_rows = rows.stop - rows.start
        positions = self.lengths[rows].view(-1, 1) + torch.arange(steps, device=device).view(1, -1)
        total = max(host_lengths) + steps
        # Masks only where rows differ: query s of row r sees keys 0 .. start_r + s. A single step of rows at one
        # length needs none (and the unmasked attention kernel is the fast one).
        self_mask = None
        if steps > 1 or min(host_lengths) != total - steps:
            key_index = torch.arange(total, device=device).view(1, 1, 1, total)
            self_mask = key_index <= positions.view(n_rows, 1, steps, 1)
        host_cross = self.host_cross_lengths[rows]
        cross_total = max(host_cross)
        cross_mask = None
        if min(host_cross) != cross_total:
            cross_mask = (torch.arange(cross_total, device=device).view(1, 1, 1, -1)
                          < self.cross_lengths[rows].view(-1, 1, 1, 1))
        row_index = torch.arange(rows.start, rows.stop, device=device).view(-1, 1)
        return positions, total, self_mask, cross_total, cross_mask, row_index

    def _transform(self, groups: list[slice], x: torch.Tensor, pad_to: int = 0) -> torch.Tensor:
        """Runs the transformer layers on inputs x [R, S, D] (embeddings + positions) after each row's cache, the
        rows being those of `groups` in order; padded with zero rows up to `pad_to` for the weight matmuls."""
        n_rows, steps, _ = x.shape
        plans = [(rows, *self._attention(rows, steps, x.device)) for rows in groups]
        bounds = []
        for rows, *_ in plans:
            start = bounds[-1][1] if bounds else 0
            bounds.append((start, start + rows.stop - rows.start))
        padding = max(0, pad_to - n_rows)
        if padding:
            x = torch.cat([x, x.new_zeros(padding, steps, self.dim)])
        adapters = None
        if any(any(self.host_adapter_rows[rows]) for rows in groups):
            adapters = torch.cat([self.adapter_rows[rows] for rows in groups]
                                 + [self.adapter_rows.new_zeros(padding)])

        def per_group(attend: tp.Callable[..., torch.Tensor], *inputs: torch.Tensor) -> torch.Tensor:
            outs = [attend(plan, *(t[start:stop] for t in inputs))
                    for plan, (start, stop) in zip(plans, bounds, strict=True)]
            if padding:  # the padding rows attend to nothing
                outs.append(inputs[0].new_zeros(padding, *inputs[0].shape[1:]))
            return torch.cat(outs) if len(outs) > 1 else outs[0]

        for index in range(len(self.transformer.layers)):
            def self_attend(plan, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, index: int = index):
                rows, positions, total, self_mask, _, _, row_index = plan
                self.keys[index][row_index, :, positions] = k.transpose(1, 2)
                self.values[index][row_index, :, positions] = v.transpose(1, 2)
                return F.scaled_dot_product_attention(q, self.keys[index, rows, :, :total],
                                                      self.values[index, rows, :, :total], attn_mask=self_mask)

            def cross_attend(plan, q: torch.Tensor, index: int = index) -> torch.Tensor:
                rows, _, _, _, cross_total, cross_mask, _ = plan
                return F.scaled_dot_product_attention(q, self.cross_keys[index, rows, :, :cross_total],
                                                      self.cross_values[index, rows, :, :cross_total],
                                                      attn_mask=cross_mask)

            x = self.transformer.layer(index, x, functools.partial(per_group, self_attend),
                                       functools.partial(per_group, cross_attend), adapters)
        for rows, positions, *_ in plans:
            self.lengths[rows] = positions[:, -1] + 1
            self.advance_host(rows, steps)
        return x[:n_rows]


def row_ids(rows: tp.Union[slice, tp.Sequence[int]]) -> list[int]:
    """The rows of a range (a stream's block) or of a list (the capturable step's rows of several streams)."""
    return list(range(rows.start, rows.stop)) if isinstance(rows, slice) else list(rows)

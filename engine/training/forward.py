"""The training forward and loss: the engine's own transformer (engine.lm.transformer `Transformer.layer`, the math
the decoder serves with) over whole sequences with full causal attention, and audiocraft's MusicGen loss.

What audiocraft's `LMModel.compute_predictions` and `MusicGenSolver._compute_cross_entropy` do, with the engine's
layer in place of audiocraft's: the codes [B, K, T] become the delay pattern's sequence (the LM's own pattern
provider, `keep_only_valid_steps`), the sequence's logits are mapped back to [B, K, T, card] with the pattern's
validity mask, and the loss is the cross-entropy over the valid steps of each codebook, averaged over the K
codebooks. Padded frames (segments shorter than the batch's longest) enter as the special token and are masked
out of the loss, so a padded segment scores as it does alone.

Conditions are the text conditioner's output (frozen, computed once per caption, engine.lm.conditions), attended as
the decoder attends them: padded positions dropped and a null condition one zero position (engine.lm.decoder
`set_condition`), so what is trained is what serves. Condition dropout is audiocraft's
ClassifierFreeGuidanceDropout: with probability cfg_p the whole batch trains on the null condition.
"""

import typing as tp

import torch
import torch.nn.functional as F
import torch.utils.checkpoint

from engine.lm.conditions import text_condition
from engine.lm.transformer import Transformer


class TrainingForward:
    """Logits and loss of a batch of token sequences through `transformer` (built on `lm`, float32)."""

    def __init__(self, lm, transformer: Transformer, checkpointing: bool = False,
                 autocast_dtype: tp.Optional[torch.dtype] = None) -> None:
        self.lm = lm
        self.transformer = transformer
        self.checkpointing = checkpointing
        self.autocast_dtype = autocast_dtype
        self.device = next(lm.parameters()).device
        self._steps: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._conditions: dict[tp.Optional[str], tuple[torch.Tensor, torch.Tensor]] = {}

    def condition(self, caption: tp.Optional[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(embeds [T, D], keep-mask [T]) of a caption as the decoder keeps it; cached (the conditioner is frozen)."""
        key = caption or None
        if key not in self._conditions:
            with torch.no_grad():
                embeds, mask = text_condition(self.lm, key)
            keep = mask.bool()
            embeds = embeds[keep].float()
            if embeds.shape[0] == 0:  # the null condition: one zero position, as engine.lm.decoder keeps it
                embeds = torch.zeros(1, self.transformer.dim, device=self.device)
            self._conditions[key] = (embeds, torch.ones(embeds.shape[0], dtype=torch.bool, device=self.device))
        return self._conditions[key]

    def batch_conditions(self, captions: list[tp.Optional[str]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Padded condition embeds [B, T, D] and keep-mask [B, T]."""
        pairs = [self.condition(c) for c in captions]
        steps = max(e.shape[0] for e, _ in pairs)
        embeds = torch.zeros(len(pairs), steps, self.transformer.dim, device=self.device)
        mask = torch.zeros(len(pairs), steps, dtype=torch.bool, device=self.device)
        for row, (e, m) in enumerate(pairs):
            embeds[row, : e.shape[0]] = e
            mask[row, : m.shape[0]] = m
        return embeds, mask

    def sequence_steps(self, frames: int) -> tuple[torch.Tensor, torch.Tensor]:
        """For each codebook k and frame t, the sequence step whose logits predict codes[k, t], and whether that
        step is valid: the pattern's own `revert_pattern_logits` applied to the step numbers (not to the logits:
        reverting [B, card, K, S] logits filled and copied gigabytes, most of a CPU update's time)."""
        if frames not in self._steps:
            pattern = self.lm.pattern_provider.get_pattern(frames)
            steps = len(pattern.valid_layout)  # the sequence build_pattern_sequence gives (valid steps only)
            numbers = torch.arange(steps, dtype=torch.float32).view(1, 1, 1, -1).expand(1, 1, self.lm.num_codebooks,
                                                                                            -1)
            index, _, valid = pattern.revert_pattern_logits(numbers, float("nan"), keep_only_valid_steps=True)
            index = index[0, 0].nan_to_num(0).long()  # [K, T]
            self._steps[frames] = (index.to(self.device), valid.to(self.device))
        return self._steps[frames]

    def sequence_logits(self, codes: torch.Tensor, captions: list[tp.Optional[str]]) -> torch.Tensor:
        """Codes [B, K, T] -> logits [B, S, K, card] over the delay pattern's sequence (S steps)."""
        batch, _, frames = codes.shape
        pattern = self.lm.pattern_provider.get_pattern(frames)
        sequence, _, _ = pattern.build_pattern_sequence(codes, self.lm.special_token_id, keep_only_valid_steps=True)
        steps = sequence.shape[-1]
        embeds, mask = self.batch_conditions(captions)
        cond_mask = mask[:, None, None, :]  # [B, 1, 1, T]: padded condition positions are not attended
        positions = torch.arange(steps, device=self.device).view(1, -1).expand(batch, -1)
        with torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.float32,
                            enabled=self.autocast_dtype is not None):
            x = self.transformer.embed(sequence, positions)
            for index in range(len(self.transformer.layers)):
                if self.checkpointing:
                    x = torch.utils.checkpoint.checkpoint(self._layer, index, x, embeds, cond_mask,
                                                          use_reentrant=False)
                else:
                    x = self._layer(index, x, embeds, cond_mask)
            out = self.transformer.head(x)  # [B, S, K * card]
        return out.view(batch, steps, -1, self.lm.card)

    def _layer(self, index: int, x: torch.Tensor, embeds: torch.Tensor, cond_mask: torch.Tensor) -> torch.Tensor:
        """One engine layer with full causal self-attention and cross-attention over the batch's conditions."""
        layer = self.transformer.layers[index]
        heads, head_dim = self.transformer.num_heads, self.transformer.head_dim

        def self_attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)

        def cross_attend(q: torch.Tensor) -> torch.Tensor:
            batch, steps = embeds.shape[:2]
            kv = F.linear(embeds.to(q.dtype), layer.cross_kv.to(q.dtype)).view(batch, steps, 2, heads, head_dim)
            k, v = kv[:, :, 0].transpose(1, 2), kv[:, :, 1].transpose(1, 2)
            return F.scaled_dot_product_attention(q, k, v, attn_mask=cond_mask)

        return self.transformer.layer(index, x, self_attend, cross_attend)

    def loss(self, codes: torch.Tensor, frames: torch.Tensor, captions: list[tp.Optional[str]]) -> torch.Tensor:
        """audiocraft's MusicGen loss of codes [B, K, T] whose first `frames` [B] frames are real: per codebook,
        the cross-entropy over its valid steps (padded frames excluded), averaged over the K codebooks."""
        real = torch.arange(codes.shape[-1], device=codes.device)[None, :] < frames[:, None]  # [B, T]
        # padded frames enter the sequence as the special token, as frames past a shorter sequence's end do, so a
        # padded row's logits are those of the row alone
        inputs = torch.where(real[:, None, :], codes, torch.full_like(codes, self.lm.special_token_id))
        logits = self.sequence_logits(inputs, captions)
        batch, steps, codebooks, card = logits.shape
        index, _ = self.sequence_steps(codes.shape[-1])
        # one gather of the [B, K, T] predictions from the [B, S * K] rows of logits (per-codebook selects of the
        # whole logits cost a zero-filled copy each in the backward pass)
        rows = index * codebooks + torch.arange(codebooks, device=index.device)[:, None]  # [K, T]
        predicted = logits.reshape(batch, steps * codebooks, card).index_select(1, rows.view(-1))
        ce = F.cross_entropy(predicted.reshape(-1, card).float(), codes.reshape(-1), reduction="none")
        # each row counts the steps its own length makes valid (keep_only_valid_steps of a [K, frames] sequence)
        keep = torch.zeros(batch, codebooks, codes.shape[-1], device=codes.device)
        for row, length in enumerate(frames.tolist()):
            keep[row, :, :length] = self.sequence_steps(length)[1].float()
        per_codebook = (ce.view_as(keep) * keep).sum(dim=(0, 2)) / keep.sum(dim=(0, 2))
        return per_codebook.mean()

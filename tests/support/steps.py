"""Decode-step fixtures shared by the CPU tests and their CUDA twins (tests/engine/test_cuda.py): a six-row decoder
with conditions of different lengths and the comparison of a capturable step with the eager forward
(engine.lm.static_step), two prepared streams with the whole step the scheduler runs for them (no host read), and
audiocraft's own LM inputs for a text and random codes (reference_inputs)."""

import torch

from engine.lm.conditions import text_condition
from engine.lm.decoder import StepDecoder
from engine.lm.pattern import DelayedFrames
from engine.lm.sampling import RowSettings, StepInputs, guided_sample
from engine.lm.static_step import CapturableStep, step_function

# three streams of two rows, with conditions of different lengths (cross masks differ between rows)
STEP_TEXTS = ("drums", None, "a much longer prompt than the first, so the cross lengths differ", None, "bass", None)
PREFILLS = (30, 7, 3)


def six_row_decoder(lm, condition_lm, device: str = "cpu") -> StepDecoder:
    """`condition_lm` computes the text conditions (on the CPU: audiocraft's T5 stays there)."""
    decoder = StepDecoder(lm, max_rows=6, max_steps=48)
    for row, text in enumerate(STEP_TEXTS):
        embeds, mask = text_condition(condition_lm, text)
        decoder.set_condition(row, embeds.to(device), mask.to(device))
    return decoder


def compare_with_eager(lm, condition_lm, step: CapturableStep, device: str = "cpu") -> None:
    """Streams at three lengths step together, then each alone (other row ranges, same row count)."""
    eager = six_row_decoder(lm, condition_lm, device)
    sequence = torch.randint(0, lm.card, (6, lm.num_codebooks, 40), generator=torch.Generator().manual_seed(0))
    sequence = sequence.to(device)
    for decoder in (eager, step.decoder):
        for pair, length in enumerate(PREFILLS):
            decoder.forward(slice(2 * pair, 2 * pair + 2), sequence[2 * pair: 2 * pair + 2, :, :length])
    worst = 0.0
    for s in range(5):
        tokens = torch.cat([sequence[2 * p: 2 * p + 2, :, length + s] for p, length in enumerate(PREFILLS)])
        expected = eager.forward(slice(0, 6), tokens.unsqueeze(-1))[:, :, 0]
        worst = max(worst, (step(slice(0, 6), tokens) - expected).abs().max().item())
    for s in range(3):
        for pair in range(3):
            rows = slice(2 * pair, 2 * pair + 2)
            tokens = sequence[rows, :, 30 + s]
            expected = eager.forward(rows, tokens.unsqueeze(-1))[:, :, 0]
            worst = max(worst, (step(rows, tokens) - expected).abs().max().item())
    assert worst < 1e-4
    decoder = step.decoder
    assert decoder.lengths.tolist() == eager.lengths.tolist() == decoder.host_lengths
    for row, length in enumerate(decoder.host_lengths):
        assert (decoder.keys[:, row, :, :length] - eager.keys[:, row, :, :length]).abs().max().item() < 1e-4
        assert (decoder.values[:, row, :, :length] - eager.values[:, row, :, :length]).abs().max().item() < 1e-4


# two streams on five rows: one of two styles (rows 0-2), one of one style (rows 3-4)
STREAM_TEXTS = ("drums", "a longer prompt about bass and keys", None, "dub", None)
STREAMS = (RowSettings(0, (0.25, 0.75), 3.0, 1.0, 50, 0.0, 7), RowSettings(3, (1.0,), 5.0, 0.7, 0, 0.9, 8))


def two_streams(lm, device: str = "cpu") -> tuple[StepDecoder, list[DelayedFrames], StepInputs]:
    decoder = StepDecoder(lm, max_rows=5, max_steps=64, weight_format="float32" if device == "cpu" else "float16")
    for row, text in enumerate(STREAM_TEXTS):
        decoder.set_condition(row, *text_condition(lm, text))
    delays = list(lm.pattern_provider.delays)
    frames = []
    for settings, prompt in zip(STREAMS, (5, 9), strict=True):
        rows = len(settings.style_weights) + 1
        pattern = DelayedFrames(1, delays, lm.special_token_id, capacity=40, device=torch.device(device))
        codes = torch.randint(0, lm.card, (1, lm.num_codebooks, prompt),
                              generator=torch.Generator().manual_seed(9)).to(device)
        steps = pattern.load_prompt(codes)
        decoder.forward(slice(settings.first_row, settings.first_row + rows),
                        pattern.sequence_values(0, steps).expand(rows, -1, -1))
        frames.append(pattern)
    return decoder, frames, StepInputs(STREAMS, [0, 0], torch.device(device))


def whole_step(decoder: StepDecoder, frames: list[DelayedFrames], inputs: StepInputs, views: tuple) -> torch.Tensor:
    """What the scheduler does for a run of streams in one step, in the same calls."""
    rows = [len(s.style_weights) + 1 for s in STREAMS]
    tokens = torch.cat([f.next_input().expand(r, -1) for f, r in zip(frames, rows, strict=True)])
    sampled = guided_sample(step_function(decoder, *views, tokens), inputs)
    for index, pattern in enumerate(frames):
        pattern.accept(sampled[index: index + 1])
    return sampled


def reference_inputs(lm, text: str, frames: int, seed: int = 0) -> tuple[dict, torch.Tensor]:
    """audiocraft's own conditions for `text` (the conditional and the null row) and `frames` of random codes as the
    delay pattern's sequence [2, K, frames]: what audiocraft's LM is called with, to compare the step decoder's
    logits with."""
    from audiocraft.modules.conditioners import ClassifierFreeGuidanceDropout, ConditioningAttributes

    attributes = [ConditioningAttributes(text={"description": text})]
    null = ClassifierFreeGuidanceDropout(p=1.0)(attributes)
    condition_tensors = lm.condition_provider(lm.condition_provider.tokenize(attributes + null))
    generator = torch.Generator().manual_seed(seed)
    pattern = DelayedFrames(1, list(lm.pattern_provider.delays), lm.special_token_id, capacity=frames + 8)
    pattern.codes[:, :, :frames] = torch.randint(0, lm.card, (1, lm.num_codebooks, frames), generator=generator)
    return condition_tensors, pattern.sequence_values(0, frames).expand(2, -1, -1)

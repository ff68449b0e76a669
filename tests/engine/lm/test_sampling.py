"""Device-side guidance and sampling (engine.lm.sampling): audiocraft's rules, a stream's draws its own."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.lm.sampling import RowSettings, StepInputs, guide, guided_sample, sample, uniforms


def _one(logits: torch.Tensor, temperature=1.0, top_k=0, top_p=0.0, draws=None, seed=0, count=1):
    """`count` draws of one stream [K, card] -> tokens [count, K]."""
    n = count
    return sample(logits.expand(n, -1, -1), torch.full((n,), temperature), torch.full((n,), top_k, dtype=torch.long),
                  torch.full((n,), top_p), uniforms(torch.full((n,), seed), torch.arange(n), logits.shape[0])
                  if draws is None else draws)


def test_uniforms_are_uniform_in_the_unit_interval_and_keyed_by_seed_and_draw():
    values = uniforms(torch.zeros(20_000, dtype=torch.long), torch.arange(20_000), 4)
    assert values.min() >= 0 and values.max() < 1
    histogram = torch.histc(values, bins=10, min=0, max=1) / values.numel()
    assert (histogram - 0.1).abs().max() < 0.01
    assert abs(torch.corrcoef(torch.stack([values[:-1, 0], values[1:, 0]]))[0, 1]) < 0.03
    other_seed = uniforms(torch.ones(20_000, dtype=torch.long), torch.arange(20_000), 4)
    assert (values != other_seed).float().mean() > 0.99
    big_seed = uniforms(torch.full((3,), 2**32 - 1), torch.tensor([0, 1, 2**20]), 8)  # seeds up to 2^32 - 1
    assert big_seed.min() >= 0 and big_seed.max() < 1


def test_greedy_below_the_threshold_is_argmax():
    logits = torch.randn(4, 300, generator=torch.Generator().manual_seed(0))
    assert torch.equal(_one(logits, temperature=0.0)[0], logits.argmax(-1))


def test_sampled_frequencies_follow_the_softmax_and_top_k_top_p_cut_as_audiocraft():
    card = 6
    logits = torch.log(torch.tensor([[0.4, 0.25, 0.15, 0.1, 0.06, 0.04]]))
    draws = 40_000
    plain = torch.bincount(_one(logits, count=draws)[:, 0], minlength=card).float() / draws
    assert (plain - logits.exp()[0]).abs().max() < 0.01
    top_k = torch.bincount(_one(logits, top_k=2, count=draws)[:, 0], minlength=card).float() / draws
    assert top_k[2:].sum() == 0 and abs(top_k[0] - 0.4 / 0.65) < 0.01
    # top-p 0.5 keeps the tokens whose mass before them is <= 0.5: 0.4, 0.25 (and wins over top_k)
    top_p = torch.bincount(_one(logits, top_k=1, top_p=0.5, count=draws)[:, 0], minlength=card).float() / draws
    assert top_p[2:].sum() == 0 and abs(top_p[1] - 0.25 / 0.65) < 0.01
    hot = torch.bincount(_one(logits, temperature=2.0, count=draws)[:, 0], minlength=card).float() / draws
    expected = torch.softmax(logits[0] / 2.0, -1)
    assert (hot - expected).abs().max() < 0.01


def test_guidance_is_audiocrafts_bit_for_bit_with_one_style_and_weights_the_styles():
    logits = torch.randn(5, 4, 64, generator=torch.Generator().manual_seed(1))
    inputs = StepInputs([RowSettings(0, (1.0,), 3.0, 1, 0, 0, 0), RowSettings(2, (0.3, 0.7), 2.0, 1, 0, 0, 0)],
                        [0, 0], torch.device("cpu"))
    guided = guide(logits, inputs.mix, inputs.uncond_rows, inputs.row_uncond, inputs.guidance)
    assert torch.equal(guided[0], logits[1] + (logits[0] - logits[1]) * 3.0)
    weighted = 0.3 * (logits[2] - logits[4]) + 0.7 * (logits[3] - logits[4])
    assert torch.allclose(guided[1], logits[4] + 2.0 * weighted, atol=1e-5)


@settings(max_examples=30, deadline=None)
@given(seeds=st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=4),
       position=st.integers(0, 3), draws=st.integers(0, 10_000), temperature=st.sampled_from([0.0, 0.5, 1.0]))
def test_a_streams_tokens_do_not_depend_on_its_neighbours(seeds, position, draws, temperature):
    """The same stream (seed, draw count, settings, logits) gets the same tokens alone or among others."""
    position = min(position, len(seeds))
    generator = torch.Generator().manual_seed(draws)
    own = torch.randn(2, 4, 128, generator=generator)
    others = [torch.randn(2, 4, 128, generator=generator) for _ in seeds]
    mine = RowSettings(0, (1.0,), 3.0, temperature, 50, 0.0, 12345)

    def run(streams_logits, settings_list):
        rows = [RowSettings(2 * i, s.style_weights, s.guidance, s.temperature, s.top_k, s.top_p, s.seed)
                for i, s in enumerate(settings_list)]
        return guided_sample(torch.cat(streams_logits), StepInputs(rows, [draws] * len(rows), torch.device("cpu")))

    alone = run([own], [mine])[0]
    neighbours = [RowSettings(0, (1.0,), 2.0, 1.0, 0, 0.9, seed) for seed in seeds]
    logits = others[:position] + [own] + others[position:]
    together = run(logits, neighbours[:position] + [mine] + neighbours[position:])[position]
    assert torch.equal(alone, together)


def test_the_draw_counter_advances_on_the_device():
    inputs = StepInputs([RowSettings(0, (1.0,), 3.0, 1.0, 0, 0.0, 5)], [41], torch.device("cpu"))
    logits = torch.randn(2, 4, 32, generator=torch.Generator().manual_seed(2))
    first = guided_sample(logits, inputs)
    assert inputs.draws.tolist() == [42]
    again = guided_sample(logits, StepInputs([RowSettings(0, (1.0,), 3.0, 1.0, 0, 0.0, 5)], [41], torch.device("cpu")))
    assert torch.equal(first, again)

"""LoRA adapters (engine.lm.lora): the file round-trips and refuses what does not fit, a row with its adapter gives
the merged checkpoint's logits, and rows with different adapters batched in one forward (eager and capturable step)
each give what they give alone."""

import copy

import pytest
import torch

from engine.lm.conditions import text_condition
from engine.lm.decoder import StepDecoder
from engine.lm.lora import (
    AdapterBank,
    AdapterError,
    SingleAdapter,
    base_fingerprint,
    load_adapter,
    merge,
    new_adapter,
    save_adapter,
)
from engine.lm.static_step import CapturableStep


def _random_adapter(lm, seed: int, rank: int = 4, **kwargs):
    return new_adapter(lm, rank=rank, alpha=2.0 * rank, b_std=0.5, generator=torch.Generator().manual_seed(seed),
                       **kwargs)


def _decoder(lm, texts, max_steps: int = 32) -> StepDecoder:
    decoder = StepDecoder(lm, max_rows=len(texts), max_steps=max_steps)
    for row, text in enumerate(texts):
        decoder.set_condition(row, *text_condition(lm, text))
    return decoder


def _tokens(lm, rows: int, steps: int, seed: int) -> torch.Tensor:
    return torch.randint(0, lm.card, (rows, lm.num_codebooks, steps), generator=torch.Generator().manual_seed(seed))


def test_the_file_round_trips_and_names_what_is_wrong(engine, tmp_path):
    lm = engine.model.musicgen.lm
    adapter = _random_adapter(lm, 0, training={"epochs": 3, "lr": 1e-4})
    path = save_adapter(adapter, tmp_path / "funk.safetensors")
    loaded = load_adapter(path)
    assert loaded.name == "funk" and loaded.rank == 4 and loaded.alpha == 8.0 and loaded.targets == adapter.targets
    assert loaded.base_fingerprint == base_fingerprint(lm) and loaded.training == {"epochs": 3, "lr": 1e-4}
    assert all(torch.equal(loaded.weights[k], adapter.weights[k]) for k in adapter.weights)
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(AdapterError, match="junk.safetensors: not a safetensors file"):
        load_adapter(tmp_path / "junk.safetensors")
    with pytest.raises(AdapterError, match="no such file"):
        load_adapter(tmp_path / "missing.safetensors")
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(tmp_path / "other.safetensors"), metadata={"format": "pt"})
    with pytest.raises(AdapterError, match="metadata format is 'pt'"):
        load_adapter(tmp_path / "other.safetensors")


def test_an_adapter_for_other_base_weights_is_refused_with_the_reason(engine):
    lm = engine.model.musicgen.lm
    other = copy.deepcopy(lm)
    with torch.no_grad():
        other.transformer.layers[0].linear1.weight.add_(1.0)
    assert base_fingerprint(other) != base_fingerprint(lm)
    adapter = _random_adapter(other, 1)
    bank = AdapterBank(lm, slots=2, max_rank=4, dtype=torch.float32)
    with pytest.raises(AdapterError, match="trained on base weights .* cannot be applied to this checkpoint"):
        bank.load(1, adapter)
    with pytest.raises(AdapterError, match="rank <= 2"):
        AdapterBank(lm, slots=2, max_rank=2, dtype=torch.float32).load(1, _random_adapter(lm, 2))
    with pytest.raises(AdapterError, match="trained on base weights"):
        merge(adapter, copy.deepcopy(lm))


def test_a_row_with_its_adapter_gives_the_merged_checkpoints_logits(engine):
    """The bank (served) and the single-adapter path (training) both equal the weights with B @ A folded in."""
    lm = engine.model.musicgen.lm
    adapter = _random_adapter(lm, 3)
    merged = copy.deepcopy(lm)
    merge(adapter, merged)
    tokens = _tokens(lm, 2, 12, seed=4)
    with torch.no_grad():
        expected = _decoder(merged, ["jazz", None]).forward(slice(0, 2), tokens)
        base = _decoder(lm, ["jazz", None]).forward(slice(0, 2), tokens)
        served = _decoder(lm, ["jazz", None])
        bank = AdapterBank(lm, slots=3, max_rank=8, dtype=torch.float32)
        bank.load(2, adapter)
        served.attach_adapters(bank)
        served.set_adapter(slice(0, 2), 2)
        got = served.forward(slice(0, 2), tokens)
        single = _decoder(lm, ["jazz", None])
        single.transformer.lora = SingleAdapter(adapter)
        trained = single.forward(slice(0, 2), tokens)
    assert (base - expected).abs().max().item() > 1e-2  # the adapter changes the output
    assert (got - expected).abs().max().item() < 1e-4
    assert (trained - expected).abs().max().item() < 1e-4


def test_rows_with_different_adapters_share_one_forward(engine):
    """Three streams (adapter 1, none, adapter 2) at different lengths, prefilled and stepped together, eagerly and
    through the capturable step: each stream's logits are those of its merged checkpoint alone."""
    lm = engine.model.musicgen.lm
    adapters = [_random_adapter(lm, 10), None, _random_adapter(lm, 11, rank=2)]
    texts = ["drums", None, "bass", None, "a longer prompt than the others", None]
    bank = AdapterBank(lm, slots=2, max_rank=4, dtype=torch.float32)
    bank.load(1, adapters[0])
    bank.load(2, adapters[2])
    together = _decoder(lm, texts)
    twin = _decoder(lm, texts)
    for decoder in (together, twin):
        decoder.attach_adapters(bank)
        decoder.set_adapter(slice(0, 2), 1)
        decoder.set_adapter(slice(4, 6), 2)
    step = CapturableStep(twin, compiled=False, min_window=16)
    sequence = _tokens(lm, 6, 20, seed=5)
    lengths = (9, 4, 14)
    worst = 0.0
    with torch.no_grad():
        for decoder in (together, twin):
            for pair, length in enumerate(lengths):
                rows = slice(2 * pair, 2 * pair + 2)
                decoder.forward(rows, sequence[rows, :, :length])
        batched, stepped = [], []
        for s in range(4):
            tokens = torch.cat([sequence[2 * p: 2 * p + 2, :, n + s] for p, n in enumerate(lengths)])
            batched.append(together.forward(slice(0, 6), tokens.unsqueeze(-1)))
            stepped.append(step(slice(0, 6), tokens).unsqueeze(2))
        batched, stepped = torch.cat(batched, dim=2), torch.cat(stepped, dim=2)
        for pair, (adapter, length) in enumerate(zip(adapters, lengths, strict=True)):
            solo_lm = lm
            if adapter is not None:
                solo_lm = copy.deepcopy(lm)
                merge(adapter, solo_lm)
            rows = slice(2 * pair, 2 * pair + 2)
            alone = _decoder(solo_lm, texts[rows]).forward(slice(0, 2), sequence[rows, :, :length + 4])[:, :, length:]
            worst = max(worst, (batched[rows] - alone).abs().max().item(), (stepped[rows] - alone).abs().max().item())
    assert worst < 1e-4


def test_relayout_moves_a_rows_adapter_with_it(engine):
    lm = engine.model.musicgen.lm
    decoder = _decoder(lm, ["a", None, "b", None])
    decoder.attach_adapters(AdapterBank(lm, slots=1, max_rank=4, dtype=torch.float32))
    decoder.set_adapter(slice(2, 4), 1)
    decoder.relayout([2, 3, 0, 1])
    assert decoder.host_adapter_rows == [1, 1, 0, 0] == decoder.adapter_rows.tolist()


def test_training_gradients_reach_the_adapter_through_the_transformers_layer(engine):
    """Training's forward: the transformer's layers over a whole sequence, causal attention without a cache (the
    decoder's cache is written in place), one adapter on every row: B gets a gradient (A's is zero while B is, as
    in peft: B starts at zero)."""
    import torch.nn.functional as F

    from engine.lm.transformer import Transformer

    lm = engine.model.musicgen.lm
    adapter = new_adapter(lm, rank=4, requires_grad=True, generator=torch.Generator().manual_seed(0))
    transformer = Transformer(lm, "float32")
    transformer.lora = SingleAdapter(adapter)
    tokens = _tokens(lm, 2, 6, seed=0)
    x = transformer.embed(tokens, torch.arange(6).expand(2, -1))
    for index in range(len(transformer.layers)):
        x = transformer.layer(index, x, lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True),
                              lambda q: q.tanh())  # any function of q: no condition here
    transformer.head(x).logsumexp(-1).mean().backward()
    assert all(t.grad is not None for t in adapter.weights.values())
    assert all(t.grad.abs().sum() > 0 for k, t in adapter.weights.items() if k.endswith("lora_B"))

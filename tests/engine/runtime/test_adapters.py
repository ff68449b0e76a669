"""LoRA adapters served beside the base model (engine.runtime.adapters): files dropped in the folder serve without a
restart, a prediction or session with an adapter gives the merged checkpoint's tokens at the same seed, sessions with
different adapters decoded together give what each gives alone, and what cannot serve is refused with the reason."""

import copy
import dataclasses
import threading

import pytest
import torch

from engine.api import BatchRequest, EngineConfig, RequestError, SessionSettings
from engine.core import Engine
from engine.lm.lora import merge, new_adapter, save_adapter

SETTINGS = SessionSettings(styles=("jazz",), weights=(1.0,), chunk_seconds=0.5)


def random_adapter(lm, seed: int, rank: int = 4, **kwargs):
    """A tiny random adapter (no training: B is noise, so the output really changes)."""
    return new_adapter(lm, rank=rank, alpha=2.0 * rank, b_std=0.3, generator=torch.Generator().manual_seed(seed),
                       **kwargs)


@pytest.fixture(scope="module")
def served(engine, tmp_path_factory):
    """An engine on the demo model serving the adapters of a folder holding `funk` and `soul`, and the merged
    checkpoint of each, as engines of their own."""
    folder = tmp_path_factory.mktemp("adapters")
    lm = engine.model.musicgen.lm
    adapters = {"funk": random_adapter(lm, 1), "soul": random_adapter(lm, 2, rank=2)}
    for name, adapter in adapters.items():
        save_adapter(adapter, folder / f"{name}.safetensors")
    # float32: the merged weights round as W + sBA does only there (bfloat16 rounds the sum to 8 bits)
    config = EngineConfig(max_sessions=3, weight_format="float32", adapters_dir=str(folder), adapter_slots=2,
                          adapter_max_rank=4)
    engines = {"base": Engine(engine.model, config)}
    for name, adapter in adapters.items():
        from audiocraft.models import MusicGen

        merged_lm = copy.deepcopy(lm)
        merge(adapter, merged_lm)
        musicgen = MusicGen("merged", engine.model.musicgen.compression_model, merged_lm, max_duration=30)
        engines[name] = Engine(dataclasses.replace(engine.model, musicgen=musicgen),
                               EngineConfig(max_sessions=3, weight_format="float32"))
    yield folder, engines
    for e in engines.values():
        e.close()


def test_a_prediction_with_an_adapter_gives_the_merged_checkpoints_tokens(served):
    _, engines = served
    request = dict(prompt="funky bass", duration=2, seed=11)
    for name in ("funk", "soul"):
        got = engines["base"].generate(BatchRequest(**request, model=name)).wait().tokens
        merged = engines[name].generate(BatchRequest(**request)).wait().tokens
        assert torch.equal(got, merged), name
    base = engines["base"].generate(BatchRequest(**request)).wait().tokens
    assert not torch.equal(base, merged)


def _chunks(session, count: int) -> torch.Tensor:
    try:
        return torch.cat([session.next_chunk().result(timeout=120).frames for _ in range(count)], dim=-1)
    finally:
        session.close()


def test_sessions_with_different_adapters_share_the_step_and_each_equals_its_merged_checkpoint(served):
    """funk, soul and the base model play at once on one engine (one forward a step, each row its adapter); each
    session's tokens are those of its merged checkpoint alone at the same seed."""
    _, engines = served
    together: dict[str, torch.Tensor] = {}
    sessions = {name: engines["base"].open_session(dataclasses.replace(SETTINGS, model=name), seed=5)
                for name in ("funk", "soul", "base")}
    threads = [threading.Thread(target=lambda n=n, s=s: together.__setitem__(n, _chunks(s, 3)))
               for n, s in sessions.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    for name in ("funk", "soul", "base"):
        alone = _chunks(engines[name].open_session(SETTINGS, seed=5), 3)
        assert torch.equal(together[name], alone), name
    assert not torch.equal(together["funk"], together["base"])


def test_a_new_file_serves_without_a_restart_and_what_cannot_serve_says_why(served, engine):
    folder, engines = served
    base = engines["base"]
    assert base.models() == ["funk", "soul"]
    lm = engine.model.musicgen.lm
    save_adapter(random_adapter(lm, 3), folder / "disco.safetensors")
    assert base.models() == ["disco", "funk", "soul"]  # the list is a scan
    job = base.generate(BatchRequest(prompt="x", duration=1, seed=1, model="disco"))
    assert job.wait().tokens.shape[-1] > 0
    with pytest.raises(RequestError, match="model 'nope' is not served here .*served: base, disco, funk, soul"):
        base.generate(BatchRequest(prompt="x", duration=1, model="nope"))
    other = copy.deepcopy(lm)
    with torch.no_grad():
        other.transformer.layers[0].linear1.weight.add_(1.0)
    save_adapter(random_adapter(other, 4), folder / "alien.safetensors")
    save_adapter(random_adapter(lm, 5, rank=8), folder / "wide.safetensors")
    assert base.models() == ["disco", "funk", "soul"]
    with pytest.raises(RequestError, match="model 'alien' cannot serve here: trained on base weights"):
        base.open_session(dataclasses.replace(SETTINGS, model="alien"), seed=1)
    with pytest.raises(RequestError, match="rank 8; this server holds adapters of rank <= 4"):
        base.open_session(dataclasses.replace(SETTINGS, model="models/wide"), seed=1)
    with pytest.raises(ValueError, match="is not a model name"):
        dataclasses.replace(SETTINGS, model="../etc/passwd!")
    with pytest.raises(RequestError, match="is not a model name"):
        base.generate(BatchRequest(prompt="x", duration=1, model="../etc/passwd!"))
    assert base.sessions_open == 0  # nothing refused holds a session slot
    assert base.generate(BatchRequest(prompt="x", duration=1, seed=1, model="base")).wait().tokens.shape[-1] > 0

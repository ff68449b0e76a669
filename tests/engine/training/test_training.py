"""Training on the engine's transformer: audiocraft's loss to the bit, a 3-clip dataset learnt by `full` and `lora`
(the training audio's cross-entropy falls by >= 25%), outputs that load (audiocraft, our loader, the merge
command), an adapter for other base weights refused, and cancel between two updates."""

import pytest
import torch

from engine.lm.lora import AdapterError, new_adapter, save_adapter
from engine.lm.transformer import Transformer
from engine.loading.model import load_model
from engine.training.config import TrainingConfig
from engine.training.dataset import DatasetError, DatasetOptions
from engine.training.forward import TrainingForward
from engine.training.loop import TrainingCancelled
from engine.training.run import fine_tune, load_for_training, merge_adapter_file
from tests.support.datasets import clip_dataset

# adamw at a high rate: the demo model is tiny and random, so a few updates show learning (the defaults, dadam at
# lr 1 over 300 updates, are the fine-tuner's for real checkpoints)
QUICK = dict(epochs=2, updates_per_epoch=8, batch_size=3, optimizer="adamw", lr=0.03, warmup=2, seed=3, log_every=4)
CAPTIONED = DatasetOptions(auto_labeling=False)


@pytest.fixture(scope="module")
def demo_lm(demo_dir):
    return load_for_training(demo_dir, "cpu").musicgen.lm


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return clip_dataset(tmp_path_factory.mktemp("data"))


def test_the_loss_is_audiocrafts_musicgen_loss(demo_lm):
    from audiocraft.modules.conditioners import ConditioningAttributes
    from audiocraft.solvers.musicgen import MusicGenSolver

    forward = TrainingForward(demo_lm, Transformer(demo_lm, "float32"))
    codes = torch.randint(0, demo_lm.card, (2, demo_lm.num_codebooks, 120), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = forward.loss(codes, torch.tensor([120, 120]), ["lofi beat", "lofi beat"])
        attributes = [ConditioningAttributes(text={"description": "lofi beat"}) for _ in range(2)]
        predictions = demo_lm.compute_predictions(codes, attributes)
        theirs, _ = MusicGenSolver._compute_cross_entropy(None, predictions.logits, codes, predictions.mask)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_padded_frames_do_not_count(demo_lm):
    forward = TrainingForward(demo_lm, Transformer(demo_lm, "float32"))
    generator = torch.Generator().manual_seed(1)
    codes = torch.randint(0, demo_lm.card, (1, demo_lm.num_codebooks, 100), generator=generator)
    padded = torch.cat([codes, torch.randint(0, demo_lm.card, (1, demo_lm.num_codebooks, 40), generator=generator)], -1)
    with torch.no_grad():
        alone = forward.loss(codes, torch.tensor([100]), ["x"])
        in_padding = forward.loss(padded, torch.tensor([100]), ["x"])
    torch.testing.assert_close(alone, in_padding, rtol=1e-5, atol=1e-5)


def test_the_gpu_path_autocast_and_checkpointing_gives_the_same_loss_and_gradients(demo_lm):
    """What a GPU runs (bf16 autocast, a checkpointed layer), exercised on the CPU: the loss and the adapter's
    gradients match the plain float32 pass to bf16 precision."""
    from engine.lm.lora import SingleAdapter

    adapter = new_adapter(demo_lm, rank=4, b_std=0.02, requires_grad=True, generator=torch.Generator().manual_seed(0))
    codes = torch.randint(0, demo_lm.card, (2, demo_lm.num_codebooks, 80), generator=torch.Generator().manual_seed(2))
    results = []
    for checkpointing, dtype in ((False, None), (True, torch.bfloat16)):
        transformer = Transformer(demo_lm, "float32")
        transformer.lora = SingleAdapter(adapter)
        forward = TrainingForward(demo_lm, transformer, checkpointing=checkpointing, autocast_dtype=dtype)
        loss = forward.loss(codes, torch.tensor([80, 60]), ["a", "b"])
        grads = torch.autograd.grad(loss, list(adapter.weights.values()))
        results.append((loss.detach(), torch.cat([g.flatten() for g in grads])))
    (loss32, grad32), (loss16, grad16) = results
    torch.testing.assert_close(loss16, loss32, rtol=2e-2, atol=0)
    assert torch.nn.functional.cosine_similarity(grad16, grad32, dim=0) > 0.98


@pytest.fixture(scope="module")
def trained(demo_dir, dataset, tmp_path_factory):
    """Both methods trained once on the 3-clip dataset."""
    return {method: fine_tune(dataset, TrainingConfig(method=method, **QUICK), CAPTIONED, source=demo_dir,
                              out_dir=tmp_path_factory.mktemp(method), device="cpu")
            for method in ("full", "lora")}


@pytest.mark.slow
@pytest.mark.parametrize("method", ["full", "lora"])
def test_the_training_audio_cross_entropy_falls_by_a_quarter(trained, method):
    result = trained[method]
    assert result.segments == 3 and result.stats.updates == 16
    assert result.cross_entropy_after <= 0.75 * result.cross_entropy_before, (result.cross_entropy_before,
                                                                              result.cross_entropy_after)


@pytest.mark.slow
def test_the_full_output_is_the_fine_tuners_file_and_loads_in_audiocraft_and_here(trained, demo_dir, dataset,
                                                                                    tmp_path):
    from audiocraft.models.builders import get_lm_model
    from omegaconf import OmegaConf

    path = trained["full"].path
    pkg = torch.load(path, map_location="cpu", weights_only=False)
    assert set(pkg) == {"xp.cfg", "model"}
    cfg = OmegaConf.create(pkg["xp.cfg"])  # what the fine-tuner's predictor does with it (load_ckpt)
    cfg.device, cfg.dtype = "cpu", "float32"
    theirs = get_lm_model(cfg)
    theirs.load_state_dict(pkg["model"])
    ours = load_model(path, device="cpu").musicgen.lm
    for name, tensor in theirs.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[name], tensor)
    # the trained weights are what lowered the loss: the loaded LM scores the training audio as training left it
    config = TrainingConfig(method="full", **dict(QUICK, epochs=1, updates_per_epoch=1, lr=1e-9))
    again = fine_tune(dataset, config, CAPTIONED, source=path, out_dir=tmp_path, device="cpu")
    assert again.cross_entropy_before == pytest.approx(trained["full"].cross_entropy_after, rel=1e-4)


@pytest.mark.slow
def test_the_adapter_loads_merged_and_the_merge_command_writes_the_same_weights(trained, demo_dir, tmp_path):
    adapter = trained["lora"].path
    assert adapter.suffix == ".safetensors" and adapter.stat().st_size < 200_000
    served = load_model(adapter, device="cpu").musicgen.lm.float()
    merged = load_model(merge_adapter_file(adapter, tmp_path / "merged.th", demo_dir), device="cpu").musicgen.lm
    base = load_model(demo_dir, device="cpu").musicgen.lm
    name = "transformer.layers.0.linear1.weight"
    torch.testing.assert_close(served.state_dict()[name], merged.state_dict()[name])
    assert not torch.allclose(served.state_dict()[name], base.state_dict()[name])


@pytest.mark.slow
def test_an_adapter_of_other_base_weights_is_refused_with_both_fingerprints(trained, tmp_path):
    other = load_model(trained["full"].path, device="cpu").musicgen.lm  # the fine-tuned LM: other weights
    path = save_adapter(new_adapter(other, rank=4, b_std=0.01), tmp_path / "other.safetensors")
    with pytest.raises(AdapterError, match="was trained on base weights sha256:.*the loaded model is sha256:"):
        load_model(path, device="cpu")


def test_cancel_stops_between_two_updates_and_writes_nothing(demo_dir, dataset, tmp_path):
    asked = []

    def cancelled() -> bool:
        asked.append(1)
        return len(asked) > 2

    config = TrainingConfig(method="lora", **QUICK)
    with pytest.raises(TrainingCancelled, match="cancelled after 2 of 16 updates"):
        fine_tune(dataset, config, CAPTIONED, source=demo_dir, out_dir=tmp_path, device="cpu", cancelled=cancelled)
    assert list(tmp_path.iterdir()) == []


def test_drop_vocals_without_the_separators_weights_says_how_to_get_them(demo_dir, dataset, tmp_path):
    from engine.loading.separator import separator_path

    if separator_path().is_file():
        pytest.skip("this machine has the htdemucs weights")
    with pytest.raises(DatasetError, match="drop_vocals needs the htdemucs stem separator .* weights.fetch"):
        fine_tune(dataset, TrainingConfig(**QUICK), DatasetOptions(drop_vocals=True), source=demo_dir,
                  out_dir=tmp_path, device="cpu")


@pytest.mark.parametrize("field,value", [("epochs", 0), ("batch_size", 65), ("cfg_p", 1.5), ("method", "qlora")])
def test_out_of_range_settings_are_refused_by_name(field, value):
    with pytest.raises(ValueError, match=field):
        TrainingConfig(**{field: value}).validate()

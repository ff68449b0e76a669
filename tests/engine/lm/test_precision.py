"""The decoder's weight format is chosen by the device and can be overridden."""

import pytest
import torch

from engine.config import ConfigError, EngineConfig
from engine.lm.precision import activation_dtype, choose_weight_format
from engine.work.batch import BatchRequest


@pytest.mark.parametrize(("device", "flags", "expected"), [
    ("cpu", {"avx2", "avx512f", "avx512_bf16"}, "bfloat16"),
    ("cpu", {"avx2", "amx_bf16", "amx_tile"}, "bfloat16"),
    ("cpu", {"avx2", "avx512f", "avx512_vnni"}, "float32"),
    ("cpu", set(), "float32"),
    ("cuda", set(), "float16"),
    ("cuda:1", {"avx512_bf16"}, "float16"),
])
def test_auto_picks_by_device(device, flags, expected):
    chosen, reason = choose_weight_format("auto", device, flags)
    assert chosen == expected and reason


def test_an_explicit_format_overrides_and_a_bad_one_is_refused():
    assert choose_weight_format("int8", "cpu", {"amx_bf16"}) == ("int8", "set by MUSICGEN_WEIGHT_FORMAT")
    with pytest.raises(ValueError, match="MUSICGEN_WEIGHT_FORMAT must be auto or one of"):
        choose_weight_format("fp8", "cpu", set())
    with pytest.raises(ConfigError, match="MUSICGEN_WEIGHT_FORMAT"):
        EngineConfig.from_env({"MUSICGEN_WEIGHT_FORMAT": "fp8"})
    assert EngineConfig.from_env({}).weight_format == "auto"


def test_activations_follow_the_format():
    assert activation_dtype("float32") == torch.float32
    assert activation_dtype("float16") == torch.float16
    assert activation_dtype("bfloat16") == activation_dtype("int8") == torch.bfloat16


def test_the_engine_states_its_choice(demo_dir):
    from engine.core import Engine

    engine = Engine.load(demo_dir, device="cpu", config=EngineConfig(max_sessions=1, weight_format="bfloat16"))
    try:
        described = engine.describe()
        assert described["weight_format"] == "bfloat16"
        assert described["weight_format_reason"] == "set by MUSICGEN_WEIGHT_FORMAT"
        result = engine.generate(BatchRequest(prompt="x", duration=1, seed=1)).wait()
        assert torch.isfinite(result.wav).all()
    finally:
        engine.close()


def test_the_lm_is_built_in_half_precision_off_the_cpu():
    """As audiocraft's loader: float16 on CUDA (weights stored once there: the decoder's float16 weights are the LM's
    own tensors, tests/engine/test_cuda.py checks), float32 on the CPU (whose decoder picks its own format)."""
    from omegaconf import OmegaConf

    from engine.loading.checkpoint import lm_dtype, prepare_lm_config

    assert lm_dtype("cpu") == "float32" and lm_dtype("cuda") == lm_dtype("cuda:1") == "float16"
    cfg = OmegaConf.create({"device": "cpu", "dtype": "float32"})
    prepare_lm_config(cfg, "cuda:0")
    assert (cfg.device, cfg.dtype) == ("cuda:0", "float16")
    assert choose_weight_format("auto", "cuda")[0] == lm_dtype("cuda")  # the decoder's copy is then no copy


def test_a_half_precision_lm_is_shared_with_the_decoder_not_copied(demo_dir):
    """The CPU stand-in of the CUDA layout (tests/engine/test_cuda.py checks the real one): an LM stored in float16 as
    engine.loading.checkpoint stores it off the CPU gives a float16 decoder its own tensors, and the same logits as
    float32 within half precision's error."""
    import copy

    from engine.lm.conditions import text_condition
    from engine.lm.decoder import StepDecoder
    from engine.loading.checkpoint import store_in_compute_dtype
    from engine.loading.model import load_model

    lm32 = load_model(demo_dir, device="cpu").musicgen.lm
    lm16 = copy.deepcopy(lm32)
    lm16.transformer.half()  # as audiocraft's builder makes it with dtype float16
    store_in_compute_dtype(lm16, "cuda")
    assert {p.dtype for m in (lm16.transformer, lm16.emb, lm16.out_norm, lm16.linears) for p in m.parameters()} == {
        torch.float16}
    assert {p.dtype for p in lm16.condition_provider.parameters()} == {torch.float32}  # as audiocraft keeps it
    logits = {}
    for name, lm, weight_format in (("16", lm16, "float16"), ("32", lm32, "float32")):
        decoder = StepDecoder(lm, max_rows=2, max_steps=32, weight_format=weight_format)
        for row, text in enumerate(("drums", None)):
            decoder.set_condition(row, *text_condition(lm32, text))
        tokens = torch.randint(0, lm.card, (2, lm.num_codebooks, 8), generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            logits[name] = decoder.forward(slice(0, 2), tokens)
        if name == "16":
            first = lm.transformer.layers[0]
            assert decoder.transformer.embeddings[0].data_ptr() == lm.emb[0].weight.data_ptr()
            assert decoder.transformer.layers[0].qkv.weight.data_ptr() == first.self_attn.in_proj_weight.data_ptr()
            assert decoder.keys.dtype == torch.float16
    error = (logits["16"] - logits["32"]).norm() / logits["32"].norm()
    assert error < 1e-2

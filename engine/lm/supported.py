"""Which of audiocraft's LMs the step decoder (engine.lm.decoder) implements, checked before it reads a weight.

A checkpoint whose LM uses a feature the decoder lacks still serves predictions through audiocraft's own generate
(engine.runtime.scheduler keeps the reason); this says which features, all of them at once, so the log names them.
"""

import torch


class UnsupportedModel(ValueError):
    """The LM uses a feature this decoder does not implement; audiocraft's own generate still works."""


def check_supported(lm) -> None:
    """Raises UnsupportedModel naming every feature of `lm` (all layers) this decoder does not implement."""
    transformer = lm.transformer
    problems = []
    if transformer.positional_embedding != "sin":
        problems.append(f"positional_embedding={transformer.positional_embedding}")
    fuse = lm.fuser.fuse2cond
    if len(fuse["sum"]) or len(fuse["input_interpolate"]):
        problems.append("sum/input_interpolate condition fusing")
    text_prepends = [name for name in fuse["prepend"] if name in lm.condition_provider.text_conditions]
    if text_prepends:
        problems.append(f"prepended text conditions {text_prepends}")
    if lm.fuser.cross_attention_pos_emb:
        problems.append("cross_attention_pos_emb")
    for layer in transformer.layers:
        attn = layer.self_attn
        if not layer.norm_first:
            problems.append("post-norm layers")
        if not isinstance(layer.layer_scale_1, torch.nn.Identity):
            problems.append("layer_scale")
        if attn.rope is not None or attn.past_context is not None or attn.kv_repeat != 1 or attn.qk_layer_norm:
            problems.append("rope/past_context/kv_repeat/qk_layer_norm attention")
        if not attn.custom or attn.in_proj_bias is not None or layer.linear1.bias is not None:
            problems.append("biased or non-custom attention/feed-forward")
    if problems:
        raise UnsupportedModel("step decoder does not support: " + ", ".join(sorted(set(problems))))

"""Builds the demo checkpoint: a tiny MusicGen with random weights, written in audiocraft's release layout.

It exists so that the whole production path (safe checkpoint loading, hub-name resolution of T5 through a local
cache, the codec, generation, MBD decoding) runs on a machine without model downloads. Its output is noise.

    python -m weights.demo [--kind mono|melody|stereo|stereo-melody] [--out weights/demo]
                           [--lm-dim 32 --lm-layers 2 --lm-heads 2]

Each kind has the configuration of its published family (musicgen-small/melody/stereo-small/stereo-melody), only
tiny: melody kinds prepend a chroma of the melody's stems (a random, tiny htdemucs stored in the checkpoint's
``torch/`` cache), stereo kinds model 8 interleaved codebooks decoded by a stereo wrapper of the mono codec.

The ``--lm-*`` options build larger random models with the same code, e.g. musicgen-small's dimensions
(``--lm-dim 1024 --lm-layers 24 --lm-heads 16``) for benchmarks.
"""

import argparse
import hashlib
import json
import logging
import shutil
import typing as tp
from pathlib import Path

from weights import DEMO_DIR

logger = logging.getLogger(__name__)

T5_NAME = "t5-base"  # the name musicgen's config gives its text encoder; audiocraft fixes its width to 768
T5_WIDTH = 768
MBD_FILENAME = "mbd_musicgen_32khz.th"
NOISE_NOTICE = "Random-weight demo checkpoint: its output is noise, not music."

# Words a prompt is likely to contain, so the tiny tokenizer gives prompts distinct token ids.
_VOCAB_WORDS = (
    "a an and of with the in on for to by at from music song beat track loop groove jazz hiphop hip hop rock "
    "metal heavy ambient techno house trance lofi lo-fi chill upbeat downbeat dark warm bright happy sad calm "
    "energetic piano guitar drums drum bass synth strings violin cello flute sax saxophone trumpet vocals voice "
    "pad lead organ choir orchestra orchestral cinematic epic acoustic electric electronic funk soul disco reggae "
    "blues country folk pop classical minimal dub dubstep trap drill edm 80s 90s retro vintage slow fast tempo "
    "bpm major minor key scale melody harmony rhythm percussion kick snare hat hats clap warmup dense sparse "
    "mute muted only no"
).split()


def _tokenizer_vocab() -> list[tuple[str, float]]:
    """A T5-style unigram vocabulary: specials, whole words, then single characters as a fallback."""
    pieces: list[tuple[str, float]] = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [("\u2581" + word, -3.0 - i * 1e-3) for i, word in enumerate(_VOCAB_WORDS)]
    chars = "abcdefghijklmnopqrstuvwxyz0123456789-,.'!?"
    pieces += [(c, -8.0) for c in chars] + [("\u2581" + c, -7.0) for c in chars]
    return pieces


def _write_hub_snapshot(hub_dir: Path, repo_id: str, files_dir: Path) -> None:
    """Lays files out as huggingface_hub's cache does, so `from_pretrained(repo_id)` finds them offline."""
    repo = hub_dir / ("models--" + repo_id.replace("/", "--"))
    digest = hashlib.sha1()
    for path in sorted(files_dir.iterdir()):
        digest.update(path.name.encode() + path.read_bytes())
    revision = digest.hexdigest()
    snapshot = repo / "snapshots" / revision
    if repo.exists():
        shutil.rmtree(repo)
    snapshot.parent.mkdir(parents=True)
    shutil.copytree(files_dir, snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)


def build_tiny_t5(hub_dir: Path, work_dir: Path) -> None:
    from transformers import T5Config, T5EncoderModel, T5Tokenizer

    tokenizer = T5Tokenizer(vocab=_tokenizer_vocab(), extra_ids=0)
    config = T5Config(vocab_size=len(tokenizer), d_model=T5_WIDTH, d_kv=8, d_ff=64, num_layers=1, num_heads=2)
    model = T5EncoderModel(config)
    files = work_dir / "t5"
    model.save_pretrained(files)
    tokenizer.save_pretrained(files)
    _write_hub_snapshot(hub_dir, T5_NAME, files)


KINDS = ("mono", "melody", "stereo", "stereo-melody")
# musicgen-melody's chroma conditioner (config/conditioner/chroma2music.yaml): the real one is this small already.
CHROMA_STEM = {"sample_rate": 32000, "n_chroma": 12, "radix2_exp": 14, "argmax": True, "match_len_on_eval": False,
               "eval_wavs": None, "n_eval_wavs": 100, "cache_path": None}
# htdemucs's layout with few channels and one transformer layer: separates 1 s of audio in ~0.15 s on a CPU.
TINY_HTDEMUCS = {"sources": ["drums", "bass", "other", "vocals"], "channels": 4, "depth": 4, "t_layers": 1,
                 "t_heads": 2, "dconv_comp": 2, "segment": 4}


def lm_config(dim: int, layers: int, heads: int, kind: str = "mono",
              transformer: tp.Optional[dict] = None) -> dict:
    """The LM part of a MusicGen training config, as the release checkpoints carry it in 'xp.cfg'; `transformer`
    overrides options of its `transformer_lm` section (e.g. a `layer_scale` the step decoder does not implement,
    for the fallback tests)."""
    cfg = _mono_lm_config(dim, layers, heads)
    cfg["transformer_lm"].update(transformer or {})
    if kind.endswith("melody"):  # as musicgen-melody: chroma prepended, text by cross-attention
        cfg["conditioners"]["self_wav"] = {"model": "chroma_stem", "chroma_stem": dict(CHROMA_STEM)}
        cfg["fuser"]["prepend"] = ["self_wav"]
        cfg["attribute_dropout"]["wav"] = {"self_wav": 0.5}
    if kind.startswith("stereo"):  # as musicgen-stereo-*: each codebook of the left and right channel in turn
        cfg["channels"] = 2
        cfg["transformer_lm"]["n_q"] = 8
        cfg["codebooks_pattern"]["delay"]["delays"] = [0, 0, 1, 1, 2, 2, 3, 3]
        cfg["interleave_stereo_codebooks"] = {"use": True, "per_timestep": False}
    return cfg


def _mono_lm_config(dim: int, layers: int, heads: int) -> dict:
    return {
        "device": "cpu",
        "dtype": "float32",
        "sample_rate": 32000,
        "channels": 1,
        "lm_model": "transformer_lm",
        "compression_model_checkpoint": "//pretrained/facebook/encodec_32khz",
        "dataset": {"segment_duration": 30.0},
        "codebooks_pattern": {
            "modeling": "delay",
            "delay": {"delays": [0, 1, 2, 3], "flatten_first": 0, "empty_initial": 0},
        },
        "transformer_lm": {
            "dim": dim, "num_heads": heads, "num_layers": layers, "hidden_scale": 4, "n_q": 4, "card": 2048,
            "dropout": 0.0, "emb_lr": None, "activation": "gelu", "norm_first": True, "bias_ff": False,
            "bias_attn": False, "bias_proj": False, "past_context": None, "causal": True, "custom": False,
            "memory_efficient": True, "attention_as_float32": False, "layer_scale": None,
            "positional_embedding": "sin", "xpos": False, "checkpointing": "none", "weight_init": "gaussian",
            "depthwise_init": "current", "zero_bias_init": True, "norm": "layer_norm", "cross_attention": False,
            "qk_layer_norm": False, "qk_layer_norm_cross": False, "attention_dropout": None, "kv_repeat": 1,
        },
        "classifier_free_guidance": {"training_dropout": 0.2, "inference_coef": 3.0},
        "attribute_dropout": {"text": {}, "wav": {}},
        "fuser": {
            "cross_attention_pos_emb": False, "cross_attention_pos_emb_scale": 1,
            "sum": [], "prepend": [], "cross": ["description"], "input_interpolate": [],
        },
        "conditioners": {
            "description": {
                "model": "t5",
                "t5": {"name": T5_NAME, "finetune": False, "word_dropout": 0.3, "normalize_text": False},
            },
        },
    }


def codec_config(lstm: int = 0) -> dict:
    """A 32 kHz, 50 Hz, 4 x 2048 EnCodec like musicgen's, with tiny convolutions (and musicgen's 2 LSTM layers
    with `lstm=2`). Stereo checkpoints ship this same mono codec: the LM's config wraps it for two channels."""
    return {
        "device": "cpu",
        "dtype": "float32",
        "sample_rate": 32000,
        "channels": 1,
        "compression_model": "encodec",
        "encodec": {
            "autoencoder": "seanet", "quantizer": "rvq", "sample_rate": 32000, "channels": 1,
            "causal": False, "renormalize": False,
        },
        "seanet": {
            "dimension": 16, "channels": 1, "causal": False, "n_filters": 4, "n_residual_layers": 1,
            "ratios": [8, 5, 4, 4], "activation": "ELU", "activation_params": {"alpha": 1.0},
            "norm": "weight_norm", "norm_params": {}, "kernel_size": 7, "residual_kernel_size": 3,
            "last_kernel_size": 7, "dilation_base": 2, "pad_mode": "constant", "true_skip": True,
            "compress": 2, "lstm": lstm, "disable_norm_outer_blocks": 0,
            "encoder": {}, "decoder": {"trim_right_ratio": 1.0, "final_activation": None,
                                       "final_activation_params": None},
        },
        "rvq": {
            "n_q": 4, "q_dropout": False, "bins": 2048, "decay": 0.99, "kmeans_init": False,
            "kmeans_iters": 50, "threshold_ema_dead_code": 2, "orthogonal_reg_weight": 0.0,
            "orthogonal_reg_active_codes_only": False, "orthogonal_reg_max_codes": None,
        },
    }


def mbd_config(num_steps: int = 1000) -> dict:
    """One band of a MultiBand Diffusion decoder as in 'mbd_musicgen_32khz.th', with a tiny U-Net."""
    return {
        "channels": 1,
        "schedule": {"repartition": "power", "power": 7.0, "beta_t0": 1.0e-5, "beta_t1": 2.9e-2,
                     "num_steps": num_steps, "variable_step_batch": True},
        "diffusion_unet": {"hidden": 8, "depth": 2, "growth": 2, "max_channels": 16, "emb_all_layers": True,
                           "cross_attention": False, "bilstm": False, "transformer": False, "codec_dim": 16},
        "processor": {"name": "multi_band_processor", "use": False, "n_bands": 1, "num_samples": 10000,
                      "power_std": 1.0},
    }


def build(out_dir: Path, lm_dim: int = 32, lm_layers: int = 2, lm_heads: int = 2, n_bands: int = 4,
          seed: int = 0, kind: str = "mono", transformer: tp.Optional[dict] = None) -> Path:
    """Writes state_dict.bin, compression_state_dict.bin and the tiny T5's hub cache; for mono-channel kinds a MBD
    file (MultiBand Diffusion decodes one 32 kHz channel); for melody kinds htdemucs in the torch hub cache.
    `transformer` overrides transformer_lm options of the LM's config (see lm_config)."""
    from engine.api import configure_offline_caches

    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}")
    out_dir = Path(out_dir).resolve()
    if out_dir.exists():
        shutil.rmtree(out_dir)
    (out_dir / "hub").mkdir(parents=True)
    melody = kind.endswith("melody")
    if melody:
        (out_dir / "torch").mkdir()
    configure_offline_caches(out_dir)

    import contextlib
    import tempfile

    import torch
    from omegaconf import OmegaConf

    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as tmp:
        build_tiny_t5(out_dir / "hub", Path(tmp))

    from audiocraft.models import builders

    codec_cfg = OmegaConf.create(codec_config())
    codec = builders.get_compression_model(codec_cfg)
    torch.save({"xp.cfg": OmegaConf.to_yaml(codec_cfg), "best_state": codec.state_dict(), "version": "1.3.0",
                "exported": True}, out_dir / "compression_state_dict.bin")

    building = contextlib.nullcontext()
    if melody:
        from demucs.htdemucs import HTDemucs

        from engine.api import load_separator, providing_separator, save_separator, separator_path

        save_separator(HTDemucs(**TINY_HTDEMUCS), separator_path())
        building = providing_separator(load_separator())
    cfg = OmegaConf.create(lm_config(lm_dim, lm_layers, lm_heads, kind, transformer))
    with building:
        lm = builders.get_lm_model(cfg)
    torch.save({"xp.cfg": OmegaConf.to_yaml(cfg), "best_state": lm.state_dict(), "version": "1.3.0",
                "exported": True}, out_dir / "state_dict.bin")

    if not kind.startswith("stereo"):
        bands = {"sample_rate": 32000, "n_bands": n_bands}
        for band in range(n_bands):
            band_cfg = OmegaConf.create(mbd_config())
            unet = builders.get_diffusion_model(band_cfg)
            processor = builders.get_processor(band_cfg.processor, sample_rate=32000)
            bands[band] = {"cfg": OmegaConf.to_yaml(band_cfg), "model_state": unet.state_dict(),
                           "processor_state": processor.state_dict()}
        torch.save(bands, out_dir / MBD_FILENAME)

    (out_dir / "README.md").write_text(
        f"# Demo checkpoint ({kind})\n\n{NOISE_NOTICE}\n\nBuilt by `python -m weights.demo --kind {kind}` "
        f"(seed {seed}).\n")
    (out_dir / "demo.json").write_text(json.dumps(
        {"notice": NOISE_NOTICE, "kind": kind, "lm_dim": lm_dim, "lm_layers": lm_layers, "lm_heads": lm_heads,
         "seed": seed}))
    logger.info("%s demo checkpoint written to %s (%s)", kind, out_dir, NOISE_NOTICE)
    return out_dir


def ensure_default_checkpoint() -> Path:
    """The default checkpoint, building the demo when there is none (an image built from a fresh clone has no
    checkpoint: it starts with the random-weight demo, says so, and makes noise until a real one is given)."""
    from weights import default_checkpoint

    path = default_checkpoint()
    if not path.exists() and path == DEMO_DIR:
        logger.warning("No checkpoint in weights/ and no COG_WEIGHTS: building the random-weight demo checkpoint. "
                       "%s Fetch a real one (python -m weights.fetch) before `cog build`, or set COG_WEIGHTS.",
                       NOISE_NOTICE)
        build(DEMO_DIR)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kind", choices=KINDS, default="mono")
    parser.add_argument("--out", type=Path, default=DEMO_DIR)
    parser.add_argument("--lm-dim", type=int, default=32)
    parser.add_argument("--lm-layers", type=int, default=2)
    parser.add_argument("--lm-heads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    build(args.out, args.lm_dim, args.lm_layers, args.lm_heads, seed=args.seed, kind=args.kind)


if __name__ == "__main__":
    main()

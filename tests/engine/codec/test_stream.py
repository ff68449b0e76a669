"""Streaming decode of stereo checkpoints' interleaved codes: two real channels, each equal to an offline decode.

The codec is musicgen's EnCodec layout (tiny convolutions, random weights) wrapped for stereo by audiocraft's
InterleaveStereoCompressionModel, with and without musicgen's 2-layer LSTM, whose memory the 25-frame left
context has to cover."""

import logging

import pytest
import torch

from engine.codec.stream import StreamingCodecDecoder

logger = logging.getLogger(__name__)


def _stereo_codec(lstm: int):
    from audiocraft.models import builders
    from audiocraft.models.encodec import InterleaveStereoCompressionModel
    from omegaconf import OmegaConf

    from weights.demo import codec_config

    torch.manual_seed(0)
    mono = builders.get_compression_model(OmegaConf.create(codec_config(lstm=lstm))).eval()
    return InterleaveStereoCompressionModel(mono).eval()


def _snr(reference: torch.Tensor, estimate: torch.Tensor) -> float:
    noise = (estimate - reference).pow(2).mean().clamp(min=1e-20)
    return 10 * torch.log10(reference.pow(2).mean() / noise).item()


@pytest.mark.parametrize("lstm", [0, 2])
def test_stereo_stream_equals_offline_decode_per_channel(lstm):
    codec = _stereo_codec(lstm)
    frames, chunk = 300, 50  # 6 s in 1 s pushes, as a jam session decodes
    generator = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, codec.cardinality, (codec.num_codebooks, frames), generator=generator)
    stream = StreamingCodecDecoder(codec)
    with torch.no_grad():
        pieces = [stream.push(tokens[:, start:start + chunk]) for start in range(0, frames, chunk)]
        streamed = torch.cat(pieces + [stream.flush()], dim=-1)
        offline = codec.decode(tokens[None], None)[0]
        # codebook k of channel c is row 2k + c: each channel is the mono decode of its own codes
        channels = [codec.model.decode(tokens[None, c::2], None)[0, 0] for c in range(2)]
    assert streamed.shape == offline.shape == (2, frames * stream.hop)
    snrs = [_snr(offline[c], streamed[c]) for c in range(2)]
    logger.info("stereo codec (lstm=%d) stream vs offline SNR per channel: %s dB", lstm, snrs)
    assert min(snrs) >= 30, snrs
    # SNR over 6 s hides clicks (no context at all still scores ~40 dB); the worst sample does not
    assert (streamed - offline).abs().max() <= 1e-3 * offline.abs().max()
    for c in range(2):
        assert _snr(channels[c], streamed[c]) >= 30
    assert _snr(channels[0], streamed[1]) < 30  # the channels are the left and right codes, not one twice

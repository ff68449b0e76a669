"""magenta-retry's `/generate` on MusicGen: a DAW loop continued by `bars` new bars, as one engine prediction.

The prediction continues the loop's bar-aligned context (streaming.bar.timeline.loop_context, whole codec frames ending
on the loop's end) for enough whole seconds to cover the bars; the context part is cut off, the rest resampled once to
the target rate, `intro_bars_to_drop` bars dropped and exactly round(bars * S) samples kept (S the bar length at the
target rate), so the answer starts on the downbeat after the loop and has the DAW's exact length.
A prediction has one text, so the styles are joined into one prompt (heaviest first) and their blend with the
loop is the guidance scale (streaming.bar.timeline.style_blend); live bar sessions blend the styles by weighted
guidance.
"""

import base64
import math
import tempfile
import typing as tp
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from engine.api import BatchRequest
from streaming import formats as audio
from streaming.bar.events import chunk_metadata
from streaming.bar.protocol import bar_params
from streaming.bar.source import OUTPUT_CHANNELS, BarChunk, BarParams, context_window
from streaming.bar.timeline import loop_context, loop_slice, style_blend
from streaming.jam.protocol import ProtocolError

MAX_LOOP_FILE_SECONDS = 600.0  # longer loop files are refused before decoding; only their tail is the context
PROGRESS_GENERATING = 0.9  # the prediction's share of the progress; resampling, loudness and encoding the rest


@dataclass(frozen=True)
class GenerateRequest:
    values: dict  # the form's values (streaming.bar.protocol.read_form(GenerateForm)), checked by bar_params
    intro_bars_to_drop: int
    loop: bytes
    request_id: str
    seed: tp.Optional[int] = None


def decode_loop(data: bytes) -> tuple:
    """A loop file's audio (any format ffmpeg reads) and its rate; ProtocolError when it is not audio."""
    if not data:
        raise ProtocolError("Empty file")
    try:
        piece = audio.decode_slice(data, max_file_seconds=MAX_LOOP_FILE_SECONDS)
    except audio.AudioInputError as exc:
        raise ProtocolError(f"loop_audio: {exc}") from None
    return piece.wav, piece.sample_rate


def prompt_text(params: BarParams) -> tuple[tp.Optional[str], float]:
    """One prompt for the prediction and its guidance scale."""
    styles, weights, guidance = style_blend(params.styles, params.style_weights, params.loop_weight,
                                            params.guidance_weight)
    if guidance == 0:
        return None, 0.0
    ordered = [s for _, s in sorted(zip(weights, styles, strict=True), key=lambda pair: -pair[0])]
    return ", ".join(ordered), guidance


def generate_work(engine, request: GenerateRequest, notice: tp.Optional[str] = None,
                  model: tp.Optional[str] = None) -> tp.Callable:
    """The job (streaming.jobs.table) that answers one `/generate`: returns magenta-retry's response body;
    `model`: the adapter selected (magenta-retry's /model/select)."""

    def work(ctx) -> dict:
        wav, rate = decode_loop(request.loop)
        params = bar_params(request.values, rate, bars_key="bars")  # bars_per_chunk is the request's `bars`
        described = engine.describe()
        model_rate = described["sample_rate"]
        window, _ = context_window(described)
        loop_model = audio.resample(audio.to_channels(wav, described["channels"]), rate, model_rate)
        model_clock = replace(params.clock, sample_rate=model_rate)
        context, _ = loop_context(loop_model, model_clock, window)
        bars = request.intro_bars_to_drop + params.bars_per_chunk
        duration = math.ceil(model_clock.at(bars) / model_rate + 0.1)  # whole seconds past the bars, for filters
        text, guidance = prompt_text(params)
        with tempfile.TemporaryDirectory(prefix="bar-generate-") as folder:
            path = Path(folder) / "context.wav"
            path.write_bytes(audio.wav_bytes(context, model_rate))
            result = ctx.generate(BatchRequest(prompt=text, input_audio=path, duration=duration, continuation=True,
                                               top_k=params.topk, temperature=params.temperature,
                                               classifier_free_guidance=guidance, seed=request.seed,
                                               model=model),
                                  span=(0.0, PROGRESS_GENERATING))
        ctx.stage("postprocess", PROGRESS_GENERATING)
        new = result.wav[:, window:]
        out = audio.resample(audio.to_channels(new, OUTPUT_CHANNELS), model_rate, params.target_sr)
        clock = params.clock
        start, samples = clock.at(request.intro_bars_to_drop), clock.at(params.bars_per_chunk)
        out = out[:, start:start + samples]
        if out.shape[-1] < samples:  # a filter's last few samples: never more than the 0.1 s margin above
            out = torch.nn.functional.pad(out, (0, samples - out.shape[-1]))
        ctx.stage("loudness", 0.95)
        loudness: dict = {"method": "none", "applied_gain_db": 0.0}
        if params.loudness_mode != "none":
            reference = loop_slice(audio.resample(audio.to_channels(wav, OUTPUT_CHANNELS), rate, params.target_sr), 0,
                                   samples)
            out, loudness = audio.match_loudness(reference, out, params.target_sr, params.loudness_mode,
                                                 params.headroom_db)
        ctx.stage("encode", 0.98)
        chunk = BarChunk(index=0, audio=out, sample_rate=params.target_sr, seconds=samples / params.target_sr,
                         params=params, loudness=loudness, frames=result.tokens, settings=params.settings())
        return generate_response(chunk, request, text, notice)

    return work


def generate_response(chunk: BarChunk, request: GenerateRequest, prompt: tp.Optional[str],
                      notice: tp.Optional[str]) -> dict:
    """magenta-retry's `/generate` answer: the new bars as a base64 WAV, and metadata."""
    params = chunk.params
    metadata = {**chunk_metadata(chunk, notice), "bpm": int(round(params.bpm)), "styles": list(params.styles),
                "style_weights": list(params.style_weights) or None, "loop_weight": params.loop_weight,
                "crossfade_seconds": 0.0, "prompt": prompt, "intro_bars_to_drop": request.intro_bars_to_drop}
    wav = audio.wav_bytes(chunk.audio, chunk.sample_rate)
    return {"audio_base64": base64.b64encode(wav).decode(), "metadata": metadata, "request_id": request.request_id}

"""MultiBand Diffusion in bounded pieces, seeded per prediction, so that it never holds the codec thread for long.

audiocraft's `MultiBandDiffusion.tokens_to_wav` is one call over the whole output: an EnCodec decode (the reference
for its equaliser), for each band 20 U-Net passes over the whole signal, then `re_eq`, 32 band filters over the whole
signal. On this project's CPUs a 30 s output holds the thread for about 15 s, and its noise comes from torch's
global RNG, so the same seed gave different bytes. Here the same computation is cut in two ways:
- in time: the tokens are decoded in windows of `window_frames` that overlap by `overlap_frames`, crossfaded
  linearly over the overlap; each window is exactly `tokens_to_wav` on its tokens. An output that fits in one
  window is therefore audiocraft's `tokens_to_wav` to the bit (given the same noise); a longer one differs from a
  single call, because the U-Net's GroupNorm and `re_eq` take their statistics per window instead of over the whole
  output (both are level matches, so the windows agree in level; the crossfade hides the seams).
- in work: a window is a sequence of pieces (its EnCodec decode, one U-Net pass of one band, one band filter of the
  equaliser), each one job on the codec thread, queued at BACKGROUND priority behind live sessions' decodes. Each
  piece says which kind the next one is (`SlicedDiffusion.next_label`): the deadlines (engine.runtime.deadlines)
  estimate each kind's cost apart, a U-Net pass being many times a band filter.
The noise comes from the prediction's own torch.Generator, drawn in a fixed order (window, band, step), so the same
tokens and seed give the same bytes whatever else runs. Windows start as soon as their tokens exist, so diffusion
runs while the LM still generates.
"""

import typing as tp

import torch
import torch.nn.functional as F

Piece = tp.Generator[str, None, torch.Tensor]  # each `next()` runs one piece and yields the kind of the next

N_EQ_BANDS = 32  # MultiBandDiffusion.tokens_to_wav's default n_bands for re_eq
# the kinds of its pieces on the codec thread (engine.runtime.deadlines estimates each one's cost)
DECODE, DIFFUSION, EQUALISER = "mbd decode", "mbd diffusion", "mbd equaliser"
LABELS = (DECODE, DIFFUSION, EQUALISER)


def _subsampled(schedule, model, initial: torch.Tensor, condition: torch.Tensor,
                generator: torch.Generator, then: str) -> Piece:
    """audiocraft's NoiseSchedule.generate_subsampled with its default step list, one U-Net pass per piece, its
    noise drawn from `generator` (same shapes, same order as `torch.randn_like`); `then`: the kind of the piece
    after its last pass."""
    from audiocraft.modules.diffusion_schedule import betas_from_alpha_bar

    step_list = list(range(1000))[::-50] + [0]
    alpha_bar = schedule.get_alpha_bar(step=schedule.num_steps - 1)
    alpha_bars_subsampled = (1 - schedule.betas).cumprod(dim=0)[list(reversed(step_list))].cpu()
    betas_subsampled = betas_from_alpha_bar(alpha_bars_subsampled)
    current = initial * schedule.noise_scale
    previous = current
    for idx, step in enumerate(step_list[:-1]):
        estimate = model(current, step, condition=condition).sample * schedule.noise_scale
        yield DIFFUSION if idx < len(step_list) - 2 else then
        alpha = 1 - betas_subsampled[-1 - idx]
        previous = (current - (1 - alpha) / (1 - alpha_bar).sqrt() * estimate) / alpha.sqrt()
        previous_alpha_bar = schedule.get_alpha_bar(step_list[idx + 1])
        if step == step_list[-2]:
            sigma2 = 0
            previous_alpha_bar = torch.tensor(1.0)
        else:
            sigma2 = (1 - previous_alpha_bar) / (1 - alpha_bar) * (1 - alpha)
        if sigma2 > 0:
            noise = torch.randn(previous.shape, generator=generator, dtype=previous.dtype, device=previous.device)
            previous += sigma2 ** 0.5 * noise * schedule.noise_scale
        if schedule.clip:
            previous = previous.clamp(-schedule.clip, schedule.clip)
        current = previous
        alpha_bar = previous_alpha_bar
        if step == 0:
            previous *= schedule.rescale
    return schedule.sample_processor.return_sample(previous)


def _lowpass(bank, x: torch.Tensor, index: int) -> torch.Tensor:
    """Row `index` of julius' LowPassFilters bank applied to x [..., T]: the bank's forward for one cutoff (same
    padding, same FFT convolution), equal to the bank's output row to the bit."""
    from julius.fftconv import fft_conv1d

    shape = list(x.shape)
    padded = F.pad(x.reshape(-1, 1, shape[-1]), (bank.half_size, bank.half_size), mode="replicate")
    conv = fft_conv1d if bank.fft else F.conv1d
    out = conv(padded, bank.filters[index:index + 1], stride=bank.stride)
    return out.reshape(shape[:-1] + [out.shape[-1]])


def _re_eq(wav: torch.Tensor, ref: torch.Tensor, sample_rate: int, n_bands: int = N_EQ_BANDS,
           strictness: float = 1) -> Piece:
    """MultiBandDiffusion.re_eq, one band filter (of both signals) per piece; the bands are the differences of
    successive low passes, accumulated in re_eq's order, so the result is re_eq's to the bit."""
    import julius

    bank = julius.SplitBands(n_bands=n_bands, sample_rate=sample_rate).to(wav.device).lowpass
    out = torch.zeros_like(ref)
    low = low_ref = None
    for index in range(len(bank.cutoffs) + 1):
        if index < len(bank.cutoffs):
            high, high_ref = _lowpass(bank, wav, index), _lowpass(bank, ref, index)
            yield EQUALISER
        else:  # the last band is whatever the last low pass left
            high, high_ref = wav, ref
        band, band_ref = (high, high_ref) if low is None else (high - low, high_ref - low_ref)
        out += band * (band_ref.std() / band.std()) ** strictness
        low, low_ref = high, high_ref
    return out


def _window(mbd, tokens: torch.Tensor, generator: torch.Generator) -> Piece:
    """MultiBandDiffusion.tokens_to_wav on tokens [1, K, n], in pieces."""
    wav_encodec = mbd.codec_model.decode(tokens)
    condition = mbd.get_emb(tokens)
    yield DIFFUSION
    out = torch.zeros(wav_encodec.size(), device=wav_encodec.device)
    for band, process in enumerate(mbd.DPs):
        initial = torch.randn(out.shape, generator=generator, dtype=out.dtype, device=out.device)
        then = DIFFUSION if band < len(mbd.DPs) - 1 else EQUALISER
        out += yield from _subsampled(process.schedule, process.model, initial, condition, generator, then)
    return (yield from _re_eq(out, wav_encodec, mbd.codec_model.sample_rate))


class SlicedDiffusion:
    """One prediction's MultiBand Diffusion decode: frames go in as they are generated, `run_once` does one
    bounded piece (codec thread only), `audio()` gives the result once `done`."""

    def __init__(self, mbd, seed: int, window_frames: int, overlap_frames: int) -> None:
        if not 0 <= overlap_frames < window_frames:
            raise ValueError("the MBD overlap must be shorter than its window")
        self.mbd = mbd
        self.window_frames = window_frames
        self.overlap_frames = overlap_frames
        self.hop = int(round(mbd.codec_model.sample_rate / mbd.codec_model.frame_rate))
        self.generator = torch.Generator(device=mbd.device)
        self.generator.manual_seed(seed)
        self._tokens: tp.Optional[torch.Tensor] = None  # [K, n] every frame received
        self._ended = False
        self._next_start = 0  # first frame of the next window
        self._window: tp.Optional[Piece] = None
        self._next_label = DECODE  # the kind of the window's next piece
        self._window_end = 0
        self._audio: list[torch.Tensor] = []  # final audio
        self._tail: tp.Optional[torch.Tensor] = None  # the last window's overlap, to be crossfaded with the next

    def push(self, frames: torch.Tensor, last: bool) -> None:
        """Frames [K, n] that follow those already pushed; `last` when no more will come."""
        self._tokens = frames if self._tokens is None else torch.cat([self._tokens, frames], dim=-1)
        self._ended = self._ended or last

    @property
    def received(self) -> int:
        return 0 if self._tokens is None else self._tokens.shape[-1]

    def ready(self) -> bool:
        """Whether a piece can run now (a window in progress, or the tokens of the next one are all here)."""
        return self._window is not None or self._next_window_end() is not None

    @property
    def done(self) -> bool:
        return self._ended and self._window is None and self._next_window_end() is None

    def _next_window_end(self) -> tp.Optional[int]:
        """The end frame of the next window if its tokens are all here, else None (also when there is none)."""
        if self._next_start > 0 and self._window_end >= self.received and self._ended:
            return None  # the last window reached the end of the tokens
        end = self._next_start + self.window_frames
        if self.received >= end:
            return end
        if self._ended and self.received > self._next_start:
            return self.received
        return None

    @property
    def next_label(self) -> str:
        """The kind of the piece `run_once` runs next (a new window starts with its decode)."""
        return DECODE if self._window is None else self._next_label

    def run_once(self) -> None:
        """One piece: a window's decode, one U-Net pass of one band, or one band filter of its equaliser."""
        if self._window is None:
            end = self._next_window_end()
            assert end is not None, "run_once without a piece ready"
            tokens = self._tokens[None, :, self._next_start:end].to(self.mbd.device)
            self._window, self._window_end = _window(self.mbd, tokens, self.generator), end
            self._next_start = end - self.overlap_frames
        try:
            self._next_label = next(self._window)
        except StopIteration as finished:
            self._window = None
            self._place(finished.value[0].float().cpu())

    def _place(self, wav: torch.Tensor) -> None:
        """Crossfades a finished window into the output; holds back its overlap for the next window."""
        overlap = self.overlap_frames * self.hop
        if self._tail is not None:
            fade = torch.linspace(0.0, 1.0, overlap + 2)[1:-1]
            head = wav[:, :overlap]
            self._audio.append(self._tail * (1 - fade[:head.shape[-1]]) + head * fade[:head.shape[-1]])
            wav = wav[:, overlap:]
        self._audio.append(wav[:, :-overlap] if overlap else wav)
        self._tail = wav[:, -overlap:] if overlap else None

    def audio(self) -> torch.Tensor:
        """The decoded audio [C, samples] (once `done`)."""
        assert self.done, "MBD decode not finished"
        return torch.cat(self._audio + ([self._tail] if self._tail is not None else []), dim=-1)

    def take_final(self) -> torch.Tensor:
        """The audio made final since the last call (a finished window, less the overlap still to be crossfaded;
        everything once `done`), for callers that pass the audio on as it comes; use it or `audio()`, not both."""
        parts, self._audio = self._audio, []
        if self.done and self._tail is not None:
            parts, self._tail = parts + [self._tail], None
        return torch.cat(parts, dim=-1) if parts else torch.zeros(self.mbd.codec_model.channels, 0)

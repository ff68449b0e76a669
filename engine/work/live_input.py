"""A jam session's live input: the player's audio, mixed into the model's context so the next steps continue from it.

This is Magenta RealTime's audio injection (its Audio Injection colab, `AudioInjectionStreamer.generate`) on
MusicGen's token stream. There, before each chunk is generated, the input of the last chunk's span (aligned to the
output by the round-trip latency) is mixed with the model's own output for that span (scaled by `model_feedback`),
encoded by the codec, and the tokens replace the last frames of the context, so the next chunk continues from what
was played. Here:

- `LiveInput.place` (any thread) takes a piece of the player's audio with its position on the session's output
  timeline (the stream's samples from 0, as `Chunk.start_seconds` counts them: what the client heard), and keeps it
  until the session has produced (and decoded) that span. Pieces are resampled to the model's rate and channels
  when they are mixed in, each run of contiguous pieces as one (a transport's 20 ms frames, resampled one by one,
  would click at every edge). Without a
  position, a piece continues the one before it; the first one (or one after a pause) ends where the session's
  produced audio ends, as the colab mixes its latest input into the latest context.
- `LiveInput.record` (codec thread) keeps the last `HISTORY_SECONDS` of the session's decoded output.
- `LiveInput.prepare` (codec thread, when the next chunk is asked for and input is waiting) mixes the waiting pieces
  with the recorded output over their whole frames: `mix` adds `input_gain` x input to the output (the colab's
  `model_feedback` = 1), `replace` puts it in place of the output where the player played (feedback 0); then encodes
  the mix with a few frames of the output before it as the encoder's left context, and gives the tokens of the span.
- The session (engine.work.session) then rewrites those frames of its stream's context on the LM thread
  (engine.runtime.scheduler.rewrite_context), and the chunk it was asked for is generated from there on.

Transports whose media carry no time (WebRTC's microphone track, FastRTC's WebSocket media frames) place their
pieces with one `InputClock` each: a piece ends where the listener is as it arrives (what the player played along to),
the pieces after it follow on (the cursor above), and one is placed again when they drift `DRIFT_SECONDS` apart.

Bounds, each a warning in the log (at most once per `WARN_EVERY_SECONDS` with the count since: `DropTally`, which
transports use to tell their clients too) and an `InputReceipt.dropped` for the caller, never an unbounded queue: a
piece longer than engine.params.MAX_INPUT_SECONDS is refused (ValueError); pieces beyond what a player sends in real
time (a budget refilled by wall-clock time, `BURST_SECONDS` deep), placed more than `AHEAD_SECONDS` past the produced
audio, older than the recorded output, or beyond `MAX_PENDING_SECONDS` waiting are dropped. Silence in `mix` mode (a
muted microphone's zeros) is nothing to add: it is not mixed in. A session that gets no input is untouched: nothing
is mixed, encoded or rewritten, so its output is the
same to the byte as without this module.
"""

import logging
import math
import threading
import time
import typing as tp
from dataclasses import dataclass

import numpy as np
import torch

from engine.params import MAX_INPUT_SECONDS, InputSampleRate, checked

logger = logging.getLogger(__name__)

HISTORY_SECONDS = 8.0  # the session's own output kept to mix input over (and the oldest span input may name)
AHEAD_SECONDS = 2.0  # input may be placed this far past the produced audio; it waits for the session to get there
MAX_PENDING_SECONDS = 8.0  # input waiting for its span to be produced
BURST_SECONDS = MAX_INPUT_SECONDS + 1.0  # the real-time budget's depth: one whole piece and some jitter
ENCODE_MARGIN_FRAMES = 4  # the output before the span, encoded with it as the encoder's left context
WARN_EVERY_SECONDS = 5.0
MIX_EVERY_SECONDS = 0.2  # input that comes while a chunk is made is mixed in at once, at most this often
# a transport's pieces follow on from the one before while it lands within this of where the listener is; beyond it
# (the player paused, the stream restarted, resumed or held) the next is placed where the listener is (InputClock)
DRIFT_SECONDS = 1.0


@dataclass(frozen=True)
class InputReceipt:
    """What became of a piece of input: where it lies on the session's output timeline, and why it was dropped
    (None: it waits to be mixed in)."""

    start_seconds: float
    seconds: float
    dropped: tp.Optional[str] = None


@dataclass(frozen=True)
class Injection:
    """Tokens [K, n] for frames [first_frame, first_frame + n) of the session's timeline (frame 0 = sample 0)."""

    first_frame: int
    tokens: torch.Tensor
    pieces: int  # the pieces of input mixed in


class DropTally:
    """Dropped input is told (the engine's log, a transport's warning to its client) at most once per
    WARN_EVERY_SECONDS, with how many pieces were dropped since the last telling: never once per piece."""

    def __init__(self) -> None:
        self.count = 0  # dropped since the last telling
        self.told_at = -math.inf

    def dropped(self, now: float) -> tp.Optional[int]:
        """Counts one piece (`now`: time.monotonic()); how many to tell now (the count starts again), or None when
        the last telling was less than WARN_EVERY_SECONDS ago."""
        self.count += 1
        if now - self.told_at < WARN_EVERY_SECONDS:
            return None
        count, self.count, self.told_at = self.count, 0, now
        return count


class InputClock:
    """Where a transport puts each piece of the player's input on the session's timeline when the pieces carry no
    time of their own (WebRTC's microphone track, FastRTC's WebSocket media frames). The first piece is taken to end
    where the listener is as it arrives (`heard_at`: the music the player played along to; what the network and the
    client buffered is not counted); the pieces after it follow on without a gap (None: the session's cursor, so
    they are one contiguous run when mixed in), until one lands more than DRIFT_SECONDS from where the listener was,
    or is dropped or refused, and the next is placed again. Pure: the transport asks it, then tells it the receipt."""

    def __init__(self) -> None:
        self.anchor = True  # place the next piece where the listener is
        self.estimate: tp.Optional[float] = None  # where the listener put the last piece placed

    def place(self, heard_at: tp.Optional[float], seconds: float) -> tp.Optional[float]:
        """Seconds on the timeline where a piece of `seconds` starts, or None: after the last piece (or, before the
        listener heard anything, where the session's produced audio ends: LiveSession.play_input's own rule). Not
        None exactly when the piece is placed afresh (a transport tells its client where such a one landed)."""
        self.estimate = None if heard_at is None else max(0.0, heard_at - seconds)
        return self.estimate if self.anchor else None

    def landed(self, receipt: tp.Optional[InputReceipt]) -> None:
        """What the session did with the piece `place` placed last (None: it never got there: no session played,
        or it was refused)."""
        self.anchor = receipt is None or receipt.dropped is not None or self.estimate is None or \
            abs(receipt.start_seconds - self.estimate) > DRIFT_SECONDS


def as_wav(samples: np.ndarray, sample_rate: int) -> torch.Tensor:
    """A piece of input as float32 [channels, n], checked: 1 or 2 channels, finite, not empty, at most
    MAX_INPUT_SECONDS long (ValueError names what is wrong)."""
    checked(InputSampleRate, sample_rate, "sample_rate")
    array = np.asarray(samples)
    if not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"audio must be float samples in [-1, 1], got {array.dtype}")
    if array.ndim == 1:
        array = array[None]
    if array.ndim != 2 or array.shape[0] not in (1, 2):
        raise ValueError(f"audio must be [n] or [channels, n] with 1 or 2 channels, got shape {samples.shape}")
    if array.shape[1] == 0:
        raise ValueError("audio is empty")
    if array.shape[1] > MAX_INPUT_SECONDS * sample_rate:
        raise ValueError(f"audio is {array.shape[1] / sample_rate:.2f} s long; one piece of input is at most "
                         f"{MAX_INPUT_SECONDS:g} s")
    if not np.isfinite(array).all():
        raise ValueError("audio has samples that are not finite numbers")
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


class LiveInput:
    """One session's input: pieces waiting on the output timeline (in the model's samples), and its recent output."""

    def __init__(self, sample_rate: int, channels: int, hop: int) -> None:
        self.sample_rate = sample_rate
        self.channels = channels
        self.hop = hop
        self._lock = threading.Lock()
        # (start, length) in the model's samples, and the audio [C, n] at its own rate, in the order they came
        self._pending: list[tuple[int, int, torch.Tensor, int]] = []
        self._pending_samples = 0
        self._cursor: tp.Optional[int] = None  # the end of the last piece: where an unplaced piece goes
        self._credit = BURST_SECONDS  # seconds of input the real-time budget allows now
        self._refilled = time.monotonic()
        self._drops = DropTally()
        self._mixing = False  # a mix for input that came while a chunk was made is under way
        self._mixed_at = -math.inf
        # codec thread
        self._history = torch.zeros(channels, 0)
        self._history_start = 0

    # -- any thread ---------------------------------------------------------------------------------------------
    def place(self, samples: np.ndarray, sample_rate: int, at: tp.Optional[float], produced: int) -> InputReceipt:
        """Keeps a piece of input at `at` seconds on the output timeline (None: after the last piece, or ending at
        `produced`, the samples the session has produced so far); see the module's docstring for the bounds."""
        wav = as_wav(samples, sample_rate)
        if at is not None and not (math.isfinite(at) and at >= 0):
            raise ValueError(f"time must be a finite number of seconds >= 0, got {at}")
        length = int(round(wav.shape[-1] * self.sample_rate / sample_rate))
        with self._lock:
            lag = int((HISTORY_SECONDS - MAX_INPUT_SECONDS) * self.sample_rate)
            if at is not None:
                start = int(round(at * self.sample_rate))
            elif self._cursor is not None and self._cursor >= produced - lag:
                start = self._cursor
            else:
                start = max(0, produced - length)
            why = self._refusal(start, length, produced)
            if why is not None:
                return self._drop(start, length, why)
            self._pending.append((start, length, wav, sample_rate))
            self._pending_samples += length
            self._cursor = start + length
        return InputReceipt(start_seconds=start / self.sample_rate, seconds=length / self.sample_rate)

    def _refusal(self, start: int, length: int, produced: int) -> tp.Optional[str]:
        now = time.monotonic()
        self._credit = min(BURST_SECONDS, self._credit + now - self._refilled)
        self._refilled = now
        seconds = length / self.sample_rate
        if seconds > self._credit:
            return "input comes faster than real time"
        if start + length > produced + AHEAD_SECONDS * self.sample_rate:
            return f"input is more than {AHEAD_SECONDS:g} s ahead of the session's audio"
        if start + length <= produced - HISTORY_SECONDS * self.sample_rate:
            return f"input is more than {HISTORY_SECONDS:g} s behind the session's audio"
        if self._pending_samples + length > MAX_PENDING_SECONDS * self.sample_rate:
            return f"more than {MAX_PENDING_SECONDS:g} s of input is waiting"
        self._credit -= seconds
        return None

    def _drop(self, start: int, length: int, why: str) -> InputReceipt:
        count = self._drops.dropped(time.monotonic())
        if count is not None:
            logger.warning("live input dropped (%d piece(s) since the last warning): %s", count, why)
        return InputReceipt(start_seconds=start / self.sample_rate, seconds=length / self.sample_rate, dropped=why)

    def waiting(self) -> bool:
        """Whether any input waits to be mixed in (a snapshot: the session checks it before each chunk)."""
        return bool(self._pending)

    def start_mixing(self) -> bool:
        """Whether input that just came may be mixed in now, before the next chunk is asked for (one such mix at a
        time, at most every MIX_EVERY_SECONDS: each one refeeds the context after it); then `done_mixing`."""
        with self._lock:
            if self._mixing or time.monotonic() - self._mixed_at < MIX_EVERY_SECONDS:
                return False
            self._mixing, self._mixed_at = True, time.monotonic()
            return True

    def done_mixing(self) -> None:
        self._mixing = False

    def forget(self) -> None:
        """Drops the waiting input and the cursor (the session restarted: its timeline starts again)."""
        with self._lock:
            self._pending, self._pending_samples, self._cursor = [], 0, None

    # -- codec thread -------------------------------------------------------------------------------------------
    def record(self, start: int, audio: torch.Tensor) -> None:
        """The session's output [C, n] from timeline sample `start` (its chunks' new parts, in order)."""
        if start != self._history_start + self._history.shape[-1]:  # a restart: the timeline began again
            self._history, self._history_start = audio[:, :0], start
        self._history = torch.cat([self._history, audio], dim=-1)
        excess = self._history.shape[-1] - int(HISTORY_SECONDS * self.sample_rate)
        if excess > 0:
            self._history = self._history[:, excess:]
            self._history_start += excess

    def prepare(self, gain: float, mode: str, encode: tp.Callable[[torch.Tensor, int], torch.Tensor]
                ) -> tp.Optional[Injection]:
        """The waiting pieces whose span the session has produced, mixed over its output and encoded (`encode`:
        audio [C, T] at the model's rate -> tokens [K, frames]); None when no piece is ready yet."""
        first = -(-self._history_start // self.hop)  # whole frames of the recorded output
        last = (self._history_start + self._history.shape[-1]) // self.hop
        with self._lock:
            ready = [piece for piece in self._pending if piece[0] + piece[1] <= last * self.hop]
            if not ready:
                return None
            self._pending = [piece for piece in self._pending if piece[0] + piece[1] > last * self.hop]
            self._pending_samples = sum(piece[1] for piece in self._pending)
        if mode == "mix":  # silence adds nothing (a muted microphone sends zeros): the context stays the model's own
            ready = [piece for piece in ready if bool(piece[2].abs().max() > 0)]
            if not ready:
                return None
        ready = self._resampled(ready)
        f0 = max(first, min(s for s, _ in ready) // self.hop)
        f1 = min(last, -(-max(s + a.shape[-1] for s, a in ready) // self.hop))
        if f1 <= f0:  # every piece was older than the recorded output
            return None
        lo, hi = f0 * self.hop, f1 * self.hop
        output = self._history[:, lo - self._history_start: hi - self._history_start]
        played = torch.zeros_like(output)
        where = torch.zeros(1, output.shape[-1], dtype=torch.bool)
        for start, audio in ready:
            a, b = max(start, lo), min(start + audio.shape[-1], hi)
            if b > a:
                played[:, a - lo: b - lo] += audio[:, a - start: b - start]
                where[:, a - lo: b - lo] = True
        mixed = output + gain * played if mode == "mix" else torch.where(where, gain * played, output)
        margin = min(ENCODE_MARGIN_FRAMES, f0 - first)
        left = self._history[:, lo - margin * self.hop - self._history_start: lo - self._history_start]
        tokens = encode(torch.cat([left, mixed.clamp(-1.0, 1.0)], dim=-1), self.sample_rate)
        return Injection(first_frame=f0, tokens=tokens[:, margin: margin + f1 - f0], pieces=len(ready))

    def _resampled(self, pieces: list[tuple[int, int, torch.Tensor, int]]) -> list[tuple[int, torch.Tensor]]:
        """Runs of contiguous pieces (each starting where the one before ended, at the same rate and channels),
        each resampled to the model's rate and channels as one: (start, audio [C, n])."""
        from audiocraft.data.audio_utils import convert_audio

        runs: list[tuple[int, int, list[torch.Tensor], int]] = []
        for start, length, wav, rate in pieces:
            if runs and runs[-1][0] + runs[-1][1] == start and runs[-1][3] == rate and \
                    runs[-1][2][-1].shape[0] == wav.shape[0]:
                run = runs[-1]
                runs[-1] = (run[0], run[1] + length, run[2] + [wav], rate)
            else:
                runs.append((start, length, [wav], rate))
        return [(start, convert_audio(torch.cat(wavs, dim=-1), rate, self.sample_rate, self.channels))
                for start, _, wavs, rate in runs]

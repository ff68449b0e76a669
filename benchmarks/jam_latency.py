"""Control latency as a listener hears it, measured from outside through a real sidecar and real clients.

For each transport, a reference session plays with a seed and never changes; then sessions with the same seed
send an `update` (new styles) while they play. The first sample where a session's audio parts from the reference
is where the change took effect; its play time in the client's schedule minus the send time is the latency heard:
- `/ws/jam`, pace realtime, 2 s and 0.48 s chunks, played as the seed's browser client schedules chunks (each
  chunk once it is whole, at nextTime, 0.12 s after arrival when the client ran dry: that counts as an underrun);
- WebRTC (the update on the "text" data channel; heard when the Opus frame carrying it arrives), and one long
  play counting the server's underrun warnings and the client's silent frames;
- Lyria through the google-genai SDK (TLS), a client that plays everything it receives, in order.

    .venv/bin/python -m benchmarks.jam_latency [--weights PATH] [--runs 3] [--webrtc-play-seconds 60]

Uses the default checkpoint (the demo when nothing was fetched: its audio is noise). Prints one JSON object.
"""

import argparse
import asyncio
import base64
import io
import json
import logging
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from websockets.sync.client import connect

from benchmarks.engine_bench import cpu_description
from engine.config import EngineConfig
from engine.core import Engine
from streaming.app.config import ServerConfig
from streaming.app.server import RunningServer
from tests.support.seed_browser import BrowserSchedule
from tests.support.tls import self_signed
from tests.support.webrtc_client import JamClient, event, loopback_only

SEED = 11
STYLES, CHANGED = "jazz, hiphop", "ambient"
PHASES = (0.2, 0.5, 0.8)  # where in the playing chunk (client schedule) each run sends its update


def first_difference(reference: np.ndarray, audio: np.ndarray) -> int:
    """The first sample index (frames x channels arrays) where the two differ; -1 when the overlap is equal."""
    n = min(len(reference), len(audio))
    differs = np.nonzero((reference[:n] != audio[:n]).reshape(n, -1).any(axis=1))[0]
    return int(differs[0]) if len(differs) else -1


def wav_samples(message: dict) -> tuple[np.ndarray, int]:
    """A /ws/jam chunk's new audio (without its overlap tail) as int16 [samples, channels]."""
    data, rate = sf.read(io.BytesIO(base64.b64decode(message["audio_base64"])), dtype="int16", always_2d=True)
    return data[: int(round(message["metadata"]["chunk_seconds"] * rate))], rate


# -- /ws/jam --------------------------------------------------------------------------------------------------
def jam_start(frames: int, pace: str) -> dict:
    return {"type": "start", "mode": "rt", "params": {"styles": STYLES, "pace": pace, "max_decode_frames": frames,
                                                      "seed": SEED}}


def jam_reference(port: int, frames: int, count: int) -> np.ndarray:
    with connect(f"ws://127.0.0.1:{port}/ws/jam", max_size=None) as ws:
        ws.send(json.dumps(jam_start(frames, "asap")))
        parts = []
        while len(parts) < count:
            message = json.loads(ws.recv(timeout=120))
            if message["type"] == "chunk":
                parts.append(wav_samples(message)[0])
    return np.concatenate(parts)


def jam_run(port: int, frames: int, reference: np.ndarray, phase: float, warm_chunks: int) -> dict:
    """Plays as the seed's browser client does; sends the update `phase` into chunk `warm_chunks`'s play."""
    chunk_seconds = frames / 25
    with connect(f"ws://127.0.0.1:{port}/ws/jam", max_size=None) as ws:
        ws.send(json.dumps(jam_start(frames, "realtime")))
        parts, starts, browser = [], [], BrowserSchedule()
        sent = ack = send_at = None
        while len(parts) * chunk_seconds < len(reference) / 32000 - chunk_seconds:
            timeout = 120 if send_at is None or sent is not None else max(0.0, send_at - time.monotonic())
            try:
                message = json.loads(ws.recv(timeout=timeout))
            except TimeoutError:
                sent = time.monotonic()
                ws.send(json.dumps({"type": "update", "styles": CHANGED}))
                continue
            if message.get("status") == "updated":
                ack = {k: message[k] for k in ("applies_from_chunk", "offset_seconds", "heard_in_seconds")}
            if message["type"] != "chunk":
                continue
            audio, rate = wav_samples(message)
            starts.append(browser.arrive(time.monotonic(), message["metadata"]["total_seconds"])[0])
            parts.append(audio)
            if len(parts) == 1:
                send_at = starts[0] + (warm_chunks + phase) * chunk_seconds
    audio = np.concatenate(parts)
    first = first_difference(reference, audio)
    if first < 0 or sent is None:
        return {"error": "the streams never parted", "underruns": len(browser.gaps)}
    samples = int(round(chunk_seconds * rate))
    heard = starts[first // samples] + (first % samples) / rate
    return {"heard_after_seconds": round(heard - sent, 3), "first_different_chunk": first // samples,
            "ack": ack, "underruns": len(browser.gaps), "phase": phase}


# -- WebRTC ---------------------------------------------------------------------------------------------------
async def webrtc_play(base: str, seconds: float, update_after: float | None = None) -> dict:
    """Frames (int16 arrays) with their arrival times; with `update_after`, sends the update that long after the
    first frame."""
    client = JamClient(base)
    track = await client.connect({"styles": STYLES, "seed": SEED})
    frames, arrivals, sent = [], [], None
    while len(frames) * 0.02 < seconds:
        frame = await asyncio.wait_for(track.recv(), 10)
        arrivals.append(time.monotonic())
        frames.append(frame.to_ndarray().reshape(-1, 2).copy())
        if update_after is not None and sent is None and arrivals[-1] - arrivals[0] >= update_after:
            sent = time.monotonic()
            client.send({"type": "update", "styles": CHANGED})
    messages = []
    while not client.messages.empty():
        messages.append(client.messages.get_nowait())
    client.send({"type": "stop"})
    await client.close()
    ack = next((m["data"] for m in messages if event("updated")(m)), None)
    return {"frames": frames, "arrivals": arrivals, "sent": sent, "ack": ack,
            "warnings": sum(m["type"] == "warning" for m in messages)}


def webrtc_latency(base: str, runs: int) -> dict:
    reference = asyncio.run(webrtc_play(base, 7.0))
    ref_audio = np.concatenate(reference["frames"])
    results = []
    for phase in PHASES[:runs]:
        time.sleep(0.5)  # the previous peer gives its slot back
        played = asyncio.run(webrtc_play(base, 6.0, update_after=3.0 + phase * 0.32))
        first = first_difference(ref_audio, np.concatenate(played["frames"]))
        if first < 0:
            results.append({"error": "the streams never parted"})
            continue
        heard = played["arrivals"][first // 960]
        ack = played["ack"] or {}
        results.append({"heard_after_seconds": round(heard - played["sent"], 3),
                        "ack_heard_in_seconds": ack.get("heard_in_seconds"), "warnings": played["warnings"]})
    return summary(results)


def webrtc_long_play(base: str, seconds: float) -> dict:
    time.sleep(0.5)
    played = asyncio.run(webrtc_play(base, seconds))
    silent = sum(int(np.abs(f).max() < 4) for f in played["frames"])
    return {"played_seconds": round(len(played["frames"]) * 0.02, 2), "underrun_warnings": played["warnings"],
            "client_silent_frames": silent}


# -- Lyria ----------------------------------------------------------------------------------------------------
async def lyria_play(port: int, cert: Path, chunks: int, update_after: float | None = None) -> dict:
    """Plays every chunk in order as it arrives (a chunk that comes late starts when it comes: an underrun, kept
    as (chunk index, seconds late))."""
    from google import genai
    from google.genai import types

    client = genai.Client(api_key="bench", http_options={"base_url": f"https://127.0.0.1:{port}",
                                                         "api_version": "v1alpha"})
    parts, starts, next_time, underruns, sent = [], [], 0.0, [], []
    tasks = []
    async with client.aio.live.music.connect(model="models/lyria-realtime-exp") as session:
        async def steer(at: float) -> None:
            await asyncio.sleep(max(0.0, at - time.monotonic()))
            sent.append(time.monotonic())
            await session.set_weighted_prompts(prompts=[types.WeightedPrompt(text=CHANGED, weight=1.0)])

        await session.set_weighted_prompts(prompts=[types.WeightedPrompt(text=STYLES, weight=1.0)])
        await session.set_music_generation_config(config=types.LiveMusicGenerationConfig(seed=SEED))
        await session.play()
        async for message in session.receive():
            if not (message.server_content and message.server_content.audio_chunks):
                continue
            now = time.monotonic()
            pcm = np.frombuffer(message.server_content.audio_chunks[0].data, dtype="<i2").reshape(-1, 2)
            if next_time < now:
                if parts:
                    underruns.append((len(parts), round(now - next_time, 3)))
                next_time = now
            starts.append(next_time)
            parts.append(pcm)
            next_time += len(pcm) / 48000
            if update_after is not None and not tasks:
                tasks.append(asyncio.create_task(steer(starts[0] + update_after)))
            if len(parts) >= chunks:
                break
        await session.stop()
    return {"parts": parts, "starts": starts, "sent": sent[0] if sent else None, "underruns": underruns}


def lyria_latency(port: int, cert: Path, runs: int) -> dict:
    reference = asyncio.run(lyria_play(port, cert, 4))
    ref_audio = np.concatenate(reference["parts"])
    results = []
    for phase in PHASES[:runs]:
        played = asyncio.run(lyria_play(port, cert, 4, update_after=1.0 + phase * 2.0))
        first = first_difference(ref_audio, np.concatenate(played["parts"]))
        if first < 0:
            results.append({"error": "the streams never parted"})
            continue
        samples = len(played["parts"][0])
        heard = played["starts"][first // samples] + (first % samples) / 48000
        results.append({"heard_after_seconds": round(heard - played["sent"], 3), "underruns": played["underruns"]})
    return summary(results)


def summary(results: list[dict]) -> dict:
    heard = [r["heard_after_seconds"] for r in results if "heard_after_seconds" in r]
    return {"heard_after_seconds_median": statistics.median(heard) if heard else None,
            "heard_after_seconds_max": max(heard) if heard else None, "runs": results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default=None)
    parser.add_argument("--runs", type=int, default=3, help="updates measured per transport (at most 3)")
    parser.add_argument("--webrtc-play-seconds", type=float, default=60.0)
    parser.add_argument("--only", default="jam,webrtc,lyria")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    patch = pytest.MonkeyPatch()
    loopback_only(patch)
    started = time.monotonic()
    engine = Engine.load(args.weights, config=EngineConfig(max_sessions=2))
    results: dict = {"machine": cpu_description(), "model": engine.describe(),
                     "command": "python -m benchmarks.jam_latency " + " ".join(f"--{k.replace('_', '-')} {v}"
                                                                               for k, v in vars(args).items() if v)}
    with tempfile.TemporaryDirectory() as tls:
        cert, key = self_signed(Path(tls))
        patch.setenv("SSL_CERT_FILE", str(cert))  # the SDK always speaks wss
        plain = RunningServer(engine, ServerConfig(host="127.0.0.1", port=0)).start()
        secure = RunningServer(engine, ServerConfig(host="127.0.0.1", port=0, ssl_certfile=str(cert),
                                                    ssl_keyfile=str(key))).start()
        try:
            if "jam" in args.only:
                for frames, warm in ((50, 2), (12, 4)):
                    reference = jam_reference(plain.port, frames, count=warm + 6)
                    runs = [jam_run(plain.port, frames, reference, phase, warm) for phase in PHASES[: args.runs]]
                    results[f"ws_jam_realtime_{frames / 25:g}s_chunks"] = summary(runs)
            if "webrtc" in args.only:
                base = f"http://127.0.0.1:{plain.port}"
                results["webrtc"] = webrtc_latency(base, args.runs)
                results["webrtc_long_play"] = webrtc_long_play(base, args.webrtc_play_seconds)
            if "lyria" in args.only:
                results["lyria_google_genai"] = lyria_latency(secure.port, cert, args.runs)
        finally:
            plain.stop()
            secure.stop()
            engine.close()
            patch.undo()
    results["wall_seconds"] = round(time.monotonic() - started, 1)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()

"""Bar mode's server messages (magenta-retry's `/ws/jam` `mode: "bar"` events and its HTTP answers), as its
`app.py` builds them: chunks with their metadata, `started`, `status`. streaming.bar.protocol reads the client's.
"""

import base64
import typing as tp

from streaming import formats as audio
from streaming.bar.source import BarChunk
from streaming.jam.events import encode


def chunk_metadata(chunk: BarChunk, notice: tp.Optional[str] = None) -> dict:
    """magenta-retry's chunk metadata, stating what was sent."""
    params = chunk.params
    clock = params.clock
    metadata = {"bpm": float(params.bpm), "bars": params.bars_per_chunk, "beats_per_bar": params.beats_per_bar,
                "sample_rate": chunk.sample_rate, "channels": int(chunk.audio.shape[0]),
                "total_samples": int(chunk.audio.shape[-1]), "seconds_per_bar": clock.seconds_per_bar,
                "loop_duration_seconds": params.bars_per_chunk * clock.seconds_per_bar,
                "guidance_weight": params.guidance_weight, "temperature": params.temperature, "topk": params.topk,
                "loudness": chunk.loudness}
    if notice:
        metadata["notice"] = notice
    return metadata


def chunk_body(chunk: BarChunk, notice: tp.Optional[str] = None) -> dict:
    """The chunk as magenta-retry's `/jam/next` and the socket's `chunk` carry it."""
    wav = audio.wav_bytes(chunk.audio, chunk.sample_rate)
    return {"index": chunk.index, "audio_base64": base64.b64encode(wav).decode(),
            "metadata": chunk_metadata(chunk, notice)}


def chunk_events(chunk: BarChunk, binary: bool, notice: tp.Optional[str] = None) -> list[tp.Union[str, bytes]]:
    if binary:
        return [audio.wav_bytes(chunk.audio, chunk.sample_rate),
                encode({"type": "chunk_meta", "index": chunk.index, "metadata": chunk_metadata(chunk, notice)})]
    return [encode({"type": "chunk", **chunk_body(chunk, notice)})]


def started_event(session_id: str) -> str:
    return encode({"type": "started", "session_id": session_id, "mode": "bar"})


def status_event(**fields: tp.Any) -> str:
    return encode({"type": "status", **fields})


def status_body(bar) -> dict:
    """`/jam/status` of a running bar session (streaming.bar.session.BarSession): its indexes and timeline."""
    params = bar.source.params
    seconds_per_bar = params.clock.seconds_per_bar
    return {"running": bar.running, "last_generated_index": bar.generated - 1,
            "last_delivered_index": bar.delivered - 1, "last_consumed_index": bar.consumed,
            "buffer_ahead": bar.buffer_ahead, "queued_chunks": len(bar.outbox), "bpm": params.bpm,
            "beats_per_bar": params.beats_per_bar, "bars_per_chunk": params.bars_per_chunk,
            "seconds_per_bar": seconds_per_bar, "chunk_duration_seconds": params.bars_per_chunk * seconds_per_bar,
            "target_sample_rate": params.target_sr, "last_chunk_started_at": bar.last_chunk_started_at,
            "last_chunk_completed_at": bar.last_chunk_completed_at, "error": bar.failure}

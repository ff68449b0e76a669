"""The /ws/jam server's messages (Magenta RealTime's jam API), built as JSON text (and WAV bytes for chunks).

streaming.jam.protocol reads the client's messages; this module writes the server's. WebRTC's data channel and
bar mode reuse its events where their protocols share the jam API's words.
"""

import base64
import json
import typing as tp

from engine.api import Chunk, Landing, SessionSettings
from streaming import formats as audio
from streaming.jam.params import PROTOCOL_FRAME_RATE
from streaming.jam.protocol import Update


def encode(message: dict) -> str:
    return json.dumps(message, separators=(",", ":"))


def started_event(session_id: str, **fields) -> str:
    return encode({"type": "started", "mode": "rt", "session_id": session_id, **fields})


def recording_event(session_id: str) -> str:
    """Where the session's recording and its metadata are (streaming.sessions.recording_http)."""
    return encode({"type": "recording", "session_id": session_id, "url": f"/sessions/{session_id}/recording",
                   "metadata_url": f"/sessions/{session_id}",
                   "formats": ["wav", "flac", "mp3"]})


def pong_event() -> str:
    return encode({"type": "pong"})


def stopped_event() -> str:
    return encode({"type": "stopped"})


def error_event(message: str, **extra) -> str:
    """The request failed and nothing plays on this socket now (a refused start or attach, a session that ended
    on the server's side): the seed's client ends its loop on it, and may."""
    return encode({"type": "error", "error": message, **extra})


def status_event(status: str, **fields) -> str:
    return encode({"type": "status", "status": status, **fields})


def refusal_event(message: str, playing: bool) -> str:
    """A request that cannot be served: while a session plays on, a `status` `refused` naming the problem (never
    an `error`, on which the seed's client would leave a session playing); with none, an `error`."""
    return status_event("refused", error=message) if playing else error_event(message)


def restarting_event(message: str) -> str:
    """Generation failed and the session goes on with a fresh context on its slot: a `status`, not an `error`."""
    return status_event("restarting", error=message)


def _settings_fields(settings: SessionSettings) -> dict:
    return {"styles": ", ".join(settings.styles), "style_weights": ",".join(f"{w:g}" for w in settings.weights),
            "temperature": settings.params.temperature, "topk": settings.params.top_k,
            "guidance_weight": settings.params.guidance}


def chunk_metadata(chunk: Chunk, noise_notice: tp.Optional[str] = None) -> dict:
    """What was really sent: frames at the protocol's 25 per second, the overlap, and what made the chunk (the
    settings at its start; `changes` lists those that start inside it, with their offset in seconds)."""
    metadata = {
        "sample_rate": chunk.sample_rate,
        "channels": int(chunk.audio.shape[0]),
        "chunk_frames": int(round(chunk.seconds * PROTOCOL_FRAME_RATE)),
        "chunk_seconds": chunk.seconds,
        "crossfade_seconds": chunk.overlap_seconds,
        "total_seconds": chunk.audio.shape[-1] / chunk.sample_rate,
        "chunk_index": chunk.index,
        # where the chunk starts on the session's output timeline: an `input` message's `time` counts from it
        "start_seconds": round(chunk.start_seconds, 6),
        "generation_seconds": round(chunk.generation_seconds, 4),
        "real_time_factor": round(chunk.real_time_factor, 4),
        **_settings_fields(chunk.settings),
    }
    if chunk.changes:
        metadata["changes"] = [{"offset_seconds": round(offset, 4), **_settings_fields(settings)}
                               for offset, settings in chunk.changes]
    if noise_notice:
        metadata["notice"] = noise_notice
    return metadata


def chunk_events(chunk: Chunk, binary: bool, noise_notice: tp.Optional[str] = None) -> list[tp.Union[str, bytes]]:
    """A chunk as base64 WAV inside JSON, or as a binary WAV frame followed by chunk_meta."""
    wav = audio.wav_bytes(chunk.audio, chunk.sample_rate)
    metadata = chunk_metadata(chunk, noise_notice)
    if binary:
        return [wav, encode({"type": "chunk_meta", "metadata": metadata})]
    return [encode({"type": "chunk", "audio_base64": base64.b64encode(wav).decode(), "metadata": metadata})]


def describe_update(update: Update) -> dict:
    """The status fields acknowledging an update: what changed and the values now in force."""
    return {"changed": list(update.changed), "pace": update.pace,
            "params": {"styles": ", ".join(update.settings.styles),
                       "style_weights": ",".join(f"{w:g}" for w in update.settings.weights),
                       "temperature": update.settings.params.temperature, "topk": update.settings.params.top_k,
                       "guidance_weight": update.settings.params.guidance,
                       "max_decode_frames": int(round(update.settings.chunk_seconds * PROTOCOL_FRAME_RATE)),
                       "style_ramp_seconds": update.settings.ramp_seconds,
                       "input_gain": update.settings.input_gain, "input_mode": update.settings.input_mode}}


def placement_fields(placement: Landing, heard_in_seconds: float) -> dict:
    """Where an update starts in the audio the client receives: chunk `applies_from_chunk`, `offset_seconds`
    after that chunk's first sample (the first sample it can reach: engine.work.steering), heard about
    `heard_in_seconds` after this message by a listener playing without gaps; a glide of the styles over
    `style_ramp_seconds` starts there (0: instant, also when the blend of old and new styles has too many)."""
    return {"applies_from_chunk": placement.chunk, "offset_seconds": round(placement.offset_seconds, 4),
            "heard_in_seconds": round(max(0.0, heard_in_seconds), 3), "ramp_seconds": placement.ramp_seconds}


"""Clients written from the gary plugins' own request code, not from ours: what they send, what they read, and
when they give up.

- JuceClient: gary4juce (github betweentwomidnights/gary4juce, Source/PluginEditor.cpp, PluginProcessor.cpp):
  `backendHealthBodyLooksOnline` for /health, the Darius tab's `handleDariusHealthResponse`, `/api/models` read as
  `handleGaryModelsResponse` does, the JSON bodies of `sendToGary` / `sendContinueRequest` / retry (temperature is
  always 1.0 there), and `handlePollingResponse` with its stall rule (`STALL_TIMEOUT_SECONDS` without a progress
  increase or a non-empty `queue_status.status`).
- Gary4LiveClient: gary4live's Max for Live device (commentedout.js): socket.io-client with
  `transports: ['websocket']`, the request objects of processAudio / continueMusic / retry, the events it
  listens to.
"""

import base64
import io
import queue
import time
import typing as tp

import numpy as np
import requests
import socketio
import soundfile as sf

ONLINE = ("live", "healthy", "ok", "ready", "online")
OFFLINE = ("unhealthy", "failed", "down", "error")
STALL_SECONDS = 15  # gary4juce's STALL_TIMEOUT_SECONDS


class PluginGaveUp(AssertionError):
    pass


def wav_b64(samples: np.ndarray, rate: int, subtype: str = "PCM_16") -> str:
    buffer = io.BytesIO()
    sf.write(buffer, samples, rate, format="WAV", subtype=subtype)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def decode_b64(data: str) -> tuple[np.ndarray, int]:
    samples, rate = sf.read(io.BytesIO(base64.b64decode(data)), dtype="float32", always_2d=True)
    return samples, rate


class JuceClient:
    def __init__(self, base: str, poll_seconds: float = 0.5) -> None:
        self.base = base
        self.poll_seconds = poll_seconds  # the plugin polls every 3 s; faster here, the rules are the same

    def backend_online(self) -> bool:
        response = requests.get(self.base + "/health", timeout=3)
        if not 200 <= response.status_code < 400:
            return False
        status = str(response.json().get("status", "")).strip().lower()
        return status in ONLINE and status not in OFFLINE

    def darius_connected(self) -> tuple[bool, bool]:
        """(connected, warmed) as the Darius tab decides them."""
        body = requests.get(self.base + "/health", timeout=10).json()
        connected = bool(body.get("ok")) and body.get("status") in ("ready", "initializing")
        return connected, bool(body.get("warmed"))

    def model_paths(self) -> list[str]:
        models = requests.get(self.base + "/api/models", timeout=10).json()["models"]
        paths = []
        for size in ("small", "medium", "large"):
            for item in models.get(size, []):
                if item["type"] == "single":
                    paths.append(item["path"])
                else:
                    paths.extend(checkpoint["path"] for checkpoint in item["checkpoints"])
        return paths

    def _post(self, route: str, body: dict) -> dict:
        return requests.post(self.base + route, json=body, timeout=60).json()

    def process_audio(self, audio_b64: str, model: str, prompt_duration: int, top_k: int = 250,
                      cfg_coef: float = 3.0, description: str = "", seed: int = -1) -> dict:
        return self._post("/api/juce/process_audio", {
            "model_name": model, "prompt_duration": prompt_duration, "audio_data": audio_b64, "top_k": top_k,
            "temperature": 1.0, "cfg_coef": cfg_coef, "description": description, "seed": seed})

    def continue_music(self, audio_b64: str, model: str, prompt_duration: int, top_k: int = 250,
                       cfg_coef: float = 3.0, description: str = "", seed: int = -1) -> dict:
        return self._post("/api/juce/continue_music", {
            "audio_data": audio_b64, "prompt_duration": prompt_duration, "model_name": model, "top_k": top_k,
            "temperature": 1.0, "cfg_coef": cfg_coef, "description": description, "seed": seed})

    def retry_music(self, session_id: str, model: str, prompt_duration: int, top_k: int = 250,
                    cfg_coef: float = 3.0, description: str = "", seed: int = -1) -> dict:
        return self._post("/api/juce/retry_music", {
            "session_id": session_id, "prompt_duration": prompt_duration, "model_name": model, "top_k": top_k,
            "temperature": 1.0, "cfg_coef": cfg_coef, "description": description, "seed": seed})

    def poll_until_done(self, session_id: str, timeout: float = 300) -> tuple[str, list[dict]]:
        """The completed audio_data, and every poll answer; raises PluginGaveUp where the plugin would."""
        seen: list[dict] = []
        last_progress, last_change = 0, time.monotonic()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            body = requests.get(f"{self.base}/api/juce/poll_status/{session_id}", timeout=8).json()
            seen.append({k: v for k, v in body.items() if k != "audio_data"})
            if not body.get("success"):
                raise PluginGaveUp(f"processing failed: {body.get('error')}")
            if body.get("generation_in_progress") or body.get("transform_in_progress"):
                progress = max(0, min(100, int(body.get("progress", 0))))
                queue_status = body.get("queue_status")
                valid_queue = isinstance(queue_status, dict) and bool(queue_status.get("status"))
                if progress > last_progress or valid_queue:
                    last_progress, last_change = max(progress, last_progress), time.monotonic()
                elif time.monotonic() - last_change > STALL_SECONDS:
                    raise PluginGaveUp(f"stalled at {progress}%")
                time.sleep(self.poll_seconds)
                continue
            if body.get("audio_data") and body.get("status") == "completed":
                return body["audio_data"], seen
            raise PluginGaveUp(f"{body.get('status')}: {body.get('error')}")
        raise PluginGaveUp("timed out")


class Gary4LiveClient:
    """gary4live's socket: every event it listens to lands in `events` as (name, data)."""

    LISTENS = ("audio_processed", "music_continued", "music_retried", "progress_update", "queue_status", "error",
               "update_cropped_audio_complete")

    def __init__(self, base: str, auth: tp.Optional[dict] = None) -> None:
        self.events: queue.Queue[tuple[str, tp.Any]] = queue.Queue()
        self.sio = socketio.Client(reconnection=False)
        for name in self.LISTENS:
            self.sio.on(name, lambda data=None, name=name: self.events.put((name, data)))
        self.sio.on("disconnect", lambda *reason: self.events.put(("disconnect", reason)))
        self.sio.connect(base, transports=["websocket"], auth=auth, wait_timeout=10)

    def emit(self, event: str, data: dict) -> None:
        self.sio.emit(event, data)

    def process(self, audio_b64: str, model: str, prompt_duration: int) -> None:
        self.emit("process_audio_request", {"audio_data": audio_b64, "model_name": model,
                                            "prompt_duration": prompt_duration})

    def continue_music(self, audio_b64: str, model: str, session_id: tp.Optional[str], prompt_duration: int) -> None:
        request = {"audio_data": audio_b64, "model_name": model, "prompt_duration": prompt_duration}
        if session_id:
            request["session_id"] = session_id
        self.emit("continue_music_request", request)

    def retry(self, session_id: str, model: str, prompt_duration: int) -> None:
        self.emit("retry_music_request", {"session_id": session_id, "model_name": model,
                                          "prompt_duration": prompt_duration})

    def wait_for(self, names: tp.Iterable[str], timeout: float = 120) -> tuple[str, tp.Any, list]:
        """The first event named in `names`, and the events before it."""
        names = set(names)
        before = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                name, data = self.events.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            if name in names:
                return name, data, before
            if name == "disconnect":
                raise ConnectionError(f"the server closed the socket ({data}) before any of {sorted(names)}")
            before.append((name, data))
        raise TimeoutError(f"none of {sorted(names)} within {timeout} s; got {[n for n, _ in before]}")

    def close(self) -> None:
        self.sio.disconnect()

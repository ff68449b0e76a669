"""A client of FastRTC's WebSocket transport (`/websocket/offer`) over websockets' sync client, speaking the events
FastRTC's own clients send (docs/userguide/websocket_docs.md, demo/webrtc_vs_websocket/index.html): `start` with a
`websocket_id`, `media` with base64 mu-law, `ping`, `stop`. Its mu-law is audioop's, the codec FastRTC's server
uses (backend/fastrtc/websocket.py), so it is independent of the sidecar's own (streaming.formats)."""

import audioop
import base64
import json
import time
import typing as tp
import uuid

import numpy as np
from websockets.sync.client import connect

PARAMS = {"styles": "jazz, hiphop", "style_weights": "1.0,0.8", "temperature": 1.1, "topk": 40,
          "guidance_weight": 1.1, "seed": 7}
FRAME_SAMPLES = 2048  # FastRTC's browser snippet: createScriptProcessor(2048, 1, 1)


def encode(samples: np.ndarray) -> str:
    """16-bit samples -> the base64 mu-law payload FastRTC's clients send."""
    return base64.b64encode(audioop.lin2ulaw(samples.astype("<i2").tobytes(), 2)).decode("ascii")


def decode(payload: str) -> np.ndarray:
    return np.frombuffer(audioop.ulaw2lin(base64.b64decode(payload), 2), dtype="<i2")


def sine(seconds: float, rate: int = 48000, freq: float = 220.0, level: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (level * 32767 * np.sin(2 * np.pi * freq * t)).astype(np.int16)


class FastRTCClient:
    """One socket. `read` sorts what arrives: audio (decoded) into `audio`, `{"type", "data"}` messages into
    `messages`, every parsed frame into `frames`."""

    def __init__(self, url: str, websocket_id: tp.Optional[str] = None) -> None:
        self.ws = connect(url, max_size=2 ** 22)
        self.websocket_id = websocket_id or uuid.uuid4().hex[:12]
        self.audio: list[np.ndarray] = []
        self.messages: list[dict] = []
        self.frames: list[dict] = []

    def send(self, message: tp.Union[dict, str, bytes]) -> None:
        self.ws.send(json.dumps(message) if isinstance(message, dict) else message)

    def start(self, params: tp.Optional[dict] = None, **fields: tp.Any) -> None:
        message = {"event": "start", "websocket_id": self.websocket_id, **fields}
        if params is not None:
            message["params"] = params
        self.send(message)

    def media(self, samples: np.ndarray) -> None:
        self.send({"event": "media", "media": {"payload": encode(samples)}})

    def read(self, timeout: float = 30) -> dict:
        frame = json.loads(self.ws.recv(timeout=timeout))
        self.frames.append(frame)
        if frame.get("event") == "media":
            self.audio.append(decode(frame["media"]["payload"]))
        elif "type" in frame:
            self.messages.append(frame)
        return frame

    def until(self, predicate: tp.Callable[[dict], bool], timeout: float = 60) -> dict:
        """Reads until a frame matches `predicate` (TimeoutError after `timeout`)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            frame = self.read(timeout=max(0.01, deadline - time.monotonic()))
            if predicate(frame):
                return frame
        raise TimeoutError("no matching frame")

    def log(self, event: str, timeout: float = 60) -> dict:
        """The data of the next `log` message whose data is the dict of `event` (started, chunk, updated...)."""
        return self.until(lambda f: f.get("type") == "log" and isinstance(f["data"], dict)
                          and f["data"].get("event") == event, timeout)["data"]

    def error(self, timeout: float = 30) -> str:
        return self.until(lambda f: f.get("type") == "error", timeout)["data"]

    def close(self) -> None:
        self.ws.close()


def is_media(frame: dict) -> bool:
    return frame.get("event") == "media"

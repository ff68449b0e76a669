"""An aiortc client of the sidecar's WebRTC endpoint, as docs/protocols/webrtc.md shows it, with what tests need
to inspect; a microphone playing a tone; a whole seeded session played and its recording fetched (the A/B runs of
the microphone's test and benchmark)."""

import asyncio
import fractions
import io
import json
import math
import time
import typing as tp
import uuid

import av
import httpx
import numpy as np
import soundfile as sf
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamTrack

CONNECT_TIMEOUT = 2.0
SERVER_CONFIG = {"webrtc_connect_timeout": CONNECT_TIMEOUT}  # a peer that never connects is given up soon
PARAMS = {"styles": "jazz, hiphop", "style_weights": "1.0,0.8", "temperature": 1.1, "topk": 40,
          "guidance_weight": 1.1, "seed": 7, "max_decode_frames": 25}  # 1 s chunks


def loopback_only(monkeypatch) -> None:
    """aioice never offers 127.0.0.1 as a host candidate; on a test machine loopback is the one path to use."""
    import aioice.ice

    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"])


class JamClient:
    def __init__(self, base_url: str, webrtc_id: tp.Optional[str] = None, handshake: bool = False,
                 audio: bool = True, microphone: tp.Optional[MediaStreamTrack] = None) -> None:
        """`handshake`: send what FastRTC's browser client sends when the channel opens (frontend/shared/
        webrtc_utils.ts: `data_channel.onopen = () => data_channel.send("handshake")`); `audio` False: offer the
        data channel alone, as FastRTC's receive-mode snippet does; `microphone`: send it, as FastRTC's
        send-receive mode sends the user's microphone (a sendrecv audio transceiver)."""
        self.base_url = base_url
        self.webrtc_id = webrtc_id or uuid.uuid4().hex[:12]
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        if microphone is not None:
            self.pc.addTransceiver(microphone, direction="sendrecv")
        elif audio:
            self.pc.addTransceiver("audio", direction="recvonly")
        self.channel = self.pc.createDataChannel("text")
        if handshake:
            self.channel.on("open", lambda: self.channel.send("handshake"))
        self.messages: asyncio.Queue = asyncio.Queue()
        self.channel.on("message", lambda text: self.messages.put_nowait(json.loads(text)))
        self.track_future: asyncio.Future = asyncio.get_running_loop().create_future()
        self.pc.on("track", lambda track: self.track_future.set_result(track))
        self.offered_at = 0.0

    async def post(self, path: str, body: dict, **kwargs) -> dict:
        async with httpx.AsyncClient(base_url=self.base_url, timeout=30) as http:
            response = await http.post(path, json=body, **kwargs)
        assert response.status_code == 200, response.text  # FastRTC answers failures with 200 too
        return response.json()

    async def offer(self, jam: tp.Optional[dict] = None, without_candidates: bool = False, **http) -> dict:
        """Posts the offer with `jam` as its params (optionally with its candidates stripped, to be trickled);
        `http` goes to the request (query params, headers). Returns the reply."""
        await self.pc.setLocalDescription(await self.pc.createOffer())
        sdp = self.pc.localDescription.sdp
        if without_candidates:  # as a trickling browser sends it: no candidates and no end-of-candidates yet
            sdp = "".join(line for line in sdp.splitlines(keepends=True)
                          if not line.startswith(("a=candidate:", "a=end-of-candidates")))
        body = {"sdp": sdp, "type": "offer", "webrtc_id": self.webrtc_id}
        if jam is not None:
            body["params"] = jam
        self.offered_at = time.monotonic()
        return await self.post("/webrtc/offer", body, **http)

    def candidates(self) -> list[dict]:
        """The offer's candidates as a browser's RTCIceCandidate.toJSON() gives them."""
        return [{"candidate": line[2:], "sdpMid": "0", "sdpMLineIndex": 0}
                for line in self.pc.localDescription.sdp.splitlines() if line.startswith("a=candidate:")]

    async def connect(self, jam: tp.Optional[dict] = None, **http) -> MediaStreamTrack:
        reply = await self.offer(jam, **http)
        assert reply.get("type") == "answer", reply
        return await self.accept(reply)

    async def accept(self, answer: dict) -> MediaStreamTrack:
        await self.pc.setRemoteDescription(RTCSessionDescription(**answer))
        return await asyncio.wait_for(self.track_future, 10)

    async def message(self, predicate: tp.Callable[[dict], bool], timeout: float = 30) -> dict:
        """The next data-channel message matching `predicate` (others are skipped)."""
        deadline = time.monotonic() + timeout
        while True:
            message = await asyncio.wait_for(self.messages.get(), max(0.01, deadline - time.monotonic()))
            if predicate(message):
                return message

    def send(self, message: dict) -> None:
        self.channel.send(json.dumps(message))

    async def close(self) -> None:
        await self.pc.close()


def event(name: str) -> tp.Callable[[dict], bool]:
    return lambda message: isinstance(message.get("data"), dict) and message["data"].get("event") == name


async def recorded_session(base_url: str, params: dict, seconds: float,
                           microphone: tp.Optional[MediaStreamTrack] = None, timeout: float = 10
                           ) -> tuple[np.ndarray, tp.Optional[dict]]:
    """Plays a session for `seconds` of received music (sending `microphone`), stops it, and returns its recording
    (the tokens it generated, decoded afresh: float32 [samples, channels]) with the data channel's first `input`
    event's data (None without a microphone)."""
    client = JamClient(base_url, microphone=microphone)
    track = await client.connect(params)
    session_id = (await client.message(event("started")))["data"]["session_id"]
    heard = 0
    while heard < seconds * 48000:
        heard += (await asyncio.wait_for(track.recv(), timeout)).samples
    placed = None
    if microphone is not None:
        placed = (await client.message(event("input"), timeout=timeout))["data"]
    client.send({"type": "stop"})
    await client.message(lambda m: m["data"] == "stopped", timeout=timeout)
    await client.close()
    async with httpx.AsyncClient(base_url=base_url, timeout=120) as http:
        response = await http.get(f"/sessions/{session_id}/recording")
    assert response.status_code == 200, response.text
    audio, _ = sf.read(io.BytesIO(response.content), dtype="float32", always_2d=True)
    return audio, placed


class ToneTrack(MediaStreamTrack):
    """A microphone playing a sine, in real time: 20 ms frames of 16-bit PCM at 48 kHz, as a browser's would be
    before Opus (aiortc encodes them). `silent_seconds` of zeros come first."""

    kind = "audio"

    def __init__(self, freq: float = 330.0, amplitude: float = 0.5, silent_seconds: float = 0.0,
                 rate: int = 48000, channels: int = 1) -> None:
        super().__init__()
        self.freq, self.amplitude, self.silent, self.rate, self.channels = freq, amplitude, silent_seconds, rate, \
            channels
        self.sent = 0  # samples so far
        self.started: tp.Optional[float] = None

    async def recv(self) -> av.AudioFrame:
        samples = self.rate // 50
        self.started = self.started or time.monotonic()
        due = self.started + self.sent / self.rate
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        t = (self.sent + np.arange(samples)) / self.rate
        wave = self.amplitude * np.sin(2 * math.pi * self.freq * t) * (t >= self.silent)
        pcm = (wave * 32767).astype("<i2")
        frame = av.AudioFrame.from_ndarray(np.repeat(pcm, self.channels)[None], format="s16",
                                           layout="mono" if self.channels == 1 else "stereo")
        frame.sample_rate, frame.pts, frame.time_base = self.rate, self.sent, fractions.Fraction(1, self.rate)
        self.sent += samples
        return frame

"""The jam page as an instrument, in real headless Chromium against a real sidecar: a knob per prompt, Web MIDI CC
learn (a MIDI input injected into the page: Chromium has no virtual MIDI port), the microphone / line-in (Chromium's
fake capture device, a beeping tone), and the page without either."""

import base64
import json
import time
import typing as tp

import numpy as np
import pytest

from tests.support.browser import FAKE_MEDIA, chromium_page
from tests.support.helpers import wait_until
from tests.support.servers import sessions

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("loopback")]

# A MIDIAccess with two inputs; `fakeMidi.inputs.get(id).send([status, cc, value])` is a hardware knob moving, and
# `fakeMidi.requests` counts the page's requestMIDIAccess calls (none before the player asks: no permission prompt).
FAKE_MIDI = """(() => {
  class FakeInput extends EventTarget {
    constructor(id, name) {
      super();
      Object.assign(this, {id, name, type: "input", manufacturer: "tests", state: "connected", connection: "open"});
      this.onmidimessage = null;
    }
    send(bytes) {
      const event = new MIDIMessageEvent("midimessage", {data: new Uint8Array(bytes)});
      if (this.onmidimessage) this.onmidimessage(event);
      this.dispatchEvent(event);
    }
  }
  const inputs = new Map([["in-1", new FakeInput("in-1", "Fake knobs one")],
                          ["in-2", new FakeInput("in-2", "Fake knobs two")]]);
  window.fakeMidi = {inputs, requests: 0};
  navigator.requestMIDIAccess = async () => {
    window.fakeMidi.requests += 1;
    return {inputs, outputs: new Map(), sysexEnabled: false, onstatechange: null};
  };
})();"""

NO_MIDI_NO_MIC = """delete Navigator.prototype.requestMIDIAccess;
MediaDevices.prototype.getUserMedia = () => Promise.reject(new DOMException("Permission denied", "NotAllowedError"));"""

OUTBOUND_BYTES = """async () => {
  let bytes = 0;
  (await window.jamPc.getStats()).forEach((r) => {
    if (r.type === "outbound-rtp" && r.kind === "audio") bytes = r.bytesSent;
  });
  return bytes;
}"""


class Frames:
    """The JSON text frames the page's /ws/jam socket sends and receives (Playwright's websocket events)."""

    def __init__(self, page) -> None:
        self.page = page
        self.sent: list[dict] = []
        self.received: list[dict] = []
        page.on("websocket", self.attach)

    def attach(self, ws) -> None:
        ws.on("framesent", lambda payload: self.sent.append(json.loads(payload)) if isinstance(payload, str) else None)
        ws.on("framereceived", lambda payload: self.received.append(json.loads(payload))
              if isinstance(payload, str) else None)

    def wait(self, predicate: tp.Callable[[], tp.Any], timeout: float = 20.0) -> tp.Any:
        """Waits inside Playwright (its events are only delivered while it runs) until `predicate()` is truthy."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = predicate()
            if found:
                return found
            self.page.wait_for_timeout(100)
        raise AssertionError(f"not seen within {timeout} s; sent {[f.get('type') for f in self.sent][-20:]}")

    def updates(self) -> list[dict]:
        return [f for f in self.sent if f["type"] == "update"]

    def inputs(self) -> list[dict]:
        return [f for f in self.sent if f["type"] == "input"]


def open_page(page, server, transport: str = "websocket") -> Frames:
    frames = Frames(page)
    page.goto(f"http://127.0.0.1:{server.port}/")
    page.select_option("#transport", transport)
    return frames


def play(page, chunks: int = 1) -> None:
    page.click("#play")
    page.wait_for_function(f"Number(document.getElementById('chunks').textContent) >= {chunks}", timeout=30_000)


def chunks(page) -> int:
    return int(page.inner_text("#chunks"))


def stop(page, server) -> None:
    page.click("#stop")
    assert wait_until(lambda: sessions(server) == 0, 10)


def weight(page, prompt_id: str) -> str:
    return page.get_attribute(f"li[data-id={prompt_id}] .knob", "aria-valuenow")


def midi(page, input_id: str, *data: int) -> None:
    page.evaluate(f"fakeMidi.inputs.get({input_id!r}).send({list(data)})")


@pytest.fixture
def page(tmp_path):
    with chromium_page(tmp_path / "profile") as page:
        yield page


@pytest.fixture
def media_page(tmp_path):
    with chromium_page(tmp_path / "profile", FAKE_MEDIA) as page:
        yield page


def test_cc_learn_binds_a_knob_and_the_hardware_knob_sets_the_weight_the_page_sends(server, page):
    page.add_init_script(FAKE_MIDI)
    frames = open_page(page, server)
    play(page)
    assert page.evaluate("fakeMidi.requests") == 0  # nothing asked for MIDI before the player did
    page.click("#midi")
    page.wait_for_function("document.getElementById('midi-input').options.length === 2")
    page.select_option("#midi-input", "in-2")  # the player picks the second device
    ambient = "li[data-id=p2]"
    assert page.input_value(f"{ambient} .prompt-text") == "ambient" and weight(page, "p2") == "0.00"
    page.click(f"{ambient} .cc")
    assert page.inner_text(f"{ambient} .cc") == "Learn…"
    midi(page, "in-1", 0xB0, 21, 100)  # a device the player did not pick: ignored
    midi(page, "in-2", 0x90, 60, 100)  # a note, not a control change: ignored
    assert page.inner_text(f"{ambient} .cc") == "Learn…"
    midi(page, "in-2", 0xB3, 21, 10)  # CC 21 on channel 4: bound
    assert page.inner_text(f"{ambient} .cc") == "CC 21" and weight(page, "p2") == "0.00"

    midi(page, "in-2", 0xB0, 21, 127)  # the hardware knob all the way up: weight 127 / 127 x 2
    assert weight(page, "p2") == "2.00"
    sent = frames.wait(lambda: [u for u in frames.updates() if "ambient" in u.get("styles", "")])
    assert sent[-1]["styles"] == "jazz, hiphop, ambient" and sent[-1]["style_weights"] == "1,0.8,2"
    acked = frames.wait(lambda: [m for m in frames.received
                                 if m.get("status") == "updated" and "ambient" in m["params"]["styles"]])
    assert acked[-1]["params"]["style_weights"] == "1,0.8,2"  # the session took it

    midi(page, "in-2", 0xB0, 21, 0)  # and down to 0: the prompt leaves the blend
    frames.wait(lambda: frames.updates()[-1]["styles"] == "jazz, hiphop")

    page.click("#temperature-cc")  # a parameter learns the same way, over the slider's range
    midi(page, "in-2", 0xB0, 22, 64)
    assert page.inner_text("#temperature-cc") == "CC 22"
    midi(page, "in-2", 0xB0, 22, 127)
    frames.wait(lambda: frames.updates()[-1].get("temperature") == 3)
    assert page.input_value("#temperature") == "3"
    stop(page, server)

    page.reload()  # the bindings and the chosen input are kept in the browser
    page.click("#midi")
    page.wait_for_function("document.getElementById('midi-input').value === 'in-2'")
    assert page.inner_text(f"{ambient} .cc") == "CC 21" and page.inner_text("#temperature-cc") == "CC 22"
    midi(page, "in-2", 0xB0, 21, 64)
    assert weight(page, "p2") == f"{64 / 127 * 2:.2f}"


def test_prompts_are_added_renamed_and_removed_and_each_knob_steers_live(server, page):
    frames = open_page(page, server)
    play(page)
    page.click("#add-prompt")
    page.keyboard.type("dub techno, dark")  # a comma would split the style: it becomes a space
    page.keyboard.press("Tab")
    assert page.input_value("li[data-id=p4] .prompt-text") == "dub techno dark"
    page.focus("li[data-id=p4] .knob")
    page.keyboard.press("End")  # keyboard: the knob to 2
    frames.wait(lambda: frames.updates() and frames.updates()[-1].get("styles") == "jazz, hiphop, dub techno dark")
    assert frames.updates()[-1]["style_weights"] == "1,0.8,2"
    box = page.locator("li[data-id=p1] .knob").bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2 - 40, steps=4)  # dragged up 40 px
    page.mouse.up()
    assert weight(page, "p1") == "1.20"  # 200 px span the knob's 0..2
    frames.wait(lambda: frames.updates()[-1].get("style_weights") == "1,1.2,2")
    page.click("li[data-id=p0] .remove")
    frames.wait(lambda: frames.updates()[-1].get("styles") == "hiphop, dub techno dark")
    page.wait_for_function("document.getElementById('ack').textContent.includes('heard from')", timeout=20_000)
    stop(page, server)


def test_the_microphone_goes_to_the_session_as_input_messages_and_the_jam_plays_on(server, media_page):
    page = media_page
    frames = open_page(page, server)
    page.click("#mic")  # on well before playing: the page's audio clock runs ahead of the jam's timeline
    page.wait_for_function("document.getElementById('mic').getAttribute('aria-pressed') === 'true'")
    page.wait_for_timeout(6000)
    assert frames.inputs() == []  # nothing plays yet: nothing to play along with
    play(page)
    inputs = frames.wait(lambda: len(frames.inputs()) >= 5 and frames.inputs())
    playing_from = chunks(page)
    first, last = inputs[0], inputs[-1]
    assert set(first) == {"type", "time", "sample_rate", "channels", "audio"}
    assert first["channels"] == 1 and first["sample_rate"] in (44100, 48000)
    pcm = [np.frombuffer(base64.b64decode(frame["audio"]), "<i2") for frame in inputs]
    assert all(0.19 <= len(p) / first["sample_rate"] <= 0.3 for p in pcm)
    assert max(np.abs(p).max() for p in pcm) > 1000  # the fake device's beep, once a second
    assert 0 <= first["time"] < last["time"]  # on the session's output timeline, moving on with it
    heard_by = max(m["metadata"]["start_seconds"] + m["metadata"]["chunk_seconds"]
                   for m in frames.received if m["type"] == "chunk")
    assert last["time"] < heard_by  # where the player heard the jam: never past the audio received
    page.wait_for_function("document.getElementById('input-level').value > 0.01")
    page.fill("#input-gain", "0.5")
    page.dispatch_event("#input-gain", "input")
    frames.wait(lambda: frames.updates() and frames.updates()[-1].get("input_gain") == 0.5)
    page.select_option("#input-mode", "replace")
    frames.wait(lambda: frames.updates()[-1].get("input_mode") == "replace")
    page.wait_for_function(f"Number(document.getElementById('chunks').textContent) >= {playing_from + 2}",
                           timeout=30_000)  # the jam plays on with the input
    refused = [m for m in frames.received if m["type"] == "error" or m.get("status") == "refused"]
    assert refused == []
    page.click("#mic")
    count = len(frames.inputs())
    page.wait_for_timeout(1000)
    assert len(frames.inputs()) <= count + 1  # off: at most the message already on its way
    stop(page, server)


def test_the_microphone_rides_the_webrtc_offer_as_its_audio_track(server, media_page):
    page = media_page
    page.goto(f"http://127.0.0.1:{server.port}/")
    page.click("#mic")  # on before playing: the meter moves with no session at all
    page.wait_for_function("document.getElementById('input-level').value > 0.01", timeout=10_000)
    play(page)
    assert page.inner_text("#via") == "WebRTC (Opus)"
    page.wait_for_function(f"({OUTBOUND_BYTES})().then((bytes) => bytes > 2000)", timeout=20_000)
    # the server took the track into the session and said where it placed it on the jam's timeline
    page.wait_for_function("document.getElementById('input-state').textContent.includes('placed at')",
                           timeout=20_000)
    stop(page, server)


def test_the_page_plays_without_midi_or_microphone(server, page):
    page.add_init_script(NO_MIDI_NO_MIC)
    page.goto(f"http://127.0.0.1:{server.port}/")
    assert page.is_disabled("#midi")
    play(page)
    page.click("#mic")
    page.wait_for_function("document.getElementById('log').textContent.includes('microphone / line-in unavailable')")
    assert page.get_attribute("#mic", "aria-pressed") == "false"
    page.focus("li[data-id=p2] .knob")
    page.keyboard.press("ArrowUp")  # a knob still steers over WebRTC's data channel
    page.wait_for_function("document.getElementById('ack').textContent.includes('heard from')", timeout=20_000)
    from_chunk = chunks(page)
    page.wait_for_function(f"Number(document.getElementById('chunks').textContent) > {from_chunk}", timeout=20_000)
    stop(page, server)

"""The jam page in real headless Chromium (Debian's, driven by Playwright): WebRTC playback and the /ws/jam fallback."""

import pytest
import soundfile as sf

from tests.support.browser import chromium_page
from tests.support.helpers import wait_until
from tests.support.servers import sessions

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("loopback")]

BYTES_RECEIVED = """async () => {
  let bytes = 0;
  (await window.jamPc.getStats()).forEach((r) => { if (r.type === "inbound-rtp") bytes = r.bytesReceived; });
  return bytes;
}"""


@pytest.fixture
def page(tmp_path):
    with chromium_page(tmp_path / "profile") as page:
        yield page


def text(page, selector: str) -> str:
    return page.inner_text(selector)


def test_page_plays_over_webrtc_and_steers(server, page, tmp_path):
    page.goto(f"http://127.0.0.1:{server.port}/")
    page.wait_for_function("document.getElementById('model').textContent.includes('random weights')")
    assert "noise" in text(page, "#notice") and page.is_visible("#notice")
    page.focus("#play")
    page.keyboard.press("Enter")  # keyboard only
    page.wait_for_function("document.getElementById('ttfa').textContent.endsWith(' s')", timeout=30_000)
    assert text(page, "#via") == "WebRTC (Opus)" and text(page, "#state") == "connected"
    page.wait_for_function(f"({BYTES_RECEIVED})().then((bytes) => bytes > 0)", timeout=10_000)
    page.fill("li[data-id=p0] .prompt-text", "metal")
    page.keyboard.press("Enter")  # renames the prompt and submits the form: an update on the data channel
    page.wait_for_function("document.getElementById('ack').textContent.includes('heard from chunk')",
                           timeout=20_000)
    assert text(page, "#ack").startswith("style_weights, styles")
    page.wait_for_function("Number(document.getElementById('chunks').textContent) >= 2", timeout=20_000)
    assert float(text(page, "#rtf")) > 0 and "ahead" in text(page, "#buffer")
    page.screenshot(path=str(tmp_path / "jam-page.png"), full_page=True)
    page.click("#stop")
    page.wait_for_function("document.getElementById('state').textContent === 'stopped'")
    assert wait_until(lambda: sessions(server) == 0, 5)


def test_page_falls_back_to_ws_jam_when_webrtc_fails(server, page):
    # WebRTC breaking on the client's side (as a blocked or broken stack would): the page plays over /ws/jam
    page.add_init_script("RTCPeerConnection.prototype.createOffer = () => Promise.reject(new Error('blocked'))")
    page.goto(f"http://127.0.0.1:{server.port}/")
    assert not page.is_visible("#download")  # no session yet, nothing to download
    page.click("#play")
    page.wait_for_function("document.getElementById('ttfa').textContent.endsWith(' s')", timeout=30_000)
    page.wait_for_function("Number(document.getElementById('chunks').textContent) >= 2", timeout=30_000)
    assert text(page, "#via") == "WebSocket (/ws/jam)"
    assert "falling back to the WebSocket" in text(page, "#log")
    page.fill("li[data-id=p1] .prompt-text", "ambient")
    page.click("#apply")
    page.wait_for_function("document.getElementById('ack').textContent.includes('heard from')", timeout=20_000)
    page.click("#stop")
    assert wait_until(lambda: sessions(server) == 0, 5)
    assert_recording_downloads(server, page)


def assert_recording_downloads(server, page) -> None:
    """The "Download recording" link the page shows for its session gives the jam as a WAV file."""
    assert page.is_visible("#download")
    with page.expect_download() as download:
        page.click("#download")
    samples, rate = sf.read(download.value.path())
    assert rate == 32000 and len(samples) > rate  # at least the two chunks the test waited for

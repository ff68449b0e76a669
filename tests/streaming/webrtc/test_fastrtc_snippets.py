"""FastRTC's "Connecting via API" WebRTC snippets (shared/seeds/002), rendered as its page renders them and run as
written in headless Chromium, from a page at the sidecar's origin (the snippets post to the relative
`/webrtc/offer`)."""

import pytest

from tests.support.browser import FAKE_MEDIA, chromium_page
from tests.support.fastrtc_template import snippet
from tests.support.helpers import wait_until
from tests.support.servers import http_url, sessions
from tests.support.webrtc_client import SERVER_CONFIG

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("loopback")]

# What a page that shows the data channel's messages sees: every message on the channels the snippet creates (the
# snippet sets no handler of its own). The rest of the page is the snippet, then the call its text asks for.
PAGE = """<!doctype html>
<html><body>
<audio id="audio_output_component_id" autoplay></audio>
<script>
window.channelMessages = [];
const createDataChannel = RTCPeerConnection.prototype.createDataChannel;
RTCPeerConnection.prototype.createDataChannel = function (...args) {
  const channel = createDataChannel.apply(this, args);
  channel.addEventListener("message", (event) => window.channelMessages.push(event.data));
  return channel;
};
</script>
<script>
%s
</script>
<script>
window.outcome = setupWebRTC(pc).then(() => "set up", (error) => `failed: ${error}`);
</script>
</body></html>"""
BYTES_RECEIVED = """async () => {
  let bytes = 0;
  (await pc.getStats()).forEach((r) => { if (r.type === "inbound-rtp") bytes = r.bytesReceived; });
  return bytes;
}"""


@pytest.fixture(scope="module")
def server_config() -> dict:
    return SERVER_CONFIG


def open_snippet(page, server, mode: str) -> str:
    """Opens the rendered snippet for audio in `mode` at the sidecar's origin; what `setupWebRTC(pc)` came to."""
    url = http_url(server, "/fastrtc-snippet")
    page.route(url, lambda route: route.fulfill(content_type="text/html", body=PAGE % snippet("audio", mode)))
    page.goto(url)
    return page.evaluate("window.outcome")


def test_the_receive_snippet_is_answered_and_told_to_add_an_audio_transceiver(server, tmp_path):
    """The receive snippet offers its "text" data channel alone: it gets an answer it can apply (a failure body
    threw `Failed to parse SessionDescription`), the channel says what the offer lacks in FastRTC's `error`
    message, no slot is taken, and the server ends the connection."""
    import json

    with chromium_page(tmp_path / "profile") as page:
        assert open_snippet(page, server, "receive") == "set up"
        page.wait_for_function("window.channelMessages.length > 0", timeout=20_000)
        message = json.loads(page.evaluate("window.channelMessages[0]"))
        assert message["type"] == "error" and "add an audio transceiver" in message["data"]
        assert sessions(server) == 0
        page.wait_for_function("['closed', 'failed'].includes(pc.connectionState)", timeout=20_000)


def test_the_send_receive_snippet_plays(server, tmp_path):
    """The send-receive snippet sends the microphone (a fake one here) and plays what comes back: the music."""
    with chromium_page(tmp_path / "profile", FAKE_MEDIA) as page:
        assert open_snippet(page, server, "send-receive") == "set up"
        page.wait_for_function(f"({BYTES_RECEIVED})().then((bytes) => bytes > 0)", timeout=30_000)
        assert page.evaluate("document.getElementById('audio_output_component_id').srcObject !== null")
        assert sessions(server) == 1
        page.evaluate("pc.close()")
        assert wait_until(lambda: sessions(server) == 0, 10)

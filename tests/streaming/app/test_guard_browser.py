"""streaming.app.guard in real headless Chromium: a page served by a second local server (another port, so another
origin) cannot start a /ws/jam session, queue a gary job or read /health; the same page from an origin in
JAM_ALLOWED_ORIGINS can; and a DNS-rebinding name that resolves to 127.0.0.1 reads nothing."""

import json

import numpy as np
import pytest

from tests.support.browser import chromium_page
from tests.support.gary_clients import wav_b64
from tests.support.servers import http_url, running_server, sessions

pytestmark = [pytest.mark.slow]

# What a stranger's page tries: a jam on the GPU, a gary job by a "simple" request (no preflight) and by a JSON one,
# and a read of /health. Each outcome is a word; nothing is assumed about how the browser reports a refusal.
ATTACK = """<!doctype html><meta charset="utf-8"><title>a page elsewhere</title><script>
const target = new URLSearchParams(location.search).get("target");
const job = {model_name: "demo", prompt_duration: 1, audio_data: AUDIO, top_k: 250, temperature: 1.0, cfg_coef: 3.0,
             description: "", seed: 1};
async function attempt(work) { try { return await work(); } catch (error) { return "blocked"; } }
window.results = (async () => ({
  ws: await new Promise((resolve) => {
    const ws = new WebSocket(target.replace("http", "ws") + "/ws/jam");
    ws.onopen = () => ws.send(JSON.stringify({type: "start", params: {styles: "jazz", pace: "asap",
                                                                       max_decode_frames: 10}}));
    ws.onmessage = (event) => {
      const message = JSON.parse(event.data);
      if (message.type !== "status" || message.status !== "playing") return;
      ws.send('{"type": "stop"}');
      resolve("playing");
    };
    ws.onclose = () => resolve("refused");
  }),
  simplePost: await attempt(async () => (await fetch(target + "/api/juce/process_audio", {
    method: "POST", mode: "no-cors", headers: {"Content-Type": "text/plain"}, body: JSON.stringify(job)})).type),
  jsonPost: await attempt(async () => {
    const answer = await fetch(target + "/api/juce/process_audio", {
      method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(job)});
    return (await answer.json()).success ? "queued" : "refused";
  }),
  health: await attempt(async () => (await (await fetch(target + "/health")).json()).status),
}))();
</script>"""


@pytest.fixture
def attack_page(file_server):
    """The stranger's page on a second local server (file_server: another port, so another origin)."""
    base, directory = file_server
    audio = wav_b64(0.3 * np.sin(np.linspace(0, 2000, 32000 * 2)).astype(np.float32), 32000)
    (directory / "attack.html").write_text(ATTACK.replace("AUDIO", json.dumps(audio)))
    return base


def run_attack(page, attack_base: str, server) -> dict:
    page.goto(f"{attack_base}/attack.html?target={http_url(server)}")
    return page.evaluate("window.results")


def test_a_page_of_another_origin_gets_nothing(server, attack_page, tmp_path):
    with chromium_page(tmp_path / "profile") as page:
        results = run_attack(page, attack_page, server)
    # the no-cors POST is sent and its answer is opaque to the page: what counts is that no job was queued
    assert results == {"ws": "refused", "simplePost": "opaque", "jsonPost": "blocked", "health": "blocked"}
    assert sessions(server) == 0 and server.jobs.counts()["entries"] == 0  # 0 sessions opened, 0 jobs queued


def test_the_same_page_from_an_allowed_origin_plays_and_queues(engine, attack_page, tmp_path):
    with running_server(engine, allowed_origins=(attack_page,)) as server:
        with chromium_page(tmp_path / "profile") as page:
            results = run_attack(page, attack_page, server)
        # the text/plain body is still no JSON (415: one job, not two); the JSON request passes its preflight
        assert results == {"ws": "playing", "simplePost": "opaque", "jsonPost": "queued", "health": "ready"}
        assert server.jobs.counts()["entries"] == 1


def test_a_rebinding_name_reads_nothing(server, tmp_path):
    # evil.example resolving to 127.0.0.1, as a DNS-rebinding attacker's name does after its first lookup
    with chromium_page(tmp_path / "profile", ["--host-resolver-rules=MAP evil.example 127.0.0.1"]) as page:
        answer = page.goto(f"http://evil.example:{server.port}/health")
        assert answer.status == 403 and "JAM_ALLOWED_HOSTS" in answer.text()
        assert page.goto(f"http://evil.example:{server.port}/").status == 403  # the jam page too
        assert page.goto(f"http://localhost:{server.port}/health").status == 200

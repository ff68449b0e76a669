"""streaming.app.guard against the real sidecar and real clients: a foreign Origin opens no session and queues no
job on any transport, a JSON body without a JSON content type is refused, a rebinding Host reads nothing, allowed
origins get CORS, and no answer names a filesystem path. The browser's side is test_guard_browser.py."""

import http.client
import json
import logging
import typing as tp

import pytest
import requests
import socketio
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from streaming.app.config import ServerConfig
from streaming.app.server import RunningServer
from streaming.lyria import protocol as lp
from tests.support import ROOT
from tests.support.gary_clients import JuceClient
from tests.support.helpers import wait_until
from tests.support.jam_client import asap_start, is_status, messages_until, next_of
from tests.support.servers import http_url, running_server, sessions, ws_url

EVIL = "http://evil.example"
JSON_BODY = json.dumps({"model_name": "demo", "prompt_duration": 3, "audio_data": "AAAA"})


def paths_in(answer: tp.Any) -> list[str]:
    """Every string in a JSON answer that looks like a filesystem path (absolute, or naming the checkout)."""
    if isinstance(answer, dict):
        return [path for value in answer.values() for path in paths_in(value)]
    if isinstance(answer, list):
        return [path for value in answer for path in paths_in(value)]
    return [answer] if isinstance(answer, str) and (answer.startswith("/") or str(ROOT) in answer) else []


def no_work_done(server) -> bool:
    """Nothing a refused request could have started: no session, no job, no open socket."""
    return sessions(server) == 0 and server.jobs.counts()["entries"] == 0 and \
        requests.get(http_url(server, "/health"), timeout=5).json()["connections"] == 0


@pytest.mark.parametrize("path", ["/ws/jam", lp.PATH])
def test_a_foreign_origin_cannot_open_a_websocket(server, path):
    with pytest.raises(InvalidStatus) as refused:
        with connect(ws_url(server, path), additional_headers={"Origin": EVIL}, open_timeout=10) as ws:
            ws.send(json.dumps(asap_start("jazz")))
    assert refused.value.response.status_code == 403
    assert "JAM_ALLOWED_ORIGINS" in json.loads(refused.value.response.body)["error"]
    assert no_work_done(server)


def test_a_foreign_origin_cannot_connect_to_socketio(server):
    client = socketio.Client(reconnection=False)
    with pytest.raises(socketio.exceptions.ConnectionError):
        client.connect(http_url(server), transports=["websocket"], headers={"Origin": EVIL}, wait_timeout=10)
    assert no_work_done(server)


def test_the_same_origin_and_native_clients_keep_playing(server):
    # the jam page's own origin (what Chromium sends from http://127.0.0.1:PORT/), then a client with no Origin
    for headers in ({"Origin": http_url(server)}, {}):
        with connect(ws_url(server), additional_headers=headers, open_timeout=10) as ws:
            ws.send(json.dumps(asap_start("jazz")))
            playing = messages_until(ws, is_status("playing"))[-1]
            ws.send(json.dumps({"type": "stop"}))
            next_of(ws, "stopped")
            assert playing["model"]["checkpoint"] == "demo"  # a name, never the path
            assert paths_in(playing) == []
    assert wait_until(lambda: sessions(server) == 0, 10)
    assert JuceClient(http_url(server)).backend_online()


@pytest.mark.parametrize("route", ["/api/juce/process_audio", "/webrtc/offer", "/jam/stop", "/model/select"])
@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
def test_json_without_a_json_content_type_is_refused(server, route, content_type):
    headers = {"Content-Type": content_type} if content_type else {}
    answer = requests.post(http_url(server, route), data=JSON_BODY.encode(), headers=headers, timeout=10)
    assert answer.status_code == 415 and "application/json" in answer.json()["error"]
    assert no_work_done(server)


def test_a_form_route_takes_forms_only(server):
    answer = requests.post(http_url(server, "/jam/start"), data="bpm=120", headers={"Content-Type": "text/plain"},
                           timeout=10)
    assert answer.status_code == 415 and "multipart/form-data" in answer.json()["error"]
    answer = requests.post(http_url(server, "/jam/consume"), data={"session_id": "x", "chunk_index": "0"}, timeout=10)
    assert answer.status_code == 404  # through the guard, to the route: no such session
    assert no_work_done(server)


def test_a_foreign_origin_gets_403_on_every_method(server):
    for method, path in (("GET", "/health"), ("POST", "/api/juce/process_audio"), ("OPTIONS", "/webrtc/offer"),
                         ("POST", "/admin/drain")):
        answer = requests.request(method, http_url(server, path), data=JSON_BODY if method == "POST" else None,
                                  headers={"Origin": EVIL, "Content-Type": "application/json",
                                           "Access-Control-Request-Method": "POST"}, timeout=10)
        assert answer.status_code == 403, (method, path)
        assert "access-control-allow-origin" not in answer.headers
    assert no_work_done(server) and not server.drain.active


def test_a_rebinding_host_reads_nothing_on_loopback(server):
    for host, status in (("evil.example", 403), (f"evil.example:{server.port}", 403), ("localhost", 200),
                         (f"localhost:{server.port}", 200), ("jam.localhost", 200), ("127.0.0.1", 200),
                         ("[::1]", 200), ("192.168.1.20", 200)):
        answer = requests.get(http_url(server, "/health"), headers={"Host": host}, timeout=5)
        assert answer.status_code == status, host
        if status == 403:
            assert "JAM_ALLOWED_HOSTS" in answer.json()["error"]
    with pytest.raises(InvalidStatus):  # a WebSocket under a rebinding name too
        connect(ws_url(server), additional_headers={"Host": "evil.example"}, open_timeout=10)
    # HAProxy's `option httpchk GET /health` is HTTP/1.0 without a Host header
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    connection._http_vsn, connection._http_vsn_str = 10, "HTTP/1.0"
    connection.putrequest("GET", "/health", skip_host=True)
    connection.endheaders()
    assert connection.getresponse().status == 200
    assert no_work_done(server)


def test_allowed_hosts_and_origins_get_in_with_cors(engine):
    page = "http://app.example:3000"
    with running_server(engine, allowed_origins=("http://*.example:3000",), allowed_hosts=("jam.example",)) as server:
        assert requests.get(http_url(server, "/health"), headers={"Host": "jam.example"}, timeout=5).ok
        preflight = requests.options(http_url(server, "/webrtc/offer"), timeout=5, headers={
            "Origin": page, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"})
        assert preflight.status_code == 204 and preflight.headers["access-control-allow-origin"] == page
        assert "content-type" in preflight.headers["access-control-allow-headers"].lower()
        health = requests.get(http_url(server, "/health"), headers={"Origin": page}, timeout=5)
        assert health.ok and health.headers["access-control-allow-origin"] == page
        with connect(ws_url(server), additional_headers={"Origin": page}, open_timeout=10) as ws:
            ws.send(json.dumps(asap_start("jazz")))
            messages_until(ws, is_status("playing"))
        own = requests.get(http_url(server, "/health"), headers={"Origin": http_url(server)}, timeout=5)
        assert own.ok and "access-control-allow-origin" not in own.headers  # the same origin needs no CORS
        assert requests.get(http_url(server, "/health"), headers={"Origin": "http://app.example:4000"},
                            timeout=5).status_code == 403


def test_health_names_no_path_and_says_whether_a_token_is_needed(server):
    body = requests.get(http_url(server, "/health"), timeout=5).json()
    assert body["model"]["checkpoint"] == "demo" and paths_in(body) == []
    assert body["token_required"] is False and "warning" not in body  # loopback: no warning


def test_an_open_network_bind_without_a_token_warns_loudly(engine, caplog):
    with caplog.at_level(logging.WARNING, logger="streaming.app.server"):
        server = RunningServer(engine, ServerConfig(host="0.0.0.0", port=0)).start()
    try:
        body = requests.get(http_url(server, "/health"), timeout=5).json()
        assert "JAM_TOKEN is unset" in body["warning"] and body["token_required"] is False
        assert any("JAM_TOKEN is unset" in record.getMessage() for record in caplog.records)
        # bound to 0.0.0.0 (a container) every Host is served while JAM_ALLOWED_HOSTS is unset
        assert requests.get(http_url(server, "/health"), headers={"Host": "musicgen.internal"}, timeout=5).ok
    finally:
        server.stop()
    with running_server(engine, token="t0ken") as guarded:
        body = requests.get(http_url(guarded, "/health"), headers={"Authorization": "Bearer t0ken"}, timeout=5).json()
        assert body["token_required"] is True and "warning" not in body


@pytest.mark.parametrize("name, value", [("JAM_ALLOWED_ORIGINS", "localhost:3000"),
                                         ("JAM_ALLOWED_HOSTS", "http://jam.example")])
def test_a_malformed_setting_is_refused_at_start(name, value):
    with pytest.raises(ValueError, match=name):
        ServerConfig.from_env({name: value})


def test_settings_parse_as_ollama_writes_them():
    config = ServerConfig.from_env({"JAM_ALLOWED_ORIGINS": " http://localhost:*, https://*.example.com/ ,",
                                    "JAM_ALLOWED_HOSTS": "Jam.Example.com"})
    assert config.allowed_origins == ("http://localhost:*", "https://*.example.com")
    assert config.allowed_hosts == ("jam.example.com",)

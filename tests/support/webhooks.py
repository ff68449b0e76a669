"""A local webhook receiver for Cog's async predictions and trainings, and waits on what it received."""

import contextlib
import http.server
import json
import queue
import threading
import time
import typing as tp


class _Receiver(http.server.BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 (http.server's naming)
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.server.events.put(json.loads(body))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def webhook_receiver() -> tp.Iterator[tuple[str, queue.Queue]]:
    """(url, queue of received payloads) while the receiver runs."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    server.events = queue.Queue()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook", server.events
    finally:
        server.shutdown()


def wait_for(events: queue.Queue, predicate, what: str, timeout: float = 120) -> dict:
    """The first webhook payload that satisfies `predicate` (those before it are dropped)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            event = events.get(timeout=max(0.1, deadline - time.monotonic()))
        except queue.Empty:
            break
        if predicate(event):
            return event
    raise TimeoutError(f"no webhook {what} in {timeout} s")


def wait_final(events: queue.Queue, timeout: float = 120) -> dict:
    return wait_for(events, lambda event: event["status"] in ("succeeded", "failed", "canceled"), "final", timeout)

"""Google's google-genai SDK pointed at a TLS sidecar, and Lyria RealTime's reference example (tests/data) run as
written: a fragment with top-level await, given `client`, `types` and `asyncio` as its page assumes."""

import ast
import asyncio
import contextlib
import time
import typing as tp

from tests.support import DATA

REFERENCE = DATA / "lyria_reference_example.py"
REFERENCE_CONFIG = "bpm=90, temperature=1.0"  # the example's LiveMusicGenerationConfig arguments


def sdk_client(server, monkeypatch, api_key: str):
    """A genai.Client whose live music connects to `server` (started with TLS: the SDK always uses wss; its
    `cert` is trusted through SSL_CERT_FILE), the way an application points the SDK at another endpoint."""
    from google import genai

    monkeypatch.setenv("SSL_CERT_FILE", str(server.cert))
    return genai.Client(api_key=api_key, http_options={"base_url": f"https://127.0.0.1:{server.port}",
                                                       "api_version": "v1alpha"})


def reference_source(config: tp.Optional[str] = None) -> str:
    """The example's text; `config` replaces its LiveMusicGenerationConfig arguments and nothing else."""
    source = REFERENCE.read_text()
    assert source.count(REFERENCE_CONFIG) == 1, "the example's config is not where it was"
    return source if config is None else source.replace(REFERENCE_CONFIG, config)


def _namespace(client) -> dict:
    from google.genai import types

    return {"client": client, "types": types, "asyncio": asyncio}


def run_reference(client, config: tp.Optional[str] = None) -> tp.Coroutine:
    """The whole example as its page shows it, with top-level await (as in an asyncio REPL or a notebook). It
    never ends by itself: its receiving task loops for as long as the server sends, so the caller cancels it."""
    code = compile(reference_source(config), str(REFERENCE), "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    return eval(code, _namespace(client))  # the repository's own test data


def reference_receiver(client) -> tp.Callable[[tp.Any], tp.Coroutine]:
    """The example's `receive_audio(session)` alone, as written, for sessions a test drives its own way."""
    module = ast.parse(reference_source())
    (definition,) = [node for node in module.body if isinstance(node, ast.AsyncFunctionDef)]
    namespace = _namespace(client)
    exec(compile(ast.Module([definition], type_ignores=[]), str(REFERENCE), "exec"), namespace)
    return namespace["receive_audio"]


def record_parsed(monkeypatch) -> list:
    """Every LiveMusicServerMessage the SDK parses from now on, in order (the SDK's own parsing, observed)."""
    from google.genai import types

    parsed: list = []
    real = types.LiveMusicServerMessage._from_response.__func__

    def observed(cls, *, response, kwargs):
        message = real(cls, response=response, kwargs=kwargs)
        parsed.append(message)
        return message

    monkeypatch.setattr(types.LiveMusicServerMessage, "_from_response", classmethod(observed))
    return parsed


async def until_read(running: asyncio.Future, parsed: list, count: int, timeout: float = 90) -> None:
    """Waits until the SDK parsed `count` messages and the example's loop read all but the last (it asks for the
    next message only once it has read one); the example's own failure is raised as it happened. Then cancels
    it, as a user stops it."""
    deadline = time.monotonic() + timeout
    try:
        while len(parsed) < count:
            if running.done():
                running.result()  # the example failed: its exception, as the user would see it
                raise AssertionError(f"the example ended after {len(parsed)} messages")
            assert time.monotonic() < deadline, f"{len(parsed)} of {count} messages in {timeout} s"
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)
        if running.done():
            running.result()
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running

"""Sidecar configuration, read from the same environment whether it runs inside Cog's worker or standalone.

Capacity (sessions, styles, decoder rows) is the engine's configuration (engine.config); this is only what the
network side needs: where to listen, who may connect, and how long a connection may sit idle or silent.
"""

import os
import typing as tp
from dataclasses import dataclass
from pathlib import Path

from streaming.gary.protocol import STORE_MAX_BYTES
from streaming.jobs.state import MAX_BYTES


def _inside_container() -> bool:
    return Path("/.dockerenv").exists() or Path("/run/.containerenv").exists()


def origin_patterns(value: str) -> tuple[str, ...]:
    """JAM_ALLOWED_ORIGINS parsed: origins such as `http://localhost:3000`, `https://*.example.com`, `*` or `null`
    (sandboxed frames, file:// pages); a bare host is refused here, where the mistake is made."""
    patterns = tuple(item.strip().lower().rstrip("/") for item in value.split(",") if item.strip())
    for pattern in patterns:
        if pattern not in ("*", "null") and "://" not in pattern:
            raise ValueError(f"JAM_ALLOWED_ORIGINS takes origins with their scheme (http://localhost:3000, "
                             f"https://*.example.com, *), got {pattern!r}")
    return patterns


def host_patterns(value: str) -> tuple[str, ...]:
    """JAM_ALLOWED_HOSTS parsed: host names (`jam.example.com`, `*.example.com`, `*`), with a port or without."""
    patterns = tuple(item.strip().lower() for item in value.split(",") if item.strip())
    for pattern in patterns:
        if "/" in pattern:
            raise ValueError(f"JAM_ALLOWED_HOSTS takes host names without scheme or path, got {pattern!r}")
    return patterns


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8765  # 0 turns the sidecar off inside Cog; standalone, 0 picks a free port
    token: tp.Optional[str] = None
    ssl_certfile: tp.Optional[str] = None
    ssl_keyfile: tp.Optional[str] = None
    max_connections: int = 64  # open sockets, sessions or not; more are closed with 1013
    idle_seconds: float = 30.0  # a socket that has not started a session by then is closed
    ping_interval: float = 20.0  # WebSocket keep-alive: a client that misses a pong for ping_timeout is dropped
    ping_timeout: float = 20.0
    webrtc_connect_timeout: float = 30.0  # a WebRTC offer not connected by then is dropped (slot freed)
    agent_port: tp.Optional[int] = None  # HAProxy agent-check port (streaming.app.capacity); None: off
    drain_seconds: float = 300.0  # how long live sessions may go on once the replica drains (then 1001)
    # threads for blocking engine calls (opening and restarting sessions, melody analysis): a pool of their own,
    # so that the event loop's default executor, which encodes every 20 ms Opus frame, never waits behind them
    blocking_threads: int = 4
    resume_seconds: float = 30.0  # a session whose connection dropped is held this long for a new one (0: off)
    replica_id: str = ""  # prefixed to session ids ("<replica>.<random>") so a balancer can route by id
    recording_minutes: float = 60.0  # a session's recording stops growing past this (streaming.sessions.recording)
    recording_keep_seconds: float = 600.0  # how long an ended session's recording can still be downloaded
    max_recordings: int = 64  # ended recordings kept at most (the oldest dropped first)
    job_bytes: int = MAX_BYTES  # bytes jobs hold: their inputs while they run, results until a poll carries them
    retry_bytes: int = STORE_MAX_BYTES  # bytes of gary inputs kept (as uploaded) for a retry
    # web pages of other origins allowed to call (patterns, `*` matching any run of characters: streaming.app.guard)
    allowed_origins: tuple[str, ...] = ()
    allowed_hosts: tuple[str, ...] = ()  # Host names served besides loopback ones (streaming.app.guard)

    @classmethod
    def from_env(cls, environ: tp.Mapping[str, str] = os.environ) -> "ServerConfig":
        def number(name: str, default: str, kind: type = float) -> tp.Any:
            try:
                value = kind(environ.get(name, default))
            except ValueError:
                raise ValueError(f"{name} must be a{'n integer' if kind is int else ' number'}, "
                                 f"got {environ[name]!r}") from None
            if value < 0:
                raise ValueError(f"{name} must be >= 0")
            return value

        blocking_threads = number("JAM_BLOCKING_THREADS", "4", int)
        if blocking_threads < 1:
            raise ValueError("JAM_BLOCKING_THREADS must be at least 1")
        replica_id = environ.get("JAM_REPLICA_ID", "")
        if not all(c.isalnum() or c in "-_" for c in replica_id):
            raise ValueError(f"JAM_REPLICA_ID may hold letters, digits, - and _ only, got {replica_id!r}")
        certfile, keyfile = environ.get("JAM_SSL_CERTFILE") or None, environ.get("JAM_SSL_KEYFILE") or None
        if bool(certfile) != bool(keyfile):
            raise ValueError("set both JAM_SSL_CERTFILE and JAM_SSL_KEYFILE to serve TLS")
        return cls(host=environ.get("JAM_HOST") or ("0.0.0.0" if _inside_container() else "127.0.0.1"),
                   port=number("JAM_PORT", "8765", int), token=environ.get("JAM_TOKEN") or None,
                   ssl_certfile=certfile, ssl_keyfile=keyfile,
                   max_connections=number("JAM_MAX_CONNECTIONS", "64", int),
                   idle_seconds=number("JAM_IDLE_SECONDS", "30"), ping_interval=number("JAM_PING_INTERVAL", "20"),
                   ping_timeout=number("JAM_PING_TIMEOUT", "20"),
                   webrtc_connect_timeout=number("JAM_WEBRTC_CONNECT_SECONDS", "30"),
                   agent_port=number("JAM_AGENT_PORT", "", int) if environ.get("JAM_AGENT_PORT") else None,
                   drain_seconds=number("JAM_DRAIN_SECONDS", "300"), blocking_threads=blocking_threads,
                   resume_seconds=number("JAM_RESUME_SECONDS", "30"), replica_id=replica_id,
                   recording_minutes=number("JAM_RECORDING_MINUTES", "60"),
                   recording_keep_seconds=number("JAM_RECORDING_KEEP_SECONDS", "600"),
                   max_recordings=number("JAM_RECORDINGS", "64", int),
                   job_bytes=number("JAM_JOB_BYTES", str(MAX_BYTES), int),
                   retry_bytes=number("JAM_RETRY_BYTES", str(STORE_MAX_BYTES), int),
                   allowed_origins=origin_patterns(environ.get("JAM_ALLOWED_ORIGINS", "")),
                   allowed_hosts=host_patterns(environ.get("JAM_ALLOWED_HOSTS", "")))

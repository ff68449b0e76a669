"""Sidecar configuration, read from the same environment whether it runs inside Cog's worker or standalone."""

import os
import typing as tp
from dataclasses import dataclass
from pathlib import Path

MAX_STYLES = 4  # styles blended per session; each takes one decoder row (+1 unconditional row per session)


def _inside_container() -> bool:
    return Path("/.dockerenv").exists() or Path("/run/.containerenv").exists()


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8765  # 0 turns the sidecar off inside Cog; standalone, 0 picks a free port
    max_sessions: int = 4
    token: tp.Optional[str] = None
    ssl_certfile: tp.Optional[str] = None
    ssl_keyfile: tp.Optional[str] = None
    webrtc_connect_timeout: float = 30.0  # a WebRTC offer not connected by then is dropped (slot freed)

    @classmethod
    def from_env(cls, environ: tp.Mapping[str, str] = os.environ) -> "ServerConfig":
        try:
            port = int(environ.get("JAM_PORT", "8765"))
            max_sessions = int(environ.get("JAM_MAX_SESSIONS", "4"))
        except ValueError as exc:
            raise ValueError(f"JAM_PORT and JAM_MAX_SESSIONS must be integers: {exc}") from None
        if max_sessions < 1:
            raise ValueError("JAM_MAX_SESSIONS must be at least 1")
        certfile, keyfile = environ.get("JAM_SSL_CERTFILE") or None, environ.get("JAM_SSL_KEYFILE") or None
        if bool(certfile) != bool(keyfile):
            raise ValueError("set both JAM_SSL_CERTFILE and JAM_SSL_KEYFILE to serve TLS")
        return cls(host=environ.get("JAM_HOST") or ("0.0.0.0" if _inside_container() else "127.0.0.1"),
                   port=port, max_sessions=max_sessions, token=environ.get("JAM_TOKEN") or None,
                   ssl_certfile=certfile, ssl_keyfile=keyfile)

    @property
    def engine_rows(self) -> int:
        """Decoder rows the engine needs: every session at its most styles, plus one prediction (2 rows)."""
        return self.max_sessions * (MAX_STYLES + 1) + 2

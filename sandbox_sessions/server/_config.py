"""The server's settings: where it listens, and what it lets in."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["DEFAULT_PORT", "ServerConfig"]

DEFAULT_PORT = 4096


@dataclass(frozen=True, kw_only=True)
class ServerConfig:
    """How the bridge listens and whom it lets in."""

    host: str = "127.0.0.1"
    """The address it binds; anything but loopback must be asked for (`--host`)."""
    port: int = DEFAULT_PORT
    token: str
    """The bearer token every request must carry."""
    allowed_origins: frozenset[str] = frozenset()
    """Browser origins allowed to call it (`--allow-origin`); any other `Origin` is refused."""
    max_body: int = 1 << 20
    """Largest JSON request body, in bytes (1 MiB)."""
    max_upload: int = 1 << 30
    """Largest file upload (`PUT .../files`), in bytes (1 GiB)."""
    heartbeat: float = 15.0
    """Seconds between comment lines on a quiet event stream, so proxies keep it open."""
    extra_hosts: frozenset[str] = field(default_factory=frozenset)
    """More `Host` values to accept (host names a proxy uses), beside the loopback ones."""

    def allowed_hosts(self) -> frozenset[str]:
        """Every `Host` header value accepted: loopback names with the port, and `host`."""
        names = {"127.0.0.1", "localhost", "[::1]", _bracketed(self.host), *self.extra_hosts}
        return frozenset(f"{name}:{self.port}" for name in names)


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host

"""The HTTP bridge: `sandbox-sessions serve`, a REST + SSE adapter over `SessionService`."""

from .._tokens import default_token_path, load_token
from ._app import Bridge, create_app
from ._config import DEFAULT_PORT, ServerConfig
from ._serve import serve

__all__ = [
    "DEFAULT_PORT",
    "Bridge",
    "ServerConfig",
    "create_app",
    "default_token_path",
    "load_token",
    "serve",
]

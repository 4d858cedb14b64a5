"""sandbox_sessions: pair every agent conversation with its own Docker container.

    from sandbox_sessions import SandboxClient

    with SandboxClient() as client:
        with client.agent("build").create_session(title="demo") as session:
            print(session.shell("uname -a").stdout)
"""

from ._client import AsyncAgent, AsyncSandboxClient, AsyncSessionHandle, SandboxKwargs
from ._exceptions import (
    ContainerDied,
    ContainerGone,
    FileDecodeError,
    FileTooLarge,
    ImageBuildError,
    ImageNotFound,
    InvalidArgument,
    OperationTimeout,
    ProtocolError,
    SandboxError,
    SandboxFileNotFound,
    SandboxPermissionError,
    SandboxSessionsError,
    SandboxUnavailable,
    SessionEnded,
    SessionError,
    SessionNotFound,
    StoreError,
    UnsafeArchive,
)
from ._sync import Agent, SandboxClient, SessionHandle
from ._types import (
    DEFAULT_IMAGE,
    DEFAULT_MAX_OUTPUT,
    ArtifactDownload,
    ArtifactInfo,
    SandboxOptions,
    SessionInfo,
    SessionStatus,
    ShellResult,
    SkippedArtifact,
)
from .sandbox._archive import Caps

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_IMAGE",
    "DEFAULT_MAX_OUTPUT",
    "Agent",
    "ArtifactDownload",
    "ArtifactInfo",
    "AsyncAgent",
    "AsyncSandboxClient",
    "AsyncSessionHandle",
    "Caps",
    "ContainerDied",
    "ContainerGone",
    "FileDecodeError",
    "FileTooLarge",
    "ImageBuildError",
    "ImageNotFound",
    "InvalidArgument",
    "OperationTimeout",
    "ProtocolError",
    "SandboxClient",
    "SandboxError",
    "SandboxFileNotFound",
    "SandboxKwargs",
    "SandboxOptions",
    "SandboxPermissionError",
    "SandboxSessionsError",
    "SandboxUnavailable",
    "SessionEnded",
    "SessionError",
    "SessionHandle",
    "SessionInfo",
    "SessionNotFound",
    "SessionStatus",
    "ShellResult",
    "SkippedArtifact",
    "StoreError",
    "UnsafeArchive",
    "__version__",
]

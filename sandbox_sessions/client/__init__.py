"""The client layer: the async client and its blocking twin, handles, and transports."""

from ._client import AsyncSandboxClient, SandboxKwargs
from ._session import (
    AsyncAgent,
    AsyncSessionHandle,
    PermissionAnswer,
    PermissionCallback,
    QuestionCallback,
)
from ._sync import Agent, SandboxClient, SessionHandle
from ._transport import OutputSink, Transport

__all__ = [
    "Agent",
    "AsyncAgent",
    "AsyncSandboxClient",
    "AsyncSessionHandle",
    "OutputSink",
    "PermissionAnswer",
    "PermissionCallback",
    "QuestionCallback",
    "SandboxClient",
    "SandboxKwargs",
    "SessionHandle",
    "Transport",
]

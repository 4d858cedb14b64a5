"""The sandbox layer: isolated machines that run a session's commands and hold its files."""

from .base import FileEntry, OutputCallback, Sandbox, SandboxBackend, ShellRequest

__all__ = ["FileEntry", "OutputCallback", "Sandbox", "SandboxBackend", "ShellRequest"]

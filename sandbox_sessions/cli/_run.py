"""`run`: an agent task in a fresh session, from a prompt or a task file."""

from __future__ import annotations

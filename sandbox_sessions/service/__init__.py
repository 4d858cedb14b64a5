"""The service layer: one facade, `SessionService`, over sessions, turns and the event log."""

from ._open import open_service
from ._service import SessionService

__all__ = ["SessionService", "open_service"]

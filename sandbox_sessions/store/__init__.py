"""The store layer: durable session records."""

from ._sqlite import SQLiteStore, default_store_path
from .base import Store

__all__ = ["SQLiteStore", "Store", "default_store_path"]

"""The data layer's error type, shared by every loader."""

from __future__ import annotations

__all__ = ["DataNotFoundError"]


class DataNotFoundError(FileNotFoundError):
    """Raised when a dataset cannot be found anywhere; the message says how to provide it."""

"""Exceptions that mean "the user asked for something that cannot be done".

The CLI turns every :class:`YatError` into a one-line message and a non-zero exit
status; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

__all__ = ["YatError", "DataError", "WeightFileError", "BackendUnavailableError"]


class YatError(Exception):
    """Base class of the errors a user can cause and fix."""


class DataError(YatError, ValueError):
    """A data file is missing, truncated, corrupt or fails its checksum."""


class WeightFileError(DataError):
    """A weight file is missing, not a weight file, truncated, corrupt, of another model, or holds unusable values."""


class BackendUnavailableError(YatError, ImportError):
    """A backend or framework was asked for but cannot be used here."""

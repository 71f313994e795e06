"""The one exception type of the data loaders."""

from __future__ import annotations

__all__ = ["DataError", "DataNotFoundError"]


class DataError(ValueError):
    """Bad input data: a corrupt, hostile, missing or inconsistent file, or labels or
    pixels that a `Dataset` cannot hold.

    The message is one line that starts with the loader (or `Dataset(...)`) and names
    the file or split; any newline in it is folded into a space.
    """

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


class DataNotFoundError(DataError, FileNotFoundError):
    """A `DataError` for a missing file or folder (also a `FileNotFoundError`)."""

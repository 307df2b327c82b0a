"""The package's own exceptions. Each names the file it is about and says why, in words."""

from __future__ import annotations

import os


class InferenceError(Exception):
    """Base of the errors raised by :mod:`inference`."""


class ImageLoadError(InferenceError):
    """A file that cannot be turned into an :class:`~inference.types.ImageInput`.

    Permanent: retrying the same file gives the same answer (a worker must not retry it).
    """

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class InconsistentSeriesError(ImageLoadError):
    """A series that is not one regular volume (mixed sizes or orientations, duplicate, missing or
    tilted slices, no geometry): permanent, like any :class:`ImageLoadError`."""


class BundleError(InferenceError):
    """A model bundle that cannot be loaded; names the offending file and the reason."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

"""Our own exceptions. Each message says what went wrong and how to fix it.

The CLI turns these into one line; nothing below the CLI exits the process.
"""

from __future__ import annotations

import shutil
from pathlib import Path


class VitsearchError(Exception):
    """Base class for errors the user can act on."""


class ConfigError(VitsearchError, ValueError):
    """A setting, flag or environment variable has a bad value."""


class ModelNotAvailableError(VitsearchError, FileNotFoundError):
    """The model is neither cached nor reachable, or the checkpoint cannot be loaded."""


class ModelMismatchError(VitsearchError):
    """The library was built with another model than the one asked for."""


class LibraryLockedError(VitsearchError):
    """Another process is writing to the library."""


class StoreUnavailableError(VitsearchError, ConnectionError):
    """The library's database server cannot be reached or used."""


class LibraryVersionError(VitsearchError):
    """The library was written by a newer vitsearch."""


class LibraryNotEmptyError(VitsearchError, FileExistsError):
    """A library to copy into already holds photos."""


class NotIndexedError(VitsearchError, LookupError):
    """The image or folder asked about is not in the library."""


class EmptyLibraryError(VitsearchError, LookupError):
    """The library holds no photos yet (its home may not even exist)."""


class NoMatchError(VitsearchError, LookupError):
    """No photo in the library passes the filters given."""


class ImageDecodeError(VitsearchError):
    """A file could not be decoded as a photo."""


class MissingFileError(VitsearchError, FileNotFoundError):
    """A file or folder named on the command line does not exist."""


class NoSuchLabelError(VitsearchError, LookupError):
    """No label in the library matches the query."""


class ClusterError(VitsearchError, RuntimeError):
    """The Ray cluster gave up on a batch (its worker died on every try)."""


class DiskFullError(VitsearchError, OSError):
    """The disk holding the library (or its exports) is full: what was committed stays."""

    def __init__(self, where: Path) -> None:
        try:
            free = f"{shutil.disk_usage(where).free / 1e6:.1f} MB free"
        except OSError:
            free = "no space left"
        super().__init__(
            f"the disk holding {where} is full ({free}): free space on it (or move the "
            "library with --home), then run again; everything committed so far is kept"
        )

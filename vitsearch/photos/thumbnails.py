"""Thumbnails from a disk cache in the library home, keyed by photo id and mtime."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image

from vitsearch.errors import ImageDecodeError
from vitsearch.machine.fileio import write_atomically
from vitsearch.photos.decode import decode_untrusted
from vitsearch.records import PhotoDetails

THUMBNAIL_SIZE = 320
FOLDER = "thumbnails"


class Thumbnails:
    """JPEG thumbnails, EXIF-oriented, made on first view and kept until the photo changes."""

    def __init__(self, home: Path, size: int = THUMBNAIL_SIZE) -> None:
        self.folder = Path(home) / FOLDER
        self.size = size

    def get(self, photo: PhotoDetails) -> bytes | None:
        """The thumbnail's bytes, or None when the photo cannot be read (offline, deleted)."""
        cached = self.folder / f"{photo.id}-{photo.mtime_ns}.jpg"
        try:
            return cached.read_bytes()
        except FileNotFoundError:
            pass
        try:
            data = Path(photo.path).read_bytes()
            image = decode_untrusted(data, (2 * self.size, 2 * self.size))[0]
        except (OSError, ImageDecodeError):
            return None
        data = _jpeg(image, self.size)
        self._store(cached, data)
        return data

    def _store(self, path: Path, data: bytes) -> None:
        write_atomically(path, data)


def _jpeg(image: Image.Image, size: int) -> bytes:
    image = image.copy()
    image.thumbnail((size, size), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=82)
    return buffer.getvalue()

"""Decoding a photo safely: one read, reduced-scale JPEG decode, EXIF orientation, RGB."""

from __future__ import annotations

import io
import logging
import time
from dataclasses import dataclass
from datetime import datetime

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from vitsearch.errors import ImageDecodeError
from vitsearch.photos.files import content_hash, fingerprint_data, register_plugins

log = logging.getLogger(__name__)

EXIF_IFD = 0x8769
DATETIME_ORIGINAL = 36867
DATETIME = 306
ORIENTATION = 274
TRANSPOSING_ORIENTATIONS = {5, 6, 7, 8}
WHITE = (255, 255, 255)


@dataclass(frozen=True)
class Photo:
    image: Image.Image  # RGB, upright, possibly reduced in scale
    width: int  # full size, after orientation
    height: int
    taken_at: float | None  # EXIF DateTimeOriginal as a local-time timestamp
    content_hash: str
    fingerprint: str


def read_photo(path: str, draft_size: tuple[int, int] = (448, 448)) -> Photo:
    """Read and decode ``path``; any failure becomes :class:`ImageDecodeError` with the reason."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise ImageDecodeError(f"cannot read: {exc.strerror or exc}") from exc
    image, width, height, taken_at = decode_untrusted(data, draft_size)
    return Photo(image, width, height, taken_at, content_hash(data), fingerprint_data(data))


def decode_untrusted(
    data: bytes, draft_size: tuple[int, int] = (448, 448)
) -> tuple[Image.Image, int, int, float | None]:
    """:func:`decode_bytes`, with every failure turned into :class:`ImageDecodeError`."""
    if not data:
        raise ImageDecodeError("empty file")
    try:
        return decode_bytes(data, draft_size)
    except ImageDecodeError:
        raise
    except UnidentifiedImageError as exc:
        raise ImageDecodeError("not an image, or a format Pillow cannot read") from exc
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(f"refused, too many pixels: {exc}") from exc
    except Exception as exc:  # decoders raise many kinds (OSError, SyntaxError, ValueError...)
        raise ImageDecodeError(f"cannot decode: {exc or type(exc).__name__}") from exc


def read_or_skip(path: str, draft_size: tuple[int, int]) -> Photo | None:
    """The photo at ``path``, or None once "skipping <path>: <reason>" is logged: one bad
    file never stops a run."""
    try:
        return read_photo(path, draft_size)
    except ImageDecodeError as exc:
        log.warning("skipping %s: %s", path, exc)
        return None


def decode_bytes(
    data: bytes, draft_size: tuple[int, int] = (448, 448)
) -> tuple[Image.Image, int, int, float | None]:
    """(RGB image, full width, full height, capture time) from encoded bytes."""
    register_plugins()  # a HEIC query photo may come before any folder was walked
    with Image.open(io.BytesIO(data)) as image:
        width, height = image.size
        if width * height > Image.MAX_IMAGE_PIXELS:
            raise ImageDecodeError(f"refused, {width}x{height} exceeds the pixel limit")
        exif = image.getexif()
        turned = exif.get(ORIENTATION, 1) in TRANSPOSING_ORIENTATIONS
        if turned:
            width, height = height, width
        if image.format in ("JPEG", "MPO"):  # MPO: phone JPEGs with a second picture
            # Decode at a reduced DCT scale: a 24 MP photo becomes ~1/8 the work.
            # The draft applies before turning upright, so ask for the size as stored.
            image.draft("RGB", draft_size[::-1] if turned else draft_size)
        image.seek(0)  # first frame of animations
        image.load()
        upright = ImageOps.exif_transpose(image)
        return to_rgb(upright), width, height, capture_time(exif)


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB; transparency composited on white, 16-bit scaled down."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        return _high_depth_to_rgb(image)
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "La", "RGBa", "PA"):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, WHITE)
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return image.convert("RGB")


def capture_time(exif: Image.Exif) -> float | None:
    raw = exif.get_ifd(EXIF_IFD).get(DATETIME_ORIGINAL) or exif.get(DATETIME)
    if not isinstance(raw, str):
        return None
    try:
        moment = datetime.strptime(raw.strip("\x00 ")[:19], "%Y:%m:%d %H:%M:%S")
    except ValueError:
        return None
    return time.mktime(moment.timetuple())


def _high_depth_to_rgb(image: Image.Image) -> Image.Image:
    pixels = np.asarray(image, dtype=np.float64)
    if image.mode.startswith("I;16"):
        scaled = pixels / 257.0
    else:
        low, high = float(pixels.min()), float(pixels.max())
        scaled = (pixels - low) * (255.0 / (high - low)) if high > low else pixels * 0
    gray = Image.fromarray(np.clip(scaled, 0, 255).astype(np.uint8), mode="L")
    return gray.convert("RGB")

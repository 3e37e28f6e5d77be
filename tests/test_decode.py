"""Decoding photos: every Pillow mode to upright RGB, EXIF, drafts, and broken files."""

from __future__ import annotations

import io
import os
import random
import struct
import time
import zlib
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from vitsearch.errors import ImageDecodeError, VitsearchError
from vitsearch.photos.decode import (
    DATETIME,
    DATETIME_ORIGINAL,
    EXIF_IFD,
    ORIENTATION,
    capture_time,
    decode_bytes,
    read_photo,
    to_rgb,
)
from vitsearch.photos.files import content_hash, content_hash_file, fingerprint_file

WHITE = (255, 255, 255)
RED = (255, 0, 0)
BLUE = (0, 0, 255)
TAKEN = "2021:07:04 15:30:45"


def encode(image: Image.Image, fmt: str, **save_args: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save_args)
    return buffer.getvalue()


def write(folder: Path, name: str, data: bytes) -> str:
    path = folder / name
    path.write_bytes(data)
    return str(path)


def close_to(actual: tuple[int, ...], expected: tuple[int, ...], tolerance: int = 0) -> bool:
    """Pixel equality within ``tolerance`` per channel (JPEG is lossy)."""
    return len(actual) == len(expected) and all(
        abs(a - e) <= tolerance for a, e in zip(actual, expected, strict=True)
    )


def exif_bytes(
    orientation: int | None = None, taken: str | None = None, datetime_tag: str | None = None
) -> bytes:
    exif = Image.Exif()
    if orientation is not None:
        exif[ORIENTATION] = orientation
    if datetime_tag is not None:
        exif[DATETIME] = datetime_tag
    if taken is not None:
        exif.get_ifd(EXIF_IFD)[DATETIME_ORIGINAL] = taken
    return exif.tobytes()


def marked_jpeg(size: tuple[int, int] = (64, 32), **exif_args: object) -> bytes:
    """Blue picture with a red square in the stored top-left corner."""
    image = Image.new("RGB", size, BLUE)
    ImageDraw.Draw(image).rectangle((0, 0, 15, 15), fill=RED)
    return encode(image, "JPEG", quality=95, exif=exif_bytes(**exif_args))


def png_chunk(kind: bytes, body: bytes) -> bytes:
    crc = zlib.crc32(kind + body) & 0xFFFFFFFF
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` RGB pixels (no pixel memory)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(b"\x00\x00\x00\x00"))
        + png_chunk(b"IEND", b"")
    )


def noise_png(side: int, seed: int) -> bytes:
    """Incompressible pixels, so the file is about 3 * side**2 bytes."""
    pixels = random.Random(seed).randbytes(side * side * 3)
    return encode(Image.frombytes("RGB", (side, side), pixels), "PNG", compress_level=1)


@pytest.fixture
def utc() -> Iterator[None]:
    """Local time is UTC for the test, so timestamps have a known value."""
    before = os.environ.get("TZ")
    os.environ["TZ"] = "UTC"
    time.tzset()
    yield
    if before is None:
        del os.environ["TZ"]
    else:
        os.environ["TZ"] = before
    time.tzset()


@pytest.fixture(scope="module")
def big_jpeg(tmp_path_factory: pytest.TempPathFactory) -> str:
    """4000x3000: red left half, blue right half."""
    image = Image.new("RGB", (4000, 3000), BLUE)
    ImageDraw.Draw(image).rectangle((0, 0, 1999, 2999), fill=RED)
    return write(tmp_path_factory.mktemp("big"), "big.jpg", encode(image, "JPEG", quality=80))


@pytest.fixture(scope="module")
def tall_jpeg(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Stored 4000x3000 with Orientation=6, so upright it is 3000x4000."""
    data = marked_jpeg(size=(4000, 3000), orientation=6)
    return write(tmp_path_factory.mktemp("tall"), "tall.jpg", data)


# --- to_rgb: every mode -------------------------------------------------------------------


def test_to_rgb_returns_an_rgb_image_unchanged() -> None:
    image = Image.new("RGB", (3, 2), (1, 2, 3))
    assert to_rgb(image) is image


@pytest.mark.parametrize(
    ("mode", "fill", "expected"),
    [
        ("L", 77, (77, 77, 77)),
        ("1", 0, (0, 0, 0)),
        ("1", 1, WHITE),
        ("CMYK", (0, 255, 255, 0), RED),
        ("RGBA", (10, 20, 30, 255), (10, 20, 30)),
        ("RGBA", (0, 0, 0, 0), WHITE),
        ("RGBA", (255, 0, 0, 128), (255, 127, 127)),
        ("LA", (50, 255), (50, 50, 50)),
        ("LA", (0, 0), WHITE),
        ("P", 0, (0, 0, 0)),
        ("I;16", 65535, WHITE),
        ("I;16", 32896, (128, 128, 128)),
        ("I;16", 0, (0, 0, 0)),
        ("I;16B", 65535, WHITE),
    ],
)
def test_to_rgb_converts_each_mode(mode: str, fill: object, expected: tuple[int, int, int]) -> None:
    result = to_rgb(Image.new(mode, (5, 4), fill))
    assert result.mode == "RGB"
    assert result.size == (5, 4)
    assert close_to(result.getpixel((2, 2)), expected, tolerance=1)


def test_to_rgb_transparent_palette_index_becomes_white() -> None:
    image = Image.new("P", (4, 4), 1)
    image.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)
    image.info["transparency"] = 1
    assert to_rgb(image).getpixel((0, 0)) == WHITE


@pytest.mark.parametrize("mode", ["I", "F"])
def test_to_rgb_stretches_unknown_depth_to_full_range(mode: str) -> None:
    image = Image.new(mode, (3, 1))
    for x, value in enumerate((1000, 3000, 5000)):
        image.putpixel((x, 0), value)
    result = to_rgb(image)
    assert [result.getpixel((x, 0)) for x in range(3)] == [(0, 0, 0), (127, 127, 127), WHITE]


def test_to_rgb_flat_unknown_depth_is_black_not_a_division_error() -> None:
    assert to_rgb(Image.new("I", (2, 2), 4242)).getpixel((1, 1)) == (0, 0, 0)


# --- read_photo: modes through real files ------------------------------------------------


def test_rgb_jpeg(tmp_path: Path) -> None:
    path = write(tmp_path, "rgb.jpg", encode(Image.new("RGB", (40, 30), (200, 100, 50)), "JPEG"))
    photo = read_photo(path)
    assert photo.image.mode == "RGB"
    assert (photo.width, photo.height) == (40, 30) == photo.image.size
    assert close_to(photo.image.getpixel((20, 15)), (200, 100, 50), tolerance=4)


def test_rgba_png_transparent_pixels_become_white(tmp_path: Path) -> None:
    image = Image.new("RGBA", (20, 10), (0, 0, 0, 0))
    ImageDraw.Draw(image).rectangle((0, 0, 9, 9), fill=(255, 0, 0, 255))
    photo = read_photo(write(tmp_path, "rgba.png", encode(image, "PNG")))
    assert photo.image.mode == "RGB"
    assert photo.image.getpixel((2, 2)) == RED
    assert photo.image.getpixel((15, 5)) == WHITE


def test_grey_png(tmp_path: Path) -> None:
    photo = read_photo(write(tmp_path, "grey.png", encode(Image.new("L", (8, 6), 90), "PNG")))
    assert photo.image.mode == "RGB"
    assert photo.image.getpixel((4, 3)) == (90, 90, 90)
    assert (photo.width, photo.height) == (8, 6)


def test_palette_png_without_transparency(tmp_path: Path) -> None:
    image = Image.new("P", (8, 8), 1)
    image.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    image.putpixel((0, 0), 0)
    photo = read_photo(write(tmp_path, "palette.png", encode(image, "PNG")))
    assert photo.image.mode == "RGB"
    assert photo.image.getpixel((0, 0)) == (0, 0, 0)
    assert photo.image.getpixel((5, 5)) == (10, 200, 30)


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
def test_palette_with_transparency_composites_on_white(tmp_path: Path, fmt: str) -> None:
    image = Image.new("P", (8, 8), 1)
    image.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    image.putpixel((0, 0), 0)
    photo = read_photo(
        write(tmp_path, f"palette.{fmt.lower()}", encode(image, fmt, transparency=0))
    )
    assert photo.image.mode == "RGB"
    assert photo.image.getpixel((0, 0)) == WHITE
    assert photo.image.getpixel((5, 5)) == (10, 200, 30)


def test_grey_alpha_png(tmp_path: Path) -> None:
    image = Image.new("LA", (8, 4), (0, 0))
    ImageDraw.Draw(image).rectangle((0, 0, 3, 3), fill=(60, 255))
    photo = read_photo(write(tmp_path, "la.png", encode(image, "PNG")))
    assert photo.image.mode == "RGB"
    assert photo.image.getpixel((1, 1)) == (60, 60, 60)
    assert photo.image.getpixel((6, 1)) == WHITE


def test_sixteen_bit_png_scales_grey_levels(tmp_path: Path) -> None:
    image = Image.new("I;16", (3, 2), 0)
    image.putpixel((0, 0), 65535)
    image.putpixel((1, 0), 32896)
    image.putpixel((2, 0), 257 * 10)
    path = write(tmp_path, "deep.png", encode(image, "PNG"))
    assert Image.open(path).mode == "I;16"  # the case we mean to test
    photo = read_photo(path)
    assert photo.image.mode == "RGB"
    row = [photo.image.getpixel((x, 0)) for x in range(3)]
    assert row == [WHITE, (128, 128, 128), (10, 10, 10)]
    assert photo.image.getpixel((1, 1)) == (0, 0, 0)


@pytest.mark.parametrize(("fmt", "tolerance"), [("JPEG", 6), ("TIFF", 0)])
def test_cmyk(tmp_path: Path, fmt: str, tolerance: int) -> None:
    image = Image.new("CMYK", (16, 16), (255, 0, 0, 0))  # cyan
    ImageDraw.Draw(image).rectangle((0, 0, 7, 15), fill=(0, 0, 0, 255))  # black
    photo = read_photo(write(tmp_path, f"cmyk.{fmt.lower()}", encode(image, fmt, quality=95)))
    assert photo.image.mode == "RGB"
    assert close_to(photo.image.getpixel((12, 8)), (0, 255, 255), tolerance)
    assert close_to(photo.image.getpixel((3, 8)), (0, 0, 0), tolerance)


@pytest.mark.parametrize("fmt", ["PNG", "BMP", "TIFF"])
def test_one_bit(tmp_path: Path, fmt: str) -> None:
    image = Image.new("1", (16, 8), 0)
    ImageDraw.Draw(image).rectangle((8, 0, 15, 7), fill=1)
    photo = read_photo(write(tmp_path, f"bits.{fmt.lower()}", encode(image, fmt)))
    assert photo.image.mode == "RGB"
    assert photo.image.getpixel((2, 2)) == (0, 0, 0)
    assert photo.image.getpixel((12, 2)) == WHITE


def test_animated_gif_gives_the_first_frame(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (12, 10), colour) for colour in (RED, (0, 255, 0), BLUE)]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50)
    path = write(tmp_path, "anim.gif", data)
    assert Image.open(path).n_frames == 3
    photo = read_photo(path)
    assert photo.image.mode == "RGB"
    assert (photo.width, photo.height) == (12, 10)
    assert photo.image.getpixel((6, 5)) == RED


# --- EXIF orientation --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("orientation", "size", "red_corner", "blue_corner"),
    [
        (None, (64, 32), (4, 4), (59, 27)),
        (1, (64, 32), (4, 4), (59, 27)),
        (3, (64, 32), (59, 27), (4, 4)),
        (6, (32, 64), (27, 4), (4, 59)),
        (8, (32, 64), (4, 59), (27, 4)),
    ],
)
def test_orientation_turns_the_photo_upright(
    tmp_path: Path,
    orientation: int | None,
    size: tuple[int, int],
    red_corner: tuple[int, int],
    blue_corner: tuple[int, int],
) -> None:
    path = write(tmp_path, "turned.jpg", marked_jpeg(orientation=orientation))
    photo = read_photo(path)
    assert (photo.width, photo.height) == size
    assert photo.image.size == size
    assert close_to(photo.image.getpixel(red_corner), RED, tolerance=30)
    assert close_to(photo.image.getpixel(blue_corner), BLUE, tolerance=30)


# --- EXIF capture time -------------------------------------------------------------------


def test_taken_at_is_date_time_original_in_local_time(tmp_path: Path) -> None:
    photo = read_photo(write(tmp_path, "dated.jpg", marked_jpeg(taken=TAKEN)))
    assert photo.taken_at == time.mktime(datetime(2021, 7, 4, 15, 30, 45).timetuple())


def test_taken_at_has_the_known_value_in_utc(tmp_path: Path, utc: None) -> None:
    photo = read_photo(write(tmp_path, "dated.jpg", marked_jpeg(taken=TAKEN)))
    assert photo.taken_at == 1625412645.0


def test_date_time_original_wins_over_date_time(tmp_path: Path) -> None:
    data = marked_jpeg(taken=TAKEN, datetime_tag="2000:01:01 00:00:00")
    photo = read_photo(write(tmp_path, "both.jpg", data))
    assert photo.taken_at == time.mktime(datetime(2021, 7, 4, 15, 30, 45).timetuple())


def test_date_time_is_the_fallback(tmp_path: Path) -> None:
    data = marked_jpeg(datetime_tag="2000:01:02 03:04:05")
    photo = read_photo(write(tmp_path, "fallback.jpg", data))
    assert photo.taken_at == time.mktime(datetime(2000, 1, 2, 3, 4, 5).timetuple())


def test_no_date_gives_none(tmp_path: Path) -> None:
    assert read_photo(write(tmp_path, "plain.jpg", marked_jpeg())).taken_at is None
    assert read_photo(write(tmp_path, "oriented.jpg", marked_jpeg(orientation=6))).taken_at is None


@pytest.mark.parametrize("raw", ["yesterday-ish", "0000:00:00 00:00:00", "2021:13:45 99:00:00", ""])
def test_garbage_date_gives_none_and_the_photo_still_decodes(tmp_path: Path, raw: str) -> None:
    photo = read_photo(write(tmp_path, "garbage.jpg", marked_jpeg(taken=raw)))
    assert photo.taken_at is None
    assert photo.image.size == (64, 32)


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")
def test_corrupt_exif_is_ignored_and_the_photo_still_decodes(tmp_path: Path) -> None:
    """An Exif block cut short (count says 5 entries, 2 bytes follow)."""
    payload = b"Exif\x00\x00MM\x00\x2a\x00\x00\x00\x08\x00\x05\x01\x12"
    segment = b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload
    jpeg = encode(Image.new("RGB", (16, 12), RED), "JPEG")
    photo = read_photo(write(tmp_path, "odd.jpg", jpeg[:2] + segment + jpeg[2:]))
    assert photo.taken_at is None
    assert (photo.width, photo.height) == (16, 12)
    assert close_to(photo.image.getpixel((8, 6)), RED, tolerance=4)


def test_capture_time_strips_padding_and_sub_second_suffix() -> None:
    exif = Image.Exif()
    exif.get_ifd(EXIF_IFD)[DATETIME_ORIGINAL] = TAKEN + ".123\x00 "
    assert capture_time(exif) == time.mktime(datetime(2021, 7, 4, 15, 30, 45).timetuple())


def test_capture_time_ignores_non_text_values() -> None:
    exif = Image.Exif()
    exif.get_ifd(EXIF_IFD)[DATETIME_ORIGINAL] = 12345
    assert capture_time(exif) is None
    assert capture_time(Image.Exif()) is None


# --- reduced-scale JPEG decode -----------------------------------------------------------


def test_large_jpeg_is_drafted_but_reports_full_size(big_jpeg: str) -> None:
    photo = read_photo(big_jpeg, draft_size=(448, 448))
    assert (photo.width, photo.height) == (4000, 3000)
    assert photo.image.size == (1000, 750)  # DCT scale 1/4: the smallest still >= 448
    assert photo.image.mode == "RGB"
    assert close_to(photo.image.getpixel((100, 375)), RED, tolerance=8)
    assert close_to(photo.image.getpixel((900, 375)), BLUE, tolerance=8)


@pytest.mark.parametrize(
    ("draft", "expected"), [((100, 100), (500, 375)), ((1500, 1500), (2000, 1500))]
)
def test_draft_never_goes_below_the_size_asked_for(
    big_jpeg: str, draft: tuple[int, int], expected: tuple[int, int]
) -> None:
    photo = read_photo(big_jpeg, draft_size=draft)
    assert photo.image.size == expected
    assert photo.image.width >= draft[0] and photo.image.height >= draft[1]
    assert (photo.width, photo.height) == (4000, 3000)


def test_drafted_jpeg_with_orientation_reports_turned_full_size(tall_jpeg: str) -> None:
    photo = read_photo(tall_jpeg, draft_size=(448, 448))
    assert (photo.width, photo.height) == (3000, 4000)
    assert photo.image.size == (750, 1000)
    assert close_to(photo.image.getpixel((748, 1)), RED, tolerance=40)


def test_draft_size_is_for_the_upright_photo(tall_jpeg: str) -> None:
    """A wide draft size on a photo stored sideways must not leave it too narrow."""
    photo = read_photo(tall_jpeg, draft_size=(1000, 400))
    assert photo.image.width >= 1000 and photo.image.height >= 400
    assert photo.image.size == (1500, 2000)


def test_multi_picture_jpeg_is_drafted_too(tmp_path: Path) -> None:
    """Phones write MPO (JPEG plus a depth map or preview); it must get the cheap decode too."""
    first, second = Image.new("RGB", (4000, 3000), RED), Image.new("RGB", (4000, 3000), BLUE)
    data = encode(first, "MPO", save_all=True, append_images=[second], quality=80)
    path = write(tmp_path, "phone.jpg", data)
    assert Image.open(path).format == "MPO"
    photo = read_photo(path, draft_size=(448, 448))
    assert (photo.width, photo.height) == (4000, 3000)
    assert photo.image.size == (1000, 750)
    assert close_to(photo.image.getpixel((500, 375)), RED, tolerance=8)


def test_decode_bytes_returns_image_size_and_time() -> None:
    image, width, height, taken_at = decode_bytes(marked_jpeg(orientation=8, taken=TAKEN))
    assert image.mode == "RGB"
    assert image.size == (width, height) == (32, 64)
    assert taken_at == time.mktime(datetime(2021, 7, 4, 15, 30, 45).timetuple())


# --- broken files ------------------------------------------------------------------------


def truncated_jpeg() -> bytes:
    """The first half of a real (noisy, so not tiny) JPEG."""
    pixels = random.Random(3).randbytes(256 * 192 * 3)
    data = encode(Image.frombytes("RGB", (256, 192), pixels), "JPEG", quality=90)
    return data[: len(data) // 2]


def bad_crc_png() -> bytes:
    data = bytearray(encode(Image.new("RGB", (4, 4), RED), "PNG"))
    data[29] ^= 0xFF  # inside the IHDR CRC
    return bytes(data)


def bad_stream_png() -> bytes:
    """Headers and CRCs all valid, but the compressed pixels are not zlib data."""
    header = struct.pack(">IIBBBBB", 4, 4, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", b"these bytes are not deflate")
        + png_chunk(b"IEND", b"")
    )


@pytest.mark.parametrize(
    ("name", "data", "reason"),
    [
        pytest.param(
            "half.jpg",
            truncated_jpeg(),
            "cannot decode: image file is truncated",
            id="truncated-jpeg",
        ),
        pytest.param("empty.jpg", b"", "empty file", id="zero-bytes"),
        pytest.param(
            "notes.jpg", b"shopping list: eggs, milk\n" * 20, "not an image", id="text-named-jpg"
        ),
        pytest.param(
            "bomb.png", png_claiming(40000, 40000), "refused, too many pixels", id="pixel-bomb"
        ),
        pytest.param(
            "big.png",
            png_claiming(10000, 10000),
            "refused, 10000x10000 exceeds the pixel limit",
            id="over-pixel-limit",
        ),
        pytest.param("crc.png", bad_crc_png(), "not an image", id="png-bad-crc"),
        pytest.param("header.png", b"\x89PNG\r\n\x1a\n", "not an image", id="png-signature-only"),
        pytest.param(
            "stream.png", bad_stream_png(), "cannot decode: broken data stream", id="png-bad-stream"
        ),
    ],
)
@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_broken_file_raises_decode_error_with_reason(
    tmp_path: Path, name: str, data: bytes, reason: str
) -> None:
    path = write(tmp_path, name, data)
    with pytest.raises(ImageDecodeError) as caught:
        read_photo(path)
    assert reason in str(caught.value)
    assert isinstance(caught.value, VitsearchError)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ImageDecodeError, match="cannot read: No such file or directory"):
        read_photo(str(tmp_path / "gone.jpg"))


def test_folder_instead_of_file(tmp_path: Path) -> None:
    (tmp_path / "album.jpg").mkdir()
    with pytest.raises(ImageDecodeError, match="cannot read: Is a directory"):
        read_photo(str(tmp_path / "album.jpg"))


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_file(tmp_path: Path) -> None:
    path = write(tmp_path, "locked.jpg", marked_jpeg())
    os.chmod(path, 0)
    try:
        with pytest.raises(ImageDecodeError, match="cannot read: Permission denied"):
            read_photo(path)
    finally:
        os.chmod(path, 0o644)


# --- identity of the bytes ---------------------------------------------------------------


@pytest.mark.parametrize("side", [16, 700])  # 700x700 noise is > 1 MiB + 1 KiB
def test_hash_and_fingerprint_match_the_file_helpers(tmp_path: Path, side: int) -> None:
    data = noise_png(side, seed=side)
    assert (len(data) > (1 << 20) + 1024) == (side == 700)
    path = write(tmp_path, "noise.png", data)
    photo = read_photo(path)
    assert photo.content_hash == content_hash(data) == content_hash_file(path)
    assert photo.fingerprint == fingerprint_file(path)
    assert photo.fingerprint.startswith(f"{len(data)}:")
    assert photo.image.getpixel((0, 0)) == Image.open(path).convert("RGB").getpixel((0, 0))

"""Finding photos on disk and fingerprinting their bytes."""

from __future__ import annotations

import itertools
import logging
import os
import random
from pathlib import Path

import pytest
from PIL import Image

from vitsearch.photos.files import (
    BASE_EXTENSIONS,
    HEAD_BYTES,
    PLUGIN_EXTENSIONS,
    TAIL_BYTES,
    FileStat,
    content_hash,
    content_hash_file,
    fingerprint_data,
    fingerprint_file,
    image_extensions,
    is_photo_name,
    is_temporary_name,
    scan,
)

MTIME_NS = 1_600_000_000_123_456_789
PHOTOS = [  # in scan order: a folder's own files (sorted), then its subfolders
    "B.JPG",
    "a.jpg",
    "x.JpEg",
    "sub/c.jpeg",
    "sub/g.bmp",
    "sub/h.tif",
    "sub/i.TIFF",
    "sub/deeper/d.png",
    "sub/deeper/e.webp",
    "sub/deeper/f.gif",
]
NOT_PHOTOS = [
    ".hidden.jpg",
    ".thumbnails/t.jpg",
    "sub/.cache/y.png",
    "sub/deeper/.git/objects/z.png",
    "notes.txt",
    "sub/clip.mp4",
    "sub/download.jpg.part",
    "sub/README",
    "sub/jpg",
]


def make_files(root: Path, names: list[str]) -> None:
    """Each file gets a distinct size and the same known mtime."""
    for index, name in enumerate(names):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * (10 + index))
        os.utime(path, ns=(MTIME_NS, MTIME_NS + index))


def listing(root: Path, limit: int = 100) -> list[str]:
    """Relative paths in the order scanned; at most ``limit`` so an endless walk still ends."""
    return [os.path.relpath(stat.path, root) for stat in itertools.islice(scan(root), limit)]


def listing_with(root: Path, extensions: frozenset[str]) -> list[str]:
    return [os.path.relpath(stat.path, root) for stat in scan(root, extensions)]


def random_bytes(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


def changed(data: bytes, offset: int) -> bytes:
    return data[:offset] + bytes([data[offset] ^ 0xFF]) + data[offset + 1 :]


# --- names and extensions ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("a.jpg", True),
        ("A.JPG", True),
        ("x.JpEg", True),
        ("x.png", True),
        ("x.webp", True),
        ("x.gif", True),
        ("x.bmp", True),
        ("x.tif", True),
        ("x.TIFF", True),
        ("holiday.2021.jpg", True),
        (".hidden.jpg", False),
        (".jpg", False),
        ("jpg", False),
        ("noext", False),
        ("notes.txt", False),
        ("clip.mp4", False),
        ("download.jpg.part", False),
        ("photo.jpg~", False),
    ],
)
def test_is_photo_name(name: str, expected: bool) -> None:
    assert is_photo_name(name, BASE_EXTENSIONS) is expected


def test_is_photo_name_uses_only_the_extensions_given() -> None:
    assert is_photo_name("a.PNG", frozenset({".png"}))
    assert not is_photo_name("a.jpg", frozenset({".png"}))


def test_image_extensions_are_ours_plus_installed_plugins() -> None:
    extensions = image_extensions()
    assert extensions >= BASE_EXTENSIONS
    registered = set(Image.registered_extensions())
    assert extensions - BASE_EXTENSIONS == PLUGIN_EXTENSIONS & registered
    assert all(ext.startswith(".") and ext == ext.lower() for ext in extensions)
    assert {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"} == BASE_EXTENSIONS


# --- scan ----------------------------------------------------------------------------------


def test_scan_finds_photos_in_nested_folders_in_a_stable_order(tmp_path: Path) -> None:
    make_files(tmp_path, PHOTOS + NOT_PHOTOS)
    (tmp_path / "album.jpg").mkdir()  # a folder is not a photo, whatever its name
    assert listing(tmp_path) == PHOTOS


def test_scan_reports_size_and_mtime(tmp_path: Path) -> None:
    make_files(tmp_path, PHOTOS + NOT_PHOTOS)
    found = {os.path.relpath(stat.path, tmp_path): stat for stat in scan(tmp_path)}
    for index, name in enumerate(PHOTOS):
        assert found[name] == FileStat(str(tmp_path / name), 10 + index, MTIME_NS + index)


def test_scan_accepts_a_path_or_a_string_and_gives_full_paths(tmp_path: Path) -> None:
    make_files(tmp_path, ["one.jpg"])
    expected = [FileStat(str(tmp_path / "one.jpg"), 10, MTIME_NS)]
    assert list(scan(tmp_path)) == expected
    assert list(scan(str(tmp_path))) == expected  # type: ignore[arg-type]


def test_scan_with_own_extensions(tmp_path: Path) -> None:
    make_files(tmp_path, PHOTOS)
    assert listing_with(tmp_path, frozenset({".png", ".gif"})) == [
        "sub/deeper/d.png",
        "sub/deeper/f.gif",
    ]


def test_scan_of_an_empty_folder(tmp_path: Path) -> None:
    assert list(scan(tmp_path)) == []


def test_scan_of_a_missing_folder_logs_and_yields_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="vitsearch.photos.files")
    assert list(scan(tmp_path / "gone")) == []
    assert f"skipping {tmp_path / 'gone'}: No such file or directory" in caplog.messages


def test_scan_skips_a_dangling_symlink_with_a_reason(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="vitsearch.photos.files")
    make_files(tmp_path, ["real.jpg"])
    (tmp_path / "dangling.jpg").symlink_to(tmp_path / "deleted.jpg")
    assert listing(tmp_path) == ["real.jpg"]
    assert f"skipping {tmp_path / 'dangling.jpg'}: No such file or directory" in caplog.messages


@pytest.mark.skipif(os.geteuid() == 0, reason="root lists folders whatever their mode")
def test_scan_skips_an_unreadable_folder(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="vitsearch.photos.files")
    make_files(tmp_path, ["a.jpg", "locked/b.jpg"])
    os.chmod(tmp_path / "locked", 0)
    try:
        assert listing(tmp_path) == ["a.jpg"]
    finally:
        os.chmod(tmp_path / "locked", 0o755)
    assert f"skipping {tmp_path / 'locked'}: Permission denied" in caplog.messages


@pytest.mark.timeout(10)  # a walk that loops must fail fast, not hang
def test_scan_survives_a_link_to_the_parent_folder(tmp_path: Path) -> None:
    make_files(tmp_path, ["a.jpg", "sub/b.jpg"])
    (tmp_path / "sub" / "up").symlink_to(tmp_path, target_is_directory=True)
    (tmp_path / "sub" / "self").symlink_to(tmp_path / "sub", target_is_directory=True)
    assert listing(tmp_path) == ["a.jpg", "sub/b.jpg"]


@pytest.mark.timeout(10)  # a walk that loops must fail fast, not hang
def test_scan_survives_two_folders_linking_to_each_other(tmp_path: Path) -> None:
    make_files(tmp_path, ["left/l.jpg", "right/r.jpg"])
    (tmp_path / "left" / "to_right").symlink_to(tmp_path / "right", target_is_directory=True)
    (tmp_path / "right" / "to_left").symlink_to(tmp_path / "left", target_is_directory=True)
    assert listing(tmp_path) == ["left/l.jpg", "left/to_right/r.jpg"]


def test_scan_follows_a_link_to_a_folder_outside_the_root(tmp_path: Path) -> None:
    make_files(tmp_path, ["elsewhere/e.jpg", "root/a.jpg"])
    (tmp_path / "root" / "linked").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    assert listing(tmp_path / "root") == ["a.jpg", "linked/e.jpg"]


@pytest.mark.timeout(10)  # a walk that loops must fail fast, not hang
def test_scan_lists_a_folder_reached_twice_only_once(tmp_path: Path) -> None:
    make_files(tmp_path, ["album/p.jpg"])
    (tmp_path / "alias").symlink_to(tmp_path / "album", target_is_directory=True)
    found = listing(tmp_path)
    assert found == ["album/p.jpg"]  # "album" sorts first; "alias" is the same folder
    assert len({os.path.realpath(tmp_path / name) for name in found}) == len(found)


# --- fingerprints and hashes ---------------------------------------------------------------


@pytest.mark.parametrize(
    "size",
    [
        0,
        1,
        5_000,
        HEAD_BYTES,
        HEAD_BYTES + 1,
        HEAD_BYTES + TAIL_BYTES,
        HEAD_BYTES + TAIL_BYTES + 1,
        3 * HEAD_BYTES + 7,
    ],
)
def test_fingerprint_file_equals_fingerprint_data(tmp_path: Path, size: int) -> None:
    data = random_bytes(size, seed=size)
    path = write(tmp_path / "blob.bin", data)
    fingerprint = fingerprint_file(path)
    assert fingerprint == fingerprint_data(data)
    size_part, digest = fingerprint.split(":")
    assert int(size_part) == size
    assert len(digest) == 32 and int(digest, 16) >= 0


def test_fingerprint_ignores_the_middle_of_a_big_file_but_the_hash_does_not(
    tmp_path: Path,
) -> None:
    data = random_bytes(2 * HEAD_BYTES + 4096, seed=1)
    edited = changed(data, len(data) // 2)
    first, second = write(tmp_path / "a.bin", data), write(tmp_path / "b.bin", edited)
    assert fingerprint_file(first) == fingerprint_file(second)
    assert content_hash_file(first) != content_hash_file(second)
    assert content_hash(data) != content_hash(edited)


@pytest.mark.parametrize(
    "offset",
    [0, HEAD_BYTES - 1, -TAIL_BYTES, -1],
    ids=["first-byte", "end-of-head", "start-of-tail", "last-byte"],
)
def test_fingerprint_sees_the_head_and_the_tail(tmp_path: Path, offset: int) -> None:
    data = random_bytes(2 * HEAD_BYTES + 4096, seed=2)
    edited = changed(data, offset % len(data))
    first, second = write(tmp_path / "a.bin", data), write(tmp_path / "b.bin", edited)
    assert fingerprint_file(first) != fingerprint_file(second)
    assert fingerprint_data(data) != fingerprint_data(edited)


def test_fingerprint_sees_the_size() -> None:
    data = random_bytes(4096, seed=3)
    assert fingerprint_data(data) != fingerprint_data(data + b"\x00")
    assert fingerprint_data(data).split(":")[1] != fingerprint_data(data + b"\x00").split(":")[1]


def test_fingerprint_of_a_small_file_covers_every_byte() -> None:
    data = random_bytes(HEAD_BYTES, seed=4)
    assert fingerprint_data(data) != fingerprint_data(changed(data, HEAD_BYTES // 2))


def test_fingerprint_of_a_renamed_file_is_unchanged(tmp_path: Path) -> None:
    path = write(tmp_path / "before.jpg", random_bytes(HEAD_BYTES + 5000, seed=5))
    before = fingerprint_file(path)
    os.rename(path, tmp_path / "after.jpg")
    assert fingerprint_file(str(tmp_path / "after.jpg")) == before


def test_content_hash_file_equals_content_hash(tmp_path: Path) -> None:
    data = random_bytes(HEAD_BYTES + 3, seed=6)
    path = write(tmp_path / "blob.bin", data)
    assert content_hash_file(path) == content_hash(data)
    assert len(content_hash(data)) == 40
    assert content_hash(b"") != content_hash(b"\x00")


@pytest.mark.parametrize(
    "name",
    [
        "~$report.jpg",
        "#autosave.png",
        "photo.jpg.crdownload",
        "photo.jpg.tmp",
        "IMG_1.JPG.part",
        ".DS_Store",
        "photo.jpg.swp",
        "photo.jpg~",
    ],
)
def test_temporary_names_are_not_photos(name: str) -> None:
    assert is_temporary_name(name)
    assert not is_photo_name(name, image_extensions())

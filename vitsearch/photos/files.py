"""Finding photos on disk and identifying their bytes cheaply."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from vitsearch.errors import MissingFileError

log = logging.getLogger(__name__)

BASE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"})
# Formats only a plugin reads, and the package that brings it (Pillow 11.3+ reads AVIF itself).
PLUGINS = {".heic": "pillow-heif", ".heif": "pillow-heif", ".avif": "pillow-avif-plugin"}
PLUGIN_EXTENSIONS = frozenset(PLUGINS)
NAMED_IN_WARNING = 3
HEAD_BYTES = 1 << 20
TAIL_BYTES = 1 << 10


@dataclass(frozen=True)
class FileStat:
    path: str
    size: int
    mtime_ns: int


def image_extensions() -> frozenset[str]:
    """Our formats, plus HEIC/AVIF when a Pillow plugin for them is installed."""
    register_plugins()
    registered = set(Image.registered_extensions())
    return BASE_EXTENSIONS | (PLUGIN_EXTENSIONS & registered)


# Hidden files, partial downloads, editors' swap files and Office lock files.
TEMPORARY_PREFIXES = (".", "~$", "#")
TEMPORARY_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload", ".download", ".swp", ".swx", "~")


def is_temporary_name(name: str) -> bool:
    return name.startswith(TEMPORARY_PREFIXES) or name.lower().endswith(TEMPORARY_SUFFIXES)


def is_photo_name(name: str, extensions: frozenset[str]) -> bool:
    return not is_temporary_name(name) and os.path.splitext(name)[1].lower() in extensions


def scan(root: Path, extensions: frozenset[str] | None = None) -> Iterator[FileStat]:
    """Every photo below ``root``: hidden files and folders skipped, symlink loops safe."""
    extensions = extensions or image_extensions()
    unreadable: list[str] = []  # HEIC/AVIF files that no installed plugin reads
    seen_dirs: set[tuple[int, int]] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True, onerror=_log_walk_error):
        here = os.stat(dirpath)
        if (here.st_dev, here.st_ino) in seen_dirs:
            dirnames[:] = []
            continue
        seen_dirs.add((here.st_dev, here.st_ino))
        dirnames[:] = sorted(d for d in dirnames if not is_temporary_name(d))
        for name in sorted(filenames):
            if not is_photo_name(name, extensions):
                if _lacks_plugin(name, extensions):
                    unreadable.append(os.path.join(dirpath, name))
                continue
            path = os.path.join(dirpath, name)
            try:
                st = os.stat(path)
            except OSError as exc:
                log.warning("skipping %s: %s", path, exc.strerror or exc)
                continue
            yield FileStat(path, st.st_size, st.st_mtime_ns)
    _warn_unreadable(unreadable)


def fingerprint_bytes(size: int, head: bytes, tail: bytes) -> str:
    """Size plus a hash of the first MiB and last KiB: enough to spot a renamed file."""
    digest = hashlib.blake2b(head, digest_size=16)
    digest.update(tail)
    return f"{size}:{digest.hexdigest()}"


def fingerprint_data(data: bytes) -> str:
    tail = data[-TAIL_BYTES:] if len(data) > HEAD_BYTES else b""
    return fingerprint_bytes(len(data), data[:HEAD_BYTES], tail)


def fingerprint_file(path: str) -> str:
    with open(path, "rb") as handle:
        head = handle.read(HEAD_BYTES)
        size = os.fstat(handle.fileno()).st_size
        tail = b""
        if size > HEAD_BYTES:
            handle.seek(-TAIL_BYTES, os.SEEK_END)
            tail = handle.read(TAIL_BYTES)
    return fingerprint_bytes(size, head, tail)


def content_hash(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=20).hexdigest()


def content_hash_file(path: str) -> str:
    with open(path, "rb") as handle:
        return content_hash(handle.read())


def _log_walk_error(exc: OSError) -> None:
    log.warning("skipping %s: %s", exc.filename, exc.strerror or exc)


def _lacks_plugin(name: str, extensions: frozenset[str]) -> bool:
    extension = os.path.splitext(name)[1].lower()
    return extension in PLUGIN_EXTENSIONS and extension not in extensions


# Files already named in a warning: watch walks every few minutes and need not repeat it.
_warned: set[str] = set()


def _warn_unreadable(paths: list[str]) -> None:
    """One line for a walk's photos in formats that no installed plugin reads, with the fix
    (iPhones save HEIC by default: one line per file would bury everything else)."""
    paths = [path for path in paths if path not in _warned]
    if not paths:
        return
    _warned.update(paths)
    named = ", ".join(paths[:NAMED_IN_WARNING])
    more = f" and {len(paths) - NAMED_IN_WARNING} more" if len(paths) > NAMED_IN_WARNING else ""
    packages = sorted({PLUGINS[os.path.splitext(path)[1].lower()] for path in paths})
    log.warning(
        "skipping %d photos that no installed decoder reads (%s%s): pip install %s, then run again",
        len(paths),
        named,
        more,
        " ".join(packages),
    )


@functools.cache
def register_plugins() -> None:
    """Let Pillow open HEIC/AVIF where pillow-heif / pillow-avif-plugin is installed."""
    with contextlib.suppress(ImportError):
        from pillow_heif import register_heif_opener

        register_heif_opener()
    with contextlib.suppress(ImportError):
        import pillow_avif  # noqa: F401  (registers itself on import)


def image_files(inputs: Iterable[Path]) -> list[str]:
    """Image files named directly, and every photo below named folders, in a stable order."""
    found: list[str] = []
    for item in inputs:
        item = Path(item).expanduser().absolute()
        if item.is_dir():
            found += [stat.path for stat in scan(item, image_extensions())]
        elif item.is_file():
            found.append(str(item))
        else:
            raise MissingFileError(f"no such file or folder: {item}")
    return found

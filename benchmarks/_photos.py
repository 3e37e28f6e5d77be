"""The photos a benchmark runs on: picked from a folder, linked into one, a seeded labelled
sample on trained weights, and indexing them through the app."""

from __future__ import annotations

import argparse
import os
import random
import time
from collections.abc import Sequence
from pathlib import Path

from vitsearch.app import open_app
from vitsearch.config import Settings, load_settings
from vitsearch.indexer import Summary
from vitsearch.machine.hardware import cpu_name
from vitsearch.photos.files import image_extensions, is_photo_name


def index_folders(settings: Settings, folders: Sequence[Path]) -> Summary:
    """``vitsearch index FOLDERS`` as a library call: open the app, index, close."""
    with open_app(settings, write=True) as writer:
        return writer.index(folders)


def pick_photos(folder: Path, limit: int) -> list[Path]:
    """The photos of ``folder`` sorted by name, the first ``limit`` (0: all)."""
    extensions = image_extensions()
    names = sorted(n for n in os.listdir(folder) if is_photo_name(n, extensions))
    return [folder / n for n in (names[:limit] if limit > 0 else names)]


def link_photos(photos: Sequence[Path], folder: Path) -> Path:
    """Symlinks to the photos (never copies), in a folder of their own."""
    folder.mkdir(parents=True)
    for photo in photos:
        (folder / photo.name).symlink_to(photo.resolve())
    return folder


def add_sample_options(parser: argparse.ArgumentParser) -> None:
    """PATH (photos named ``<wnid>_<class>.JPEG``), --model, --images, --batch-size, --threads
    and --home of the benchmarks that judge trained weights on the ImageNet sample."""
    parser.add_argument("path", type=Path, help="folder of <wnid>_<class>.JPEG photos")
    parser.add_argument("--model", required=True, help="a local checkpoint with ImageNet labels")
    parser.add_argument("--images", type=int, help="index a seeded sample of this many")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=0, help="model threads (0: every core)")
    parser.add_argument("--home", type=Path, help="keep the library here (a rerun skips indexing)")


def index_sample(args: argparse.Namespace, scratch: Path) -> Settings:
    """The sample the options name, indexed with torch fp32 (in ``--home``, else in
    ``scratch``); prints the CPU and the summary. Returns the library's settings."""
    folder = sample(args.path, args.images, (args.home or scratch) / "photos")
    settings = load_settings(
        environ={},
        home=args.home or scratch / "home",
        model=args.model,
        backend="torch",
        precision="fp32",
        batch_size=args.batch_size,
        threads=args.threads or None,
    )
    start = time.perf_counter()
    summary = index_folders(settings, [folder])
    print(f"CPU: {cpu_name()}; model {args.model}; torch fp32")
    print(f"indexed {summary} in {time.perf_counter() - start:.1f}s")
    return settings


def sample(path: Path, count: int | None, into: Path) -> Path:
    """``path`` itself, or a folder of symlinks to a seeded sample of ``count`` of its photos."""
    photos = sorted(p for p in path.iterdir() if p.suffix.lower() in {".jpeg", ".jpg", ".png"})
    if count is None or count >= len(photos):
        return path
    into.mkdir(parents=True, exist_ok=True)
    for photo in random.Random(0).sample(photos, count):
        if not (into / photo.name).exists():
            (into / photo.name).symlink_to(photo.resolve())
    return into

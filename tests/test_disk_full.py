"""A home on a full disk: one line naming it, nothing committed lost, a rerun resumes.

The disk is real: a small tmpfs mounted for the test (root only; elsewhere these skip).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import FakeEmbedder, draw_photo
from vitsearch.errors import DiskFullError
from vitsearch.indexer import Indexer
from vitsearch.store import open_library

DISK_BYTES = 2 * 1024 * 1024
DIM = 384  # ViT-Ti's width: a batch of rows is a few kB, so a small disk fills mid-run


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK_BYTES}", "tmpfs", str(disk)],
        capture_output=True,
    )
    if mounted.returncode != 0:
        pytest.skip("mounting a small tmpfs needs root")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def fill(disk: Path, leave: int) -> Path:
    """Take all but ``leave`` bytes of the disk with one file; removing it frees them."""
    stats = os.statvfs(disk)
    filler = disk / "filler"
    filler.write_bytes(b"\0" * max(0, stats.f_bavail * stats.f_frsize - leave))
    return filler


def album(folder: Path, count: int) -> Path:
    for seed in range(count):
        draw_photo(folder / f"p{seed:02d}.jpg", seed=seed)
    return folder


def index(home: Path, folder: Path):
    with open_library(home, write=True) as library:
        return Indexer(library, lambda: FakeEmbedder(dim=DIM), batch_size=8).reconcile([folder])


def test_a_full_disk_is_one_error_naming_the_home_and_a_rerun_resumes(
    small_disk: Path, tmp_path: Path
) -> None:
    photos = album(tmp_path / "photos", 60)
    home = small_disk / "home"
    filler = fill(small_disk, leave=300_000)
    with pytest.raises(DiskFullError, match=f"the disk holding {home} is full .*free space"):
        index(home, photos)
    with open_library(home) as reader:
        kept = reader.counts().images
    assert 0 < kept < 60, "the batches committed before the disk filled are kept"

    filler.unlink()
    summary = index(home, photos)
    assert (summary.new, summary.unchanged, summary.failed) == (60 - kept, kept, 0)
    with open_library(home) as reader:
        assert reader.counts().images == 60 and len(reader.vectors) == 60


@pytest.mark.slow
def test_the_cli_on_a_full_disk_prints_one_line(
    small_disk: Path, tmp_path: Path, cli_env: dict
) -> None:
    photos = album(tmp_path / "photos", 40)
    home = small_disk / "home"
    fill(small_disk, leave=150_000)
    result = subprocess.run(
        [sys.executable, "-m", "vitsearch", "index", str(photos), "--home", str(home)],
        env=cli_env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"the disk holding {home} is full" in lines[0], result.stderr

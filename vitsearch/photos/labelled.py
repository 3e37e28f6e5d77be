"""Labelled folders: ``DIR/<label>/…``, one sub-folder of example photos per label."""

from __future__ import annotations

import logging
from pathlib import Path

from vitsearch.errors import MissingFileError
from vitsearch.photos.files import image_extensions, is_temporary_name, scan

log = logging.getLogger(__name__)


def labelled_photos(folder: Path) -> dict[str, list[str]]:
    """{label: its photos' paths, in a stable order} for each sub-folder of ``folder``, empty
    ones included (callers say how many they need). Files lying directly in ``folder`` belong
    to no label: they are ignored, and said so once."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MissingFileError(f"no folder {folder}: give a folder with one sub-folder per label")
    entries = sorted(p for p in folder.iterdir() if not is_temporary_name(p.name))
    loose = [p for p in entries if p.is_file()]
    if loose:
        log.warning(
            "ignoring %d file(s) directly in %s: only sub-folders are labels", len(loose), folder
        )
    extensions = image_extensions()
    return {sub.name: [s.path for s in scan(sub, extensions)] for sub in entries if sub.is_dir()}

"""``vitsearch migrate``: a library copied between a home folder and PostgreSQL, no model work."""

from __future__ import annotations

from pathlib import Path

from vitsearch.config import STORE_SCHEMES, Settings
from vitsearch.records import CopySummary
from vitsearch.store import Library, copy_library, open_library


def migrate_library(settings: Settings, source: str, dest: str) -> CopySummary:
    """Copy the library at ``source`` into the empty one at ``dest`` without re-embedding;
    each is a home folder or a postgresql:// URL (whose host files stay in ``settings.home``).
    Both are held as their writer meanwhile, so a watcher on either is waited for."""
    with _open_location(settings, source) as reading, _open_location(settings, dest) as writing:
        return copy_library(reading, writing)


def _open_location(settings: Settings, where: str) -> Library:
    if where.startswith(STORE_SCHEMES):
        return open_library(settings.home, write=True, store=where)
    return open_library(Path(where).expanduser().absolute(), write=True)

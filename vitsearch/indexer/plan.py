"""Diffing the disk against the library: what to embed, move and remove."""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field

from vitsearch.photos.files import FileStat, content_hash_file, fingerprint_file
from vitsearch.records import StoredFile

log = logging.getLogger(__name__)


@dataclass
class Plan:
    embed: list[FileStat] = field(default_factory=list)  # new or changed files
    moves: list[tuple[StoredFile, FileStat]] = field(default_factory=list)
    remove: list[StoredFile] = field(default_factory=list)
    unchanged: int = 0
    changed: set[str] = field(default_factory=set)  # paths in ``embed`` already in the library

    @property
    def empty(self) -> bool:
        return not (self.embed or self.moves or self.remove)


def make_plan(on_disk: dict[str, FileStat], stored: dict[str, StoredFile]) -> Plan:
    """Compare by path, size and mtime; match vanished and new files by content to find moves.

    A new file counts as a move only when its size, cheap fingerprint and full content hash
    all equal those of a vanished file; stat alone never decides it.
    """
    plan = Plan()
    new: list[FileStat] = []
    for path, stat in on_disk.items():
        known = stored.get(path)
        if known is None:
            new.append(stat)
        elif known.size == stat.size and known.mtime_ns == stat.mtime_ns:
            plan.unchanged += 1
        else:
            plan.embed.append(stat)
            plan.changed.add(path)
    vanished = [row for path, row in stored.items() if path not in on_disk]
    moved_from = _match_moves(new, vanished, plan)
    plan.remove = [row for row in vanished if row.id not in moved_from]
    return plan


def _match_moves(new: list[FileStat], vanished: list[StoredFile], plan: Plan) -> set[int]:
    candidates: dict[int, list[StoredFile]] = defaultdict(list)
    for row in vanished:
        if row.ok and row.fingerprint:
            candidates[row.size].append(row)
    moved_from: set[int] = set()
    for stat in new:
        source = _move_source(stat, candidates.get(stat.size, []), moved_from)
        if source is None:
            plan.embed.append(stat)
        else:
            moved_from.add(source.id)
            plan.moves.append((source, stat))
    return moved_from


def _move_source(stat: FileStat, rows: list[StoredFile], taken: set[int]) -> StoredFile | None:
    rows = [row for row in rows if row.id not in taken]
    if not rows:
        return None
    try:
        fingerprint = fingerprint_file(stat.path)
        matches = [row for row in rows if row.fingerprint == fingerprint]
        if not matches:
            return None
        full_hash = content_hash_file(stat.path)
    except OSError as exc:
        log.warning("skipping move check for %s: %s", stat.path, exc.strerror or exc)
        return None
    return next((row for row in matches if row.content_hash == full_hash), None)
